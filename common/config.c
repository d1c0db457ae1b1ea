// config.c: see config.h.
#include "config.h"

#include <math.h>
#include <string.h>

// ---- typed getters: a missing required field or a wrong type names the file and the field ----

static int get_int(json_t *j, const char *key, int *out, int def, int required, const char *path, const char *scope,
                   Err *e) {
    json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v)) {
        if (required) { err_set(e, "%s: %s%s: missing required integer field", path, scope, key); return -1; }
        *out = def;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < -1 || json_integer_value(v) > 2147483647) {
        err_set(e, "%s: %s%s: expected an integer", path, scope, key);
        return -1;
    }
    *out = (int)json_integer_value(v);
    return 0;
}

static int get_num(json_t *j, const char *key, double *out, double def, const char *path, const char *scope, Err *e) {
    json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v)) { *out = def; return 0; }
    if (!json_is_number(v)) { err_set(e, "%s: %s%s: expected a number", path, scope, key); return -1; }
    *out = json_number_value(v);
    return 0;
}

static int get_bool(json_t *j, const char *key, int *out, int def, const char *path, const char *scope, Err *e) {
    json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v)) { *out = def; return 0; }
    if (!json_is_boolean(v)) { err_set(e, "%s: %s%s: expected true or false", path, scope, key); return -1; }
    *out = json_is_true(v);
    return 0;
}

static int expect_string(json_t *j, const char *key, const char *want, const char *path, const char *scope, Err *e) {
    json_t *v = json_object_get(j, key);
    if (!v) return 0;
    if (!json_is_string(v) || strcmp(json_string_value(v), want) != 0) {
        err_set(e, "%s: %s%s: only \"%s\" is supported", path, scope, key, want);
        return -1;
    }
    return 0;
}

// rope_theta lookup order (checkpoints.md §1.3): rope_parameters.rope_theta, then rope_theta, then default.
static int get_rope_theta(json_t *j, double *out, double def, const char *path, const char *scope, Err *e) {
    json_t *rp = json_object_get(j, "rope_parameters");
    if (rp && !json_is_null(rp)) {
        if (!json_is_object(rp)) { err_set(e, "%s: %srope_parameters: expected an object", path, scope); return -1; }
        json_t *t = json_object_get(rp, "rope_theta");
        if (t) {
            if (!json_is_number(t)) { err_set(e, "%s: %srope_parameters.rope_theta: expected a number", path, scope); return -1; }
            *out = json_number_value(t);
            return 0;
        }
    }
    return get_num(j, "rope_theta", out, def, path, scope, e);
}

json_t *json_read_file(const char *path, Err *e) {
    json_error_t je;
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        if (!path_exists(path)) err_set(e, "%s: file not found", path);
        else err_set(e, "%s: invalid JSON (%s at line %d, column %d)", path, je.text, je.line, je.column);
        return NULL;
    }
    if (!json_is_object(j)) {
        err_set(e, "%s: expected a JSON object at the top level", path);
        json_decref(j);
        return NULL;
    }
    return j;
}

int json_write_file(const char *path, json_t *j, Err *e) {
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
    char *text = xasprintf("%s\n", s);
    int rc = write_text_file(path, text, e);
    free(s);
    free(text);
    return rc;
}

// ---- readers ----------------------------------------------------------------------------------

int cfg_vision_from_mlcd(VisionConfig *v, json_t *j, const char *path, Err *e) {
    memset(v, 0, sizeof *v);
    const char *sc = "";
    json_t *mt = json_object_get(j, "model_type");
    if (mt && (!json_is_string(mt) || strcmp(json_string_value(mt), "mlcd_vision_model") != 0)) {
        err_set(e, "%s: model_type: expected \"mlcd_vision_model\" (an MLCD / RICE-ViT vision config)", path);
        return -1;
    }
    int kvg;
    if (get_int(j, "num_hidden_layers", &v->depth, 0, 1, path, sc, e) || get_int(j, "hidden_size", &v->hidden, 0, 1, path, sc, e) ||
        get_int(j, "intermediate_size", &v->intermediate, 0, 1, path, sc, e) ||
        get_int(j, "num_attention_heads", &v->heads, 0, 1, path, sc, e) ||
        get_int(j, "num_channels", &v->in_channels, 3, 0, path, sc, e) || get_int(j, "patch_size", &v->patch, 14, 0, path, sc, e) ||
        get_int(j, "image_size", &v->image_size, 560, 0, path, sc, e) ||
        get_int(j, "num_key_value_groups", &kvg, 1, 0, path, sc, e) ||
        get_num(j, "layer_norm_eps", &v->layer_norm_eps, 1e-5, path, sc, e) ||
        get_num(j, "initializer_range", &v->initializer_range, 0.02, path, sc, e) ||
        get_rope_theta(j, &v->rope_theta, 10000.0, path, sc, e) || expect_string(j, "hidden_act", "gelu", path, sc, e))
        return -1;
    if (kvg != 1) { err_set(e, "%s: num_key_value_groups: only 1 (full multi-head attention) is supported", path); return -1; }
    v->present = 1;
    v->spatial_merge = 2;
    v->temporal_patch = 1;
    return 0;
}

int cfg_text_from_qwen3(TextConfig *t, json_t *j, const char *path, Err *e) {
    memset(t, 0, sizeof *t);
    const char *sc = "";
    int attn_bias;
    if (get_int(j, "vocab_size", &t->vocab, 0, 1, path, sc, e) || get_int(j, "hidden_size", &t->hidden, 0, 1, path, sc, e) ||
        get_int(j, "intermediate_size", &t->intermediate, 0, 1, path, sc, e) ||
        get_int(j, "num_hidden_layers", &t->layers, 0, 1, path, sc, e) ||
        get_int(j, "num_attention_heads", &t->heads, 0, 1, path, sc, e))
        return -1;
    if (get_int(j, "num_key_value_heads", &t->kv_heads, t->heads, 0, path, sc, e) ||
        get_int(j, "head_dim", &t->head_dim, t->heads ? t->hidden / t->heads : 0, 0, path, sc, e) ||
        get_int(j, "max_position_embeddings", &t->max_pos, 40960, 0, path, sc, e) ||
        get_num(j, "rms_norm_eps", &t->rms_eps, 1e-6, path, sc, e) ||
        get_num(j, "initializer_range", &t->initializer_range, 0.02, path, sc, e) ||
        get_rope_theta(j, &t->rope_theta, 10000.0, path, sc, e) ||
        get_bool(j, "tie_word_embeddings", &t->tie_word_embeddings, 0, path, sc, e) ||
        get_bool(j, "attention_bias", &attn_bias, 0, path, sc, e) ||
        get_int(j, "bos_token_id", &t->bos_token_id, -1, 0, path, sc, e) ||
        get_int(j, "eos_token_id", &t->eos_token_id, -1, 0, path, sc, e) || expect_string(j, "hidden_act", "silu", path, sc, e))
        return -1;
    if (attn_bias) { err_set(e, "%s: attention_bias: Qwen3 as used here has no attention biases (expected false)", path); return -1; }
    return 0;
}

static int cfg_vision_from_rice(VisionConfig *v, json_t *j, const char *path, Err *e) {
    memset(v, 0, sizeof *v);
    const char *sc = "vision_config.";
    int hidden2;
    if (get_int(j, "depth", &v->depth, 0, 1, path, sc, e) || get_int(j, "embed_dim", &v->hidden, 0, 1, path, sc, e) ||
        get_int(j, "hidden_size", &hidden2, v->hidden, 0, path, sc, e) ||
        get_int(j, "intermediate_size", &v->intermediate, 0, 1, path, sc, e) ||
        get_int(j, "num_heads", &v->heads, 0, 1, path, sc, e) || get_int(j, "in_channels", &v->in_channels, 3, 0, path, sc, e) ||
        get_int(j, "patch_size", &v->patch, 14, 0, path, sc, e) ||
        get_int(j, "spatial_merge_size", &v->spatial_merge, 2, 0, path, sc, e) ||
        get_int(j, "temporal_patch_size", &v->temporal_patch, 1, 0, path, sc, e) ||
        get_int(j, "image_size", &v->image_size, 560, 0, path, sc, e) ||
        get_int(j, "text_hidden_size", &v->text_hidden, 0, 1, path, sc, e) ||
        get_num(j, "layer_norm_eps", &v->layer_norm_eps, 1e-5, path, sc, e) ||
        get_num(j, "initializer_range", &v->initializer_range, 0.02, path, sc, e) ||
        get_rope_theta(j, &v->rope_theta, 10000.0, path, sc, e) || expect_string(j, "hidden_act", "gelu", path, sc, e))
        return -1;
    if (hidden2 != v->hidden) {
        err_set(e, "%s: vision_config.hidden_size %d contradicts embed_dim %d", path, hidden2, v->hidden);
        return -1;
    }
    if (v->spatial_merge != 2) { err_set(e, "%s: vision_config.spatial_merge_size: only 2 is supported", path); return -1; }
    if (v->temporal_patch != 1) {
        err_set(e, "%s: vision_config.temporal_patch_size: LLaVA-OV-1.5 uses 1 (got %d)", path, v->temporal_patch);
        return -1;
    }
    v->present = 1;
    return 0;
}

int cfg_model_from_json(ModelConfig *m, json_t *j, const char *path, Err *e) {
    memset(m, 0, sizeof *m);
    m->image_token_id = m->video_token_id = -1;
    json_t *tc = json_object_get(j, "text_config"), *vc = json_object_get(j, "vision_config");
    json_t *dt = json_object_get(j, "dtype");
    if (!dt) dt = json_object_get(j, "torch_dtype");
    snprintf(m->dtype, sizeof m->dtype, "%s", json_is_string(dt) ? json_string_value(dt) : "bfloat16");
    if (!tc && !vc) {  // plain Qwen3
        json_t *mt = json_object_get(j, "model_type");
        if (mt && json_is_string(mt) && strcmp(json_string_value(mt), "mlcd_vision_model") == 0) {
            err_set(e, "%s: this is a vision-only (MLCD) config; expected a LLaVA-OV-1.5 or Qwen3 config", path);
            return -1;
        }
        return cfg_text_from_qwen3(&m->text, j, path, e) || cfg_model_check(m, path, e) ? -1 : 0;
    }
    if (!json_is_object(tc)) { err_set(e, "%s: text_config: missing or not an object", path); return -1; }
    if (!json_is_object(vc)) { err_set(e, "%s: vision_config: missing or not an object", path); return -1; }
    Err sub;
    if (cfg_text_from_qwen3(&m->text, tc, path, &sub)) {
        // Re-prefix the field with its scope: "cfg.json: text_config.hidden_size: ...".
        const char *rest = sub.msg + strlen(path) + 2;
        err_set(e, "%s: text_config.%s", path, rest);
        return -1;
    }
    if (cfg_vision_from_rice(&m->vision, vc, path, e)) return -1;
    if (get_int(j, "image_token_id", &m->image_token_id, 151655, 0, path, "", e) ||
        get_int(j, "video_token_id", &m->video_token_id, 151656, 0, path, "", e))
        return -1;
    // The top-level vocab_size of upstream stage-0 files is the wrong class default 152064 (OV
    // issue #69): text_config is authoritative; any other top-level value is ignored.
    return cfg_model_check(m, path, e);
}

int cfg_model_read(ModelConfig *m, const char *path, Err *e) {
    json_t *j = json_read_file(path, e);
    if (!j) return -1;
    int rc = cfg_model_from_json(m, j, path, e);
    json_decref(j);
    return rc;
}

int cfg_model_check(const ModelConfig *m, const char *path, Err *e) {
    const TextConfig *t = &m->text;
    if (t->vocab <= 0 || t->hidden <= 0 || t->intermediate <= 0 || t->layers <= 0 || t->heads <= 0 || t->kv_heads <= 0 ||
        t->head_dim <= 0) {
        err_set(e, "%s: text config sizes must be positive", path);
        return -1;
    }
    if (t->heads % t->kv_heads) {
        err_set(e, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path, t->heads, t->kv_heads);
        return -1;
    }
    if (t->head_dim % 2) { err_set(e, "%s: head_dim %d must be even for RoPE", path, t->head_dim); return -1; }
    if (!m->vision.present) return 0;
    const VisionConfig *v = &m->vision;
    if (v->depth <= 0 || v->hidden <= 0 || v->intermediate <= 0 || v->heads <= 0 || v->patch <= 0 || v->in_channels <= 0) {
        err_set(e, "%s: vision config sizes must be positive", path);
        return -1;
    }
    if (v->hidden % v->heads || vision_head_dim(v) % 4) {
        err_set(e, "%s: vision hidden size %d / %d heads must give a head_dim divisible by 4 (2-D RoPE)", path, v->hidden,
                v->heads);
        return -1;
    }
    if (v->text_hidden != t->hidden) {
        err_set(e, "%s: vision_config.text_hidden_size %d contradicts text_config.hidden_size %d", path, v->text_hidden,
                t->hidden);
        return -1;
    }
    if (m->image_token_id < 0 || m->image_token_id >= t->vocab) {
        err_set(e, "%s: image_token_id %d is outside the vocabulary of %d", path, m->image_token_id, t->vocab);
        return -1;
    }
    return 0;
}

// ---- writers ----------------------------------------------------------------------------------

json_t *cfg_mlcd_json(const VisionConfig *v, const char *dtype) {
    // transformers 5.x MLCDVisionConfig field set (spec/model.md §7.1).
    return json_pack("{s:[s], s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:f, s:f, s:f, s:f, "
                     "s:{s:f, s:s}, s:s, s:s}",
                     "architectures", "MLCDVisionModel", "model_type", "mlcd_vision_model", "hidden_size", v->hidden,
                     "intermediate_size", v->intermediate, "num_hidden_layers", v->depth, "num_attention_heads", v->heads,
                     "num_key_value_groups", 1, "num_channels", v->in_channels, "image_size", v->image_size, "patch_size",
                     v->patch, "hidden_act", "gelu", "layer_norm_eps", v->layer_norm_eps, "attention_dropout", 0.0,
                     "initializer_range", v->initializer_range, "initializer_factor", 1.0, "rope_parameters",
                     "rope_theta", v->rope_theta, "rope_type", "axial", "dtype", dtype, "transformers_version", "5.17.0");
}

json_t *cfg_qwen3_json(const TextConfig *t, const char *dtype) {
    // Qwen3Config as the released Qwen3 checkpoints carry it (transformers 4.x layout, top-level rope_theta).
    json_t *layer_types = json_array();
    for (int i = 0; i < t->layers; i++) json_array_append_new(layer_types, json_string("full_attention"));
    json_t *j = json_pack(
        "{s:[s], s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:i, s:f, s:f, s:n, s:b, s:f, s:b, s:n, s:i, s:o, s:f, "
        "s:b, s:b, s:s, s:s}",
        "architectures", "Qwen3ForCausalLM", "model_type", "qwen3", "vocab_size", t->vocab, "hidden_size", t->hidden,
        "intermediate_size", t->intermediate, "num_hidden_layers", t->layers, "num_attention_heads", t->heads,
        "num_key_value_heads", t->kv_heads, "head_dim", t->head_dim, "hidden_act", "silu", "max_position_embeddings",
        t->max_pos, "rms_norm_eps", t->rms_eps, "rope_theta", t->rope_theta, "rope_scaling", "attention_bias", 0,
        "attention_dropout", 0.0, "use_sliding_window", 0, "sliding_window", "max_window_layers", t->layers,
        "layer_types", layer_types, "initializer_range", t->initializer_range, "tie_word_embeddings",
        t->tie_word_embeddings, "use_cache", 1, "torch_dtype", dtype, "transformers_version", "4.51.0");
    if (t->bos_token_id >= 0) json_object_set_new(j, "bos_token_id", json_integer(t->bos_token_id));
    if (t->eos_token_id >= 0) json_object_set_new(j, "eos_token_id", json_integer(t->eos_token_id));
    return j;
}

json_t *cfg_llava_json(const ModelConfig *m, json_t *text_base) {
    const VisionConfig *v = &m->vision;
    json_t *tc = text_base ? json_deep_copy(text_base) : json_object();
    json_t *fresh = cfg_qwen3_json(&m->text, m->dtype);
    json_object_update(tc, fresh);
    json_decref(fresh);
    json_object_del(tc, "architectures");
    json_object_del(tc, "transformers_version");
    json_object_set_new(tc, "model_type", json_string("LLaVAOneVision1_5_text"));
    // The merged head is a separate tensor (model.md §4.2, pitfalls.md #20): never tie at load.
    json_object_set_new(tc, "tie_word_embeddings", json_false());
    json_t *vc = json_pack("{s:s, s:i, s:i, s:i, s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:f, s:i}", "model_type",
                           "rice_vit", "depth", v->depth, "embed_dim", v->hidden, "hidden_size", v->hidden, "hidden_act",
                           "gelu", "intermediate_size", v->intermediate, "num_heads", v->heads, "in_channels",
                           v->in_channels, "patch_size", v->patch, "spatial_merge_size", v->spatial_merge,
                           "temporal_patch_size", v->temporal_patch, "image_size", v->image_size, "initializer_range",
                           v->initializer_range, "layer_norm_eps", v->layer_norm_eps, "rope_theta", v->rope_theta,
                           "text_hidden_size", m->text.hidden);
    return json_pack("{s:[s], s:s, s:{s:s, s:s, s:s}, s:i, s:i, s:i, s:s, s:b, s:o, s:o}", "architectures",
                     "LLaVAOneVision1_5_ForConditionalGeneration", "model_type", "llavaonevision1_5", "auto_map",
                     "AutoConfig", "configuration_llavaonevision1_5.Llavaonevision1_5Config", "AutoModel",
                     "modeling_llavaonevision1_5.LLaVAOneVision1_5_ForConditionalGeneration", "AutoModelForCausalLM",
                     "modeling_llavaonevision1_5.LLaVAOneVision1_5_ForConditionalGeneration", "image_token_id",
                     m->image_token_id, "video_token_id", m->video_token_id, "vocab_size", m->text.vocab, "torch_dtype",
                     m->dtype, "tie_word_embeddings", 0, "text_config", tc, "vision_config", vc);
}
