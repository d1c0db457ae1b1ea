// params.c: see params.h. Shapes follow spec/model.md §6 with the sizes taken from the config.
#include "params.h"

#include <stdarg.h>
#include <stdio.h>

#include "util.h"

typedef struct {
    ParamSpec *p;
    int n, cap;
} List;

static void add(List *l, ParamPart part, ParamKind kind, int layer, int ndim, int64_t d0, int64_t d1, int64_t d2,
                int64_t d3, const char *fmt, ...) __attribute__((format(printf, 10, 11)));

static void add(List *l, ParamPart part, ParamKind kind, int layer, int ndim, int64_t d0, int64_t d1, int64_t d2,
                int64_t d3, const char *fmt, ...) {
    if (l->n == l->cap) l->p = xrealloc(l->p, (size_t)(l->cap = l->cap ? 2 * l->cap : 256) * sizeof(ParamSpec));
    ParamSpec *s = &l->p[l->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->name, sizeof s->name, fmt, ap);
    va_end(ap);
    s->part = part;
    s->kind = kind;
    s->layer = layer;
    s->ndim = ndim;
    s->shape[0] = d0; s->shape[1] = d1; s->shape[2] = d2; s->shape[3] = d3;
}

size_t param_padded(const ParamSpec *p) { return ((size_t)param_numel(p) + PARAM_ALIGN - 1) / PARAM_ALIGN * PARAM_ALIGN; }

int64_t param_numel(const ParamSpec *p) {
    int64_t n = 1;
    for (int i = 0; i < p->ndim; i++) n *= p->shape[i];
    return n;
}

int params_hf(const ModelConfig *m, ParamSpec **out) {
    List l = {0};
    if (m->vision.present) {
        const VisionConfig *v = &m->vision;
        int64_t D = v->hidden, F = v->intermediate, M = (int64_t)D * v->spatial_merge * v->spatial_merge;
        add(&l, PART_VISION, K_PATCH_EMBED, -1, 4, D, v->in_channels, v->patch, v->patch, "visual.patch_embed.proj.weight");
        add(&l, PART_VISION, K_CLS_EMB, -1, 1, D, 0, 0, 0, "visual.class_embedding");
        add(&l, PART_VISION, K_CLS_POS, -1, 2, 1, vision_head_dim(v) / 2, 0, 0, "visual.class_pos_emb");
        add(&l, PART_VISION, K_NORM_W, -1, 1, D, 0, 0, 0, "visual.pre_layernorm.weight");
        add(&l, PART_VISION, K_NORM_B, -1, 1, D, 0, 0, 0, "visual.pre_layernorm.bias");
        for (int i = 0; i < v->depth; i++) {
            add(&l, PART_VISION, K_NORM_W, i, 1, D, 0, 0, 0, "visual.blocks.%d.norm1.weight", i);
            add(&l, PART_VISION, K_NORM_B, i, 1, D, 0, 0, 0, "visual.blocks.%d.norm1.bias", i);
            add(&l, PART_VISION, K_VIT_QKV_W, i, 2, 3 * D, D, 0, 0, "visual.blocks.%d.attn.qkv.weight", i);
            add(&l, PART_VISION, K_VIT_QKV_B, i, 1, 3 * D, 0, 0, 0, "visual.blocks.%d.attn.qkv.bias", i);
            add(&l, PART_VISION, K_LINEAR_W, i, 2, D, D, 0, 0, "visual.blocks.%d.attn.proj.weight", i);
            add(&l, PART_VISION, K_LINEAR_B, i, 1, D, 0, 0, 0, "visual.blocks.%d.attn.proj.bias", i);
            add(&l, PART_VISION, K_NORM_W, i, 1, D, 0, 0, 0, "visual.blocks.%d.norm2.weight", i);
            add(&l, PART_VISION, K_NORM_B, i, 1, D, 0, 0, 0, "visual.blocks.%d.norm2.bias", i);
            add(&l, PART_VISION, K_LINEAR_W, i, 2, F, D, 0, 0, "visual.blocks.%d.mlp.fc1.weight", i);
            add(&l, PART_VISION, K_LINEAR_B, i, 1, F, 0, 0, 0, "visual.blocks.%d.mlp.fc1.bias", i);
            add(&l, PART_VISION, K_LINEAR_W, i, 2, D, F, 0, 0, "visual.blocks.%d.mlp.fc2.weight", i);
            add(&l, PART_VISION, K_LINEAR_B, i, 1, D, 0, 0, 0, "visual.blocks.%d.mlp.fc2.bias", i);
        }
        add(&l, PART_MERGER, K_NORM_W, -1, 1, D, 0, 0, 0, "visual.merger.ln_q.weight");
        add(&l, PART_MERGER, K_NORM_B, -1, 1, D, 0, 0, 0, "visual.merger.ln_q.bias");
        add(&l, PART_MERGER, K_LINEAR_W, -1, 2, M, M, 0, 0, "visual.merger.mlp.0.weight");
        add(&l, PART_MERGER, K_LINEAR_B, -1, 1, M, 0, 0, 0, "visual.merger.mlp.0.bias");
        add(&l, PART_MERGER, K_LINEAR_W, -1, 2, m->text.hidden, M, 0, 0, "visual.merger.mlp.2.weight");
        add(&l, PART_MERGER, K_LINEAR_B, -1, 1, m->text.hidden, 0, 0, 0, "visual.merger.mlp.2.bias");
    }
    const TextConfig *t = &m->text;
    int64_t H = t->hidden, I = t->intermediate, Q = (int64_t)t->heads * t->head_dim, KV = (int64_t)t->kv_heads * t->head_dim;
    add(&l, PART_TEXT, K_EMBED, -1, 2, t->vocab, H, 0, 0, "model.embed_tokens.weight");
    for (int i = 0; i < t->layers; i++) {
        add(&l, PART_TEXT, K_NORM_W, i, 1, H, 0, 0, 0, "model.layers.%d.input_layernorm.weight", i);
        add(&l, PART_TEXT, K_Q, i, 2, Q, H, 0, 0, "model.layers.%d.self_attn.q_proj.weight", i);
        add(&l, PART_TEXT, K_K, i, 2, KV, H, 0, 0, "model.layers.%d.self_attn.k_proj.weight", i);
        add(&l, PART_TEXT, K_V, i, 2, KV, H, 0, 0, "model.layers.%d.self_attn.v_proj.weight", i);
        add(&l, PART_TEXT, K_LINEAR_W, i, 2, H, Q, 0, 0, "model.layers.%d.self_attn.o_proj.weight", i);
        add(&l, PART_TEXT, K_NORM_W, i, 1, t->head_dim, 0, 0, 0, "model.layers.%d.self_attn.q_norm.weight", i);
        add(&l, PART_TEXT, K_NORM_W, i, 1, t->head_dim, 0, 0, 0, "model.layers.%d.self_attn.k_norm.weight", i);
        add(&l, PART_TEXT, K_NORM_W, i, 1, H, 0, 0, 0, "model.layers.%d.post_attention_layernorm.weight", i);
        add(&l, PART_TEXT, K_GATE, i, 2, I, H, 0, 0, "model.layers.%d.mlp.gate_proj.weight", i);
        add(&l, PART_TEXT, K_UP, i, 2, I, H, 0, 0, "model.layers.%d.mlp.up_proj.weight", i);
        add(&l, PART_TEXT, K_LINEAR_W, i, 2, H, I, 0, 0, "model.layers.%d.mlp.down_proj.weight", i);
    }
    add(&l, PART_TEXT, K_NORM_W, -1, 1, H, 0, 0, 0, "model.norm.weight");
    // The merged model always has its own head (model.md §4.2); a plain Qwen3 only when untied.
    if (m->vision.present || !t->tie_word_embeddings) add(&l, PART_TEXT, K_HEAD, -1, 2, t->vocab, H, 0, 0, "lm_head.weight");
    *out = l.p;
    return l.n;
}
