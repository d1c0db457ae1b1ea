// source_ckpt.c: see source_ckpt.h.
#include "source_ckpt.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "safetensors.h"
#include "strmap.h"

static int hf_index(const StrMap *hf, const char *name) { return name ? strmap_get(hf, name) : -1; }

int mlcd_params(const ModelConfig *m, const ParamSpec *ps, int np, SrcSpec **out) {
    StrMap hf;
    strmap_init(&hf);
    for (int i = 0; i < np; i++) strmap_put(&hf, ps[i].name, i);
    const VisionConfig *v = &m->vision;
    int64_t D = v->hidden, F = v->intermediate;
    SrcSpec *s = xcalloc((size_t)(8 + 16 * v->depth), sizeof(SrcSpec));
    int n = 0;
#define SRC(KIND, NDIM, D0, D1, D2, D3, HFNAME, SLOT, ...)                                   \
    do {                                                                                     \
        SrcSpec *x = &s[n++];                                                                \
        snprintf(x->name, sizeof x->name, __VA_ARGS__);                                      \
        x->kind = KIND; x->ndim = NDIM;                                                      \
        x->shape[0] = D0; x->shape[1] = D1; x->shape[2] = D2; x->shape[3] = D3;              \
        x->hf = hf_index(&hf, HFNAME);                                                       \
        x->slot = SLOT;                                                                      \
    } while (0)
    char h[128];
    SRC(K_PATCH_EMBED, 4, D, v->in_channels, v->patch, v->patch, "visual.patch_embed.proj.weight", 0,
        "embeddings.patch_embedding.weight");
    SRC(K_CLS_EMB, 1, D, 0, 0, 0, "visual.class_embedding", 0, "embeddings.class_embedding");
    SRC(K_CLS_POS, 2, 1, vision_head_dim(v) / 2, 0, 0, "visual.class_pos_emb", 0, "class_pos_emb");
    SRC(K_NORM_W, 1, D, 0, 0, 0, "visual.pre_layernorm.weight", 0, "pre_layrnorm.weight");
    SRC(K_NORM_B, 1, D, 0, 0, 0, "visual.pre_layernorm.bias", 0, "pre_layrnorm.bias");
    static const char *qkv[3] = {"q", "k", "v"};
    for (int i = 0; i < v->depth; i++) {
        // Each line: MLCD name <- renames of model.md §7.3 -> merged name.
        snprintf(h, sizeof h, "visual.blocks.%d.norm1.weight", i);
        SRC(K_NORM_W, 1, D, 0, 0, 0, h, 0, "encoder.layers.%d.layer_norm1.weight", i);
        snprintf(h, sizeof h, "visual.blocks.%d.norm1.bias", i);
        SRC(K_NORM_B, 1, D, 0, 0, 0, h, 0, "encoder.layers.%d.layer_norm1.bias", i);
        for (int j = 0; j < 3; j++) {
            snprintf(h, sizeof h, "visual.blocks.%d.attn.qkv.weight", i);
            SRC(K_LINEAR_W, 2, D, D, 0, 0, h, j, "encoder.layers.%d.self_attn.%s_proj.weight", i, qkv[j]);
            snprintf(h, sizeof h, "visual.blocks.%d.attn.qkv.bias", i);
            SRC(K_LINEAR_B, 1, D, 0, 0, 0, h, j, "encoder.layers.%d.self_attn.%s_proj.bias", i, qkv[j]);
        }
        snprintf(h, sizeof h, "visual.blocks.%d.attn.proj.weight", i);
        SRC(K_LINEAR_W, 2, D, D, 0, 0, h, 0, "encoder.layers.%d.self_attn.out_proj.weight", i);
        snprintf(h, sizeof h, "visual.blocks.%d.attn.proj.bias", i);
        SRC(K_LINEAR_B, 1, D, 0, 0, 0, h, 0, "encoder.layers.%d.self_attn.out_proj.bias", i);
        snprintf(h, sizeof h, "visual.blocks.%d.norm2.weight", i);
        SRC(K_NORM_W, 1, D, 0, 0, 0, h, 0, "encoder.layers.%d.layer_norm2.weight", i);
        snprintf(h, sizeof h, "visual.blocks.%d.norm2.bias", i);
        SRC(K_NORM_B, 1, D, 0, 0, 0, h, 0, "encoder.layers.%d.layer_norm2.bias", i);
        snprintf(h, sizeof h, "visual.blocks.%d.mlp.fc1.weight", i);
        SRC(K_LINEAR_W, 2, F, D, 0, 0, h, 0, "encoder.layers.%d.mlp.fc1.weight", i);
        snprintf(h, sizeof h, "visual.blocks.%d.mlp.fc1.bias", i);
        SRC(K_LINEAR_B, 1, F, 0, 0, 0, h, 0, "encoder.layers.%d.mlp.fc1.bias", i);
        snprintf(h, sizeof h, "visual.blocks.%d.mlp.fc2.weight", i);
        SRC(K_LINEAR_W, 2, D, F, 0, 0, h, 0, "encoder.layers.%d.mlp.fc2.weight", i);
        snprintf(h, sizeof h, "visual.blocks.%d.mlp.fc2.bias", i);
        SRC(K_LINEAR_B, 1, D, 0, 0, 0, h, 0, "encoder.layers.%d.mlp.fc2.bias", i);
    }
    SRC(K_NORM_W, 1, D, 0, 0, 0, NULL, 0, "post_layernorm.weight");
    SRC(K_NORM_B, 1, D, 0, 0, 0, NULL, 0, "post_layernorm.bias");
#undef SRC
    for (int i = 0; i < n; i++)
        if (s[i].hf < 0 && strncmp(s[i].name, "post_layernorm", 14)) die_internal("no merged tensor for '%s'", s[i].name);
    strmap_free(&hf);
    *out = s;
    return n;
}

void init_param(float *x, int64_t n, ParamKind kind, uint64_t stream, double std, int width) {
    switch (kind) {
    case K_NORM_W: rng_fill_normal(x, (size_t)n, stream, 1.0f, (float)std); break;
    case K_CLS_EMB: rng_fill_normal(x, (size_t)n, stream, 0.0f, (float)(1.0 / sqrt((double)width))); break;
    case K_CLS_POS: rng_fill_normal(x, (size_t)n, stream, 0.0f, 1.0f); break;
    default: rng_fill_normal(x, (size_t)n, stream, 0.0f, (float)std); break;
    }
}

// One safetensors file of random tensors: names[i] with shapes, kinds and stream names.
typedef struct {
    const char *name;     // as written
    const char *key;      // seeds the values (independent of a name prefix)
    ParamKind kind;
    int ndim;
    const int64_t *shape;
} GenSpec;

static int write_random(const char *dir, const GenSpec *g, int n, uint64_t seed, double std, int width, DType dt, Err *e) {
    StWriter *w = stw_new(dir, "model", 0);
    int rc = 0;
    int64_t maxn = 0;
    for (int i = 0; i < n && !rc; i++) {
        rc = stw_declare(w, g[i].name, dt, g[i].ndim, g[i].shape, e);
        int64_t k = shape_numel(g[i].ndim, g[i].shape);
        if (k > maxn) maxn = k;
    }
    if (!rc) rc = stw_open(w, e);
    float *x = rc ? NULL : xmalloc((size_t)maxn * sizeof(float));
    void *y = rc || dt == DT_F32 ? NULL : xmalloc((size_t)maxn * dtype_size(dt));
    for (int i = 0; i < n && !rc; i++) {
        int64_t k = shape_numel(g[i].ndim, g[i].shape);
        init_param(x, k, g[i].kind, rng_stream(seed, g[i].key), std, width);
        if (y) convert_floats(y, dt, x, DT_F32, (size_t)k);
        rc = stw_write(w, g[i].name, y ? y : x, e);
    }
    if (!rc) rc = stw_finish(w, e);
    free(x);
    free(y);
    stw_free(w);
    return rc;
}

// Writes j as DIR/FILE and releases it.
static int write_json_in(const char *dir, const char *file, json_t *j, Err *e) {
    char *p = path_join(dir, file);
    int rc = json_write_file(p, j, e);
    free(p);
    json_decref(j);
    return rc;
}

static const char *dtype_json_name(DType dt) { return dt == DT_F32 ? "float32" : "bfloat16"; }

int write_source_checkpoints(const ModelConfig *m, const char *dir, uint64_t seed, DType dt, int rice_prefix, Err *e) {
    ParamSpec *ps;
    int np = params_hf(m, &ps), rc = 0;
    char *vit = path_join(dir, "vit"), *llm = path_join(dir, "llm");
    if (mkdir_p(vit) || mkdir_p(llm)) { err_set(e, "%s: cannot create directories", dir); rc = -1; }

    // Vision tower, MLCD names.
    SrcSpec *src = NULL;
    int ns = rc ? 0 : mlcd_params(m, ps, np, &src);
    GenSpec *g = xcalloc((size_t)(ns + np), sizeof(GenSpec));
    char (*names)[160] = xcalloc((size_t)ns + 1, sizeof *names);
    for (int i = 0; i < ns; i++) {
        snprintf(names[i], sizeof names[i], "%s%s", rice_prefix ? RICE_PREFIX : "", src[i].name);
        g[i] = (GenSpec){names[i], src[i].name, src[i].kind, src[i].ndim, src[i].shape};
    }
    if (!rc) rc = write_random(vit, g, ns, seed, m->vision.initializer_range, m->vision.hidden, dt, e);
    if (!rc) rc = write_json_in(vit, "config.json", cfg_mlcd_json(&m->vision, dtype_json_name(dt)), e);

    // LLM, Qwen3 names (lm_head only when untied).
    ModelConfig text = *m;
    text.vision.present = 0;
    ParamSpec *tp;
    int nt = params_hf(&text, &tp);
    for (int i = 0; i < nt; i++) g[i] = (GenSpec){tp[i].name, tp[i].name, tp[i].kind, tp[i].ndim, tp[i].shape};
    if (!rc) rc = write_random(llm, g, nt, seed, m->text.initializer_range, m->text.hidden, dt, e);
    if (!rc) rc = write_json_in(llm, "config.json", cfg_qwen3_json(&m->text, dtype_json_name(dt)), e);
    if (!rc && m->text.bos_token_id >= 0 && m->text.eos_token_id >= 0)
        rc = write_json_in(llm, "generation_config.json",
                           json_pack("{s:i, s:i, s:i}", "bos_token_id", m->text.bos_token_id, "eos_token_id",
                                     m->text.eos_token_id, "pad_token_id", m->text.bos_token_id), e);
    free(tp);
    free(names);
    free(g);
    free(src);
    free(ps);
    free(vit);
    free(llm);
    return rc;
}
