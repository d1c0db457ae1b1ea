// merge.c: see merge.h.
#include "merge.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "hfdir.h"
#include "params.h"
#include "rng.h"
#include "safetensors.h"
#include "source_ckpt.h"

#define QWEN2VL_IMAGE_PAD 151655
#define QWEN2VL_VIDEO_PAD 151656

int tokenizer_special_id(const char *dir, const char *content) {
    char *path = path_join(dir, "tokenizer.json");
    Err e;
    json_t *j = path_exists(path) ? json_read_file(path, &e) : NULL;
    free(path);
    if (!j) return -1;
    int id = -1;
    size_t i;
    json_t *tok;
    json_array_foreach(json_object_get(j, "added_tokens"), i, tok) {
        json_t *c = json_object_get(tok, "content"), *v = json_object_get(tok, "id");
        if (json_is_string(c) && json_is_integer(v) && !strcmp(json_string_value(c), content)) id = (int)json_integer_value(v);
    }
    json_decref(j);
    return id;
}

static json_t *read_json_or_die(const char *dir, const char *file) {
    char *path = path_join(dir, file);
    Err e;
    json_t *j = json_read_file(path, &e);
    if (!j) die_input("%s", e.msg);
    free(path);
    return j;
}

static void open_or_die(HfDir *h, const char *dir) {
    Err e;
    if (hfdir_open(h, dir, &e)) die_input("%s", e.msg);
}

// The merger tensor `rest` ("ln_q.weight", ...) in an adapter checkpoint, under any of the names
// upstream adapters use (model.mm_projector.* is what --adapter_path loads).
static const StTensor *find_adapter(const HfDir *a, const char *rest) {
    static const char *const prefixes[] = {"model.mm_projector.", "mm_projector.", "model.visual.merger.", "visual.merger."};
    for (int i = 0; i < 4; i++) {
        char name[160];
        snprintf(name, sizeof name, "%s%s", prefixes[i], rest);
        const StTensor *t = hfdir_find(a, name);
        if (t) return t;
    }
    return NULL;
}

static void write_preprocessor(const char *dir, const ModelConfig *m) {
    // Qwen2-VL processor as upstream copies it, with temporal_patch_size 1 and min/max pixels
    // written consistently into `size` too (spec/checkpoints.md §1.4, pitfalls.md #27).
    json_t *j = json_pack("{s:s, s:s, s:b, s:b, s:b, s:b, s:f, s:i, s:[f,f,f], s:[f,f,f], s:i, s:i, s:i, s:i, s:i, "
                          "s:{s:i, s:i}}",
                          "image_processor_type", "Qwen2VLImageProcessor", "processor_class", "Qwen2_5_VLProcessor",
                          "do_resize", 1, "do_rescale", 1, "do_normalize", 1, "do_convert_rgb", 1, "rescale_factor",
                          1.0 / 255.0, "resample", 3, "image_mean", 0.48145466, 0.4578275, 0.40821073, "image_std",
                          0.26862954, 0.26130258, 0.27577711, "patch_size", m->vision.patch, "merge_size",
                          m->vision.spatial_merge, "temporal_patch_size", m->vision.temporal_patch, "min_pixels", 3136,
                          "max_pixels", 2560000, "size", "shortest_edge", 3136, "longest_edge", 2560000);
    char *p = path_join(dir, "preprocessor_config.json");
    Err e;
    if (json_write_file(p, j, &e)) die_internal("%s", e.msg);
    free(p);
    json_decref(j);
}

void merge_run(const MergeOptions *o) {
    double t0 = now_seconds();
    Err e;
    // ---- configs ----
    char *vit_cfg_path = path_join(o->vit, "config.json"), *llm_cfg_path = path_join(o->llm, "config.json");
    json_t *vit_json = read_json_or_die(o->vit, "config.json"), *llm_json = read_json_or_die(o->llm, "config.json");
    ModelConfig m;
    memset(&m, 0, sizeof m);
    if (cfg_vision_from_mlcd(&m.vision, vit_json, vit_cfg_path, &e)) die_input("%s", e.msg);
    json_t *mt = json_object_get(llm_json, "model_type");
    if (mt && (!json_is_string(mt) || strcmp(json_string_value(mt), "qwen3")))
        die_input("%s: model_type: expected \"qwen3\" (a Qwen3ForCausalLM checkpoint)", llm_cfg_path);
    if (cfg_text_from_qwen3(&m.text, llm_json, llm_cfg_path, &e)) die_input("%s", e.msg);
    m.vision.text_hidden = m.text.hidden;  // merger output = LLM width (OV fix abeb147, pitfalls.md #17)
    snprintf(m.dtype, sizeof m.dtype, "%s", o->dtype == DT_F32 ? "float32" : "bfloat16");
    const char *tok_dir = o->tokenizer ? o->tokenizer : o->llm;
    m.image_token_id = (int)(o->image_token_id >= 0 ? o->image_token_id : tokenizer_special_id(tok_dir, "<|image_pad|>"));
    m.video_token_id = (int)(o->video_token_id >= 0 ? o->video_token_id : tokenizer_special_id(tok_dir, "<|video_pad|>"));
    if (m.image_token_id < 0) m.image_token_id = QWEN2VL_IMAGE_PAD;
    if (m.video_token_id < 0) m.video_token_id = QWEN2VL_VIDEO_PAD;
    if (m.image_token_id >= m.text.vocab)
        die_input("%s: image token id %d is outside the vocabulary of %d (no <|image_pad|> in %s/tokenizer.json; "
                  "pass --image-token-id)", llm_cfg_path, m.image_token_id, m.text.vocab, tok_dir);
    m.vision.present = 1;
    if (cfg_model_check(&m, vit_cfg_path, &e)) die_input("%s", e.msg);

    ParamSpec *ps;
    int np = params_hf(&m, &ps);
    SrcSpec *src;
    int ns = mlcd_params(&m, ps, np, &src);

    // ---- vision source: MLCD names with or without the vision_model. prefix ----
    HfDir vit;
    open_or_die(&vit, o->vit);
    const char *prefix = hfdir_find(&vit, RICE_PREFIX "embeddings.patch_embedding.weight") ? RICE_PREFIX : "";
    const StTensor **vt = xcalloc((size_t)ns, sizeof *vt);
    {
        StrMap used;
        strmap_init(&used);
        for (int i = 0; i < ns; i++) {
            char name[160];
            snprintf(name, sizeof name, "%s%s", prefix, src[i].name);
            vt[i] = hfdir_find(&vit, name);
            DType dt = DT_INVALID;
            if (check_weight(vt[i], hfdir_path_of(&vit, vt[i]), name, src[i].ndim, src[i].shape, &dt, &e)) die_input("%s", e.msg);
            strmap_put(&used, name, i);
        }
        for (int i = 0; i < vit.n; i++) {
            const char *nm = vit.t[i]->name;
            if (strmap_get(&used, nm) < 0 && !str_ends_with(nm, ".inv_freq"))  // rotary buffers are recomputed
                die_input("%s: unexpected tensor '%s' (not part of the MLCD vision model its config.json describes)",
                          hfdir_path_of(&vit, vit.t[i]), nm);
        }
        strmap_free(&used);
    }

    // ---- LLM source: Qwen3 names; lm_head present exactly when untied ----
    HfDir llm;
    open_or_die(&llm, o->llm);
    ModelConfig text_only = m;
    text_only.vision.present = 0;
    ParamSpec *tps;
    int ntp = params_hf(&text_only, &tps);
    for (int i = 0; i < ntp; i++) {
        const StTensor *t = hfdir_find(&llm, tps[i].name);
        DType dt = DT_INVALID;
        if (check_weight(t, hfdir_path_of(&llm, t), tps[i].name, tps[i].ndim, tps[i].shape, &dt, &e)) die_input("%s", e.msg);
    }
    for (int i = 0; i < llm.n; i++) {
        const char *nm = llm.t[i]->name;
        int known = !strcmp(nm, "lm_head.weight");  // a tied LLM may still store its head
        for (int k = 0; k < ntp && !known; k++) known = !strcmp(nm, tps[k].name);
        if (!known)
            die_input("%s: unexpected tensor '%s' (not part of the Qwen3 model its config.json describes)",
                      hfdir_path_of(&llm, llm.t[i]), nm);
    }
    const StTensor *head = hfdir_find(&llm, "lm_head.weight");
    if (head) {
        DType dt = DT_INVALID;
        int64_t shape[2] = {m.text.vocab, m.text.hidden};
        if (check_weight(head, hfdir_path_of(&llm, head), "lm_head.weight", 2, shape, &dt, &e)) die_input("%s", e.msg);
    }

    // ---- optional adapter ----
    HfDir ad;
    memset(&ad, 0, sizeof ad);
    if (o->adapter) {
        open_or_die(&ad, o->adapter);
        int found = 0;
        for (int i = 0; i < np; i++) {
            if (ps[i].part != PART_MERGER) continue;
            const char *rest = ps[i].name + strlen("visual.merger.");
            const StTensor *t = find_adapter(&ad, rest);
            DType dt = DT_INVALID;
            char want[160];
            snprintf(want, sizeof want, "model.mm_projector.%s", rest);
            if (check_weight(t, hfdir_path_of(&ad, t), want, ps[i].ndim, ps[i].shape, &dt, &e)) die_input("%s", e.msg);
            found++;
        }
        if (ad.n != found)
            die_input("%s: holds %d tensors, expected exactly the %d merger tensors (model.mm_projector.*)", o->adapter,
                      ad.n, found);
    }

    // ---- write ----
    OutDir out;
    outdir_begin(&out, o->out, o->force);
    StWriter *w = stw_new(out.tmp, "model", o->max_shard);
    int64_t maxn = 0, total = 0;
    for (int i = 0; i < np; i++) {
        if (stw_declare(w, ps[i].name, o->dtype, ps[i].ndim, ps[i].shape, &e)) die_internal("%s", e.msg);
        int64_t k = param_numel(&ps[i]);
        if (k > maxn) maxn = k;
        total += k * (int64_t)dtype_size(o->dtype);
    }
    if (stw_open(w, &e)) die_input("%s", e.msg);
    char *buf = xmalloc((size_t)maxn * 4);
    float *tmp = xmalloc((size_t)maxn * 4);
    for (int i = 0; i < np; i++) {
        const ParamSpec *p = &ps[i];
        int64_t n = param_numel(p);
        size_t es = dtype_size(o->dtype);
        if (p->part == PART_VISION) {  // one MLCD tensor, or q, k, v stacked in that order
            for (int s = 0; s < ns; s++) {
                if (src[s].hf != i) continue;
                int64_t k = shape_numel(src[s].ndim, src[s].shape);
                convert_floats(buf + (size_t)(src[s].slot * k) * es, o->dtype, vt[s]->data, vt[s]->dtype, (size_t)k);
                st_release(vt[s]);
            }
        } else if (p->part == PART_MERGER) {
            if (o->adapter) {
                const StTensor *t = find_adapter(&ad, p->name + strlen("visual.merger."));
                convert_floats(buf, o->dtype, t->data, t->dtype, (size_t)n);
            } else {  // HF _init_weights: Linear N(0, 0.02) with zero bias; LayerNorm 1 and 0
                if (p->kind == K_LINEAR_W) rng_fill_normal(tmp, (size_t)n, rng_stream(o->seed, p->name), 0.0f,
                                                           (float)m.vision.initializer_range);
                else for (int64_t k = 0; k < n; k++) tmp[k] = p->kind == K_NORM_W ? 1.0f : 0.0f;
                convert_floats(buf, o->dtype, tmp, DT_F32, (size_t)n);
            }
        } else {
            // lm_head: the LLM's own head, or a copy of the embedding when it ties them (untied from now on).
            const char *from = p->kind == K_HEAD && !head ? "model.embed_tokens.weight" : p->name;
            const StTensor *t = hfdir_find(&llm, from);
            convert_floats(buf, o->dtype, t->data, t->dtype, (size_t)n);
            st_release(t);
        }
        if (stw_write(w, p->name, buf, &e)) die_input("%s", e.msg);
    }
    if (stw_finish(w, &e)) die_input("%s", e.msg);
    int nshards = stw_num_shards(w);
    stw_free(w);
    free(buf);
    free(tmp);

    // ---- config, tokenizer and processor files ----
    json_t *cfg = cfg_llava_json(&m, llm_json);
    char *cfg_path = path_join(out.tmp, "config.json");
    if (json_write_file(cfg_path, cfg, &e)) die_internal("%s", e.msg);
    free(cfg_path);
    json_decref(cfg);
    static const char *const skip[] = {"config.json", NULL};
    if (copy_aux_files(tok_dir, out.tmp, skip, &e) < 0) die_input("%s", e.msg);
    char *pp = path_join(out.tmp, "preprocessor_config.json");
    if (!path_exists(pp)) write_preprocessor(out.tmp, &m);
    free(pp);

    outdir_commit(&out);
    fprintf(stderr, "merge: wrote %d tensors (%.2f GB %s, %d shard%s) to %s in %.1f s, peak RSS %.2f GB\n", np,
            (double)total / 1e9, dtype_name(o->dtype), nshards, nshards == 1 ? "" : "s", o->out, now_seconds() - t0,
            (double)peak_rss_bytes() / 1e9);

    if (o->adapter) hfdir_close(&ad);
    hfdir_close(&vit);
    hfdir_close(&llm);
    free(vt);
    free(src);
    free(ps);
    free(tps);
    json_decref(vit_json);
    json_decref(llm_json);
    free(vit_cfg_path);
    free(llm_cfg_path);
}
