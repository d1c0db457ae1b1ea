// Unit tests: config.json readers (both rope_theta placements, torch_dtype/dtype, the merged
// config's known upstream quirks) and the parameter table's sizes against spec/model.md.
#include <stdlib.h>

#include "../../common/config.h"
#include "../../common/params.h"
#include "../../common/presets.h"
#include "check.h"

static json_t *parse(const char *text) { return json_loads(text, 0, NULL); }

static void rope_theta_lookup_order(void) {
    Err e;
    TextConfig t;
    const char *base = "\"vocab_size\":10,\"hidden_size\":8,\"intermediate_size\":8,\"num_hidden_layers\":1,\"num_attention_heads\":2";
    char buf[512];
    snprintf(buf, sizeof buf, "{%s,\"rope_theta\":5000000.0}", base);
    json_t *j = parse(buf);
    CHECK(cfg_text_from_qwen3(&t, j, "c.json", &e) == 0 && t.rope_theta == 5e6);
    json_decref(j);
    snprintf(buf, sizeof buf, "{%s,\"rope_theta\":1.0,\"rope_parameters\":{\"rope_theta\":1000000.0,\"rope_type\":\"default\"}}", base);
    j = parse(buf);
    CHECK(cfg_text_from_qwen3(&t, j, "c.json", &e) == 0 && t.rope_theta == 1e6);
    json_decref(j);
    snprintf(buf, sizeof buf, "{%s}", base);
    j = parse(buf);
    CHECK(cfg_text_from_qwen3(&t, j, "c.json", &e) == 0 && t.rope_theta == 10000.0);
    CHECK(t.kv_heads == 2 && t.head_dim == 4 && t.rms_eps == 1e-6);  // defaults: MHA, hidden/heads
    json_decref(j);
    snprintf(buf, sizeof buf, "{%s,\"rope_theta\":\"big\"}", base);
    j = parse(buf);
    CHECK(cfg_text_from_qwen3(&t, j, "c.json", &e) == -1);
    CHECK_STR_CONTAINS(e.msg, "c.json: rope_theta");
    json_decref(j);
}

static void mlcd_config(void) {
    Err e;
    VisionConfig v;
    json_t *j = parse("{\"model_type\":\"mlcd_vision_model\",\"hidden_size\":1024,\"intermediate_size\":4096,"
                      "\"num_hidden_layers\":24,\"num_attention_heads\":16,\"patch_size\":14,"
                      "\"rope_parameters\":{\"rope_theta\":10000.0,\"rope_type\":\"axial\"}}");
    CHECK(cfg_vision_from_mlcd(&v, j, "v.json", &e) == 0);
    CHECK(v.depth == 24 && v.hidden == 1024 && vision_head_dim(&v) == 64 && vision_patch_dim(&v) == 588);
    CHECK(v.layer_norm_eps == 1e-5 && v.temporal_patch == 1);
    json_decref(j);
    j = parse("{\"model_type\":\"qwen3\"}");
    CHECK(cfg_vision_from_mlcd(&v, j, "v.json", &e) == -1);
    CHECK_STR_CONTAINS(e.msg, "model_type");
    json_decref(j);
}

static ModelConfig preset(const char *name) {
    ModelConfig m;
    Err e;
    char *p = xasprintf("data-specs/models/%s.json", name);
    if (cfg_model_read(&m, p, &e)) { printf("# %s\n", e.msg); memset(&m, 0, sizeof m); }
    free(p);
    return m;
}

static int64_t total_params(const ModelConfig *m) {
    ParamSpec *ps;
    int n = params_hf(m, &ps);
    int64_t s = 0;
    for (int i = 0; i < n; i++) s += param_numel(&ps[i]);
    free(ps);
    return s;
}

// Parameter and tensor counts of spec/model.md §2, §3, §4.1, §6.
static void preset_sizes_match_the_spec(void) {
    ModelConfig m4 = preset("4b"), m8 = preset("8b");
    CHECK_EQ_INT(total_params(&m4), 4741610528LL);
    CHECK_EQ_INT(total_params(&m8), 8527214624LL);
    ParamSpec *ps;
    CHECK_EQ_INT(params_hf(&m4, &ps), 698);
    free(ps);
    CHECK(m4.text.rope_theta == 5e6 && m8.text.rope_theta == 1e6);
    CHECK(m4.text.tie_word_embeddings == 1 && m8.text.tie_word_embeddings == 0);
    ModelConfig text4 = m4;
    text4.vision.present = 0;
    text4.text.tie_word_embeddings = 0;
    CHECK_EQ_INT(total_params(&text4), 4411424256LL);
}

static void merged_config_quirks(void) {
    Err e;
    ModelConfig m = preset("tiny");
    json_t *j = cfg_llava_json(&m, NULL);
    // Upstream stage-0 files carry the wrong top-level vocab 152064 (OV #69): text_config wins.
    json_object_set_new(j, "vocab_size", json_integer(152064));
    json_object_set_new(j, "dtype", json_string("float32"));
    ModelConfig back;
    CHECK(cfg_model_from_json(&back, j, "m.json", &e) == 0);
    CHECK_EQ_INT(back.text.vocab, 1152);
    CHECK(!strcmp(back.dtype, "float32"));
    CHECK(back.vision.present && back.vision.text_hidden == 128 && back.image_token_id == 1012);
    json_object_set_new(json_object_get(j, "vision_config"), "text_hidden_size", json_integer(2560));
    CHECK(cfg_model_from_json(&back, j, "m.json", &e) == -1);
    CHECK_STR_CONTAINS(e.msg, "text_hidden_size");
    json_decref(j);
}

int main(void) {
    RUN(rope_theta_lookup_order);
    RUN(mlcd_config);
    RUN(preset_sizes_match_the_spec);
    RUN(merged_config_quirks);
    return CHECK_DONE();
}
