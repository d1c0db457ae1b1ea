// model_generate.c: the KV-cache forward for generation, on the model's backend. The prompt goes
// through the full forward (images included) and leaves each layer's rotated keys and its values in
// the cache; every later token runs the decoder alone at its position, attending to the cache. The
// math per token is the full forward's (same ops, same RoPE angles), so greedy tokens equal those of
// repeated full forwards.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops.h"
#include "model_internal.h"

#define W model_weight_fmt

void kv_cache_free(KvCache *kv) {
    if (kv->be) {
        const Backend *be = kv->be;
        be->release(kv->k);
        be->release(kv->v);
        be->release(kv->ang);
        be->release(kv->act);
        be->release(kv->res);
        be->release(kv->stats);
        be->release(kv->id);
    }
    memset(kv, 0, sizeof *kv);
}

static size_t kv_layer_stride(const Model *m, const KvCache *kv) {  // elements per layer
    return (size_t)kv->cap * m->cfg.text.kv_heads * m->cfg.text.head_dim;
}

// One token's activations: x, h, o, x_mid [H]; q, qr, att [Q]; k [KV]; gu [2I]; act [I]; logits [V].
static size_t token_acts(const TextConfig *c) {
    size_t Q = (size_t)c->heads * c->head_dim, KV = (size_t)c->kv_heads * c->head_dim;
    return 4 * (size_t)c->hidden + 3 * Q + KV + 3 * (size_t)c->intermediate + (size_t)c->vocab;
}

int model_prefill(const Model *m, ModelWork *w, const ModelInput *in, KvCache *kv, int cap, float *logits_last, Err *e) {
    const Backend *be = m->be;
    const TextConfig *c = &m->cfg.text;
    memset(kv, 0, sizeof *kv);
    if (!in->ids || (in->B > 1) || (in->cu_seqlens && in->nseq != 1)) {
        err_set(e, "generation takes one prompt: input_ids of one row without packed sub-sequences");
        return -1;
    }
    if (in->T < 1 || cap < in->T) { err_set(e, "the prompt (%d tokens) must fit the cache (%d)", in->T, cap); return -1; }
    ModelOutput out;
    VisionTrace vt;
    TextTrace tr;
    int recompute = w->recompute;  // the cache is filled from every layer's keys and values: keep them all
    w->recompute = 0;
    int32_t last = in->T - 1;  // the head over the last position only: the next token's logits
    int rc = model_run_forward(m, w, in, &out, &vt, &tr, &last, 1, e);
    w->recompute = recompute;
    if (rc) return -1;
    size_t KV = (size_t)c->kv_heads * c->head_dim, half = (size_t)c->head_dim / 2;
    kv->be = be;
    kv->cap = cap;
    kv->len = in->T;
    kv->k = be->alloc((size_t)c->layers * cap * KV * be->esize);
    kv->v = be->alloc((size_t)c->layers * cap * KV * be->esize);
    kv->act = be->alloc(token_acts(c) * be->esize);
    kv->fp32_residual = w->fp32_residual != 0;  // the prompt's forward kept the residual stream so: the tokens too
    if (kv->fp32_residual) kv->res = be->alloc(2 * (size_t)c->hidden * sizeof(float));
    kv->stats = be->alloc((2 + (size_t)c->heads + c->kv_heads) * sizeof(float));
    kv->id = be->alloc(sizeof(int32_t));
    kv->ang = be->alloc((size_t)cap * half * sizeof(float));
    float *ang = xmalloc((size_t)cap * half * sizeof(float));
    int32_t all[2] = {0, cap};
    rope_angles_1d(ang, all, 1, c->head_dim, c->rope_theta);
    be->upload(kv->ang, ang, (size_t)cap * half * sizeof(float));
    free(ang);
    for (int l = 0; l < c->layers; l++) {
        be->copy2d(AT(be, kv->k, l * kv_layer_stride(m, kv)), KV, tr.L[l].kr, KV, (size_t)in->T, KV);
        be->copy2d(AT(be, kv->v, l * kv_layer_stride(m, kv)), KV, tr.L[l].v, KV, (size_t)in->T, KV);
    }
    be->to_f32(logits_last, out.logits, (size_t)c->vocab);
    return 0;
}

int model_decode(const Model *m, KvCache *kv, int32_t id, float *logits, Err *e) {
    const Backend *be = m->be;
    const TextConfig *c = &m->cfg.text;
    int H = c->hidden, I = c->intermediate, nq = c->heads, nkv = c->kv_heads, hd = c->head_dim;
    int Q = nq * hd, KV = nkv * hd;
    float eps = (float)c->rms_eps;
    if (kv->len >= kv->cap) { err_set(e, "the KV cache is full (%d positions)", kv->cap); return -1; }
    if (id < 0 || id >= c->vocab) { err_set(e, "token %d is outside the vocabulary", id); return -1; }
    if (m->cfg.vision.present && id == m->cfg.image_token_id) { err_set(e, "an <|image_pad|> token cannot be decoded without its image"); return -1; }
    // one token's activations, carved from the cache's block (layout of token_acts)
    Act *xs = kv->act, *h = AT(be, xs, H), *o = AT(be, h, H), *x_mids = AT(be, o, H), *q = AT(be, x_mids, H), *qr = AT(be, q, Q),
        *att = AT(be, qr, Q), *k = AT(be, att, Q), *gu = AT(be, k, KV), *act = AT(be, gu, 2 * I), *out = AT(be, act, I);
    float *rstd = kv->stats, *qrstd = rstd + 2, *krstd = qrstd + nq;
    int pos = kv->len;
    const float *ang = kv->ang + (size_t)pos * (hd / 2);
    be->upload(kv->id, &id, sizeof id);
    be->embedding_forward(xs, kv->id, W(m, "model.embed_tokens.weight", 0), 1, H);
    Resid r = {be, kv->fp32_residual};  // the residual rows: xs and x_mids, or fp32 ones
    Res *x = (Res *)xs, *x_mid = (Res *)x_mids;
    if (r.f32) {
        x = (Res *)kv->res, x_mid = (Res *)(kv->res + H);
        be->widen(kv->res, xs, (size_t)H);
    }
    for (int l = 0; l < c->layers; l++) {
        Act *kc = AT(be, kv->k, l * kv_layer_stride(m, kv)), *vc = AT(be, kv->v, l * kv_layer_stride(m, kv));
        Act *k_pos = AT(be, kc, (size_t)pos * KV);
        res_rmsnorm(&r, h, rstd, x, W(m, "model.layers.%d.input_layernorm.weight", l), 1, H, eps);
        be->matmul_forward(q, h, W(m, "model.layers.%d.self_attn.q_proj.weight", l), NULL, 1, H, Q);
        be->matmul_forward(k, h, W(m, "model.layers.%d.self_attn.k_proj.weight", l), NULL, 1, H, KV);
        be->matmul_forward(AT(be, vc, (size_t)pos * KV), h, W(m, "model.layers.%d.self_attn.v_proj.weight", l), NULL, 1, H, KV);
        be->rmsnorm_rope_forward(qr, qrstd, q, W(m, "model.layers.%d.self_attn.q_norm.weight", l), ang, 1, nq, hd, eps);
        be->rmsnorm_rope_forward(k_pos, krstd, k, W(m, "model.layers.%d.self_attn.k_norm.weight", l), ang, 1, nkv, hd, eps);
        be->attention_decode(att, qr, kc, vc, pos + 1, nq, nkv, hd);
        be->matmul_forward(o, att, W(m, "model.layers.%d.self_attn.o_proj.weight", l), NULL, 1, Q, H);
        res_add_rmsnorm(&r, x_mid, h, rstd, x, o, W(m, "model.layers.%d.post_attention_layernorm.weight", l), 1, H, eps);
        // one row: [gate | up] is the two products side by side
        be->matmul_forward(gu, h, W(m, "model.layers.%d.mlp.gate_proj.weight", l), NULL, 1, H, I);
        be->matmul_forward(AT(be, gu, I), h, W(m, "model.layers.%d.mlp.up_proj.weight", l), NULL, 1, H, I);
        be->swiglu_forward(act, gu, 1, I);
        be->matmul_forward(o, act, W(m, "model.layers.%d.mlp.down_proj.weight", l), NULL, 1, I, H);
        res_add(&r, x, x_mid, o, (size_t)H);
    }
    res_rmsnorm(&r, h, rstd, x, W(m, "model.norm.weight", 0), 1, H, eps);
    int head = model_param_id(m, "lm_head.weight");
    be->matmul_forward(out, h, head >= 0 ? m->wb[head] : W(m, "model.embed_tokens.weight", 0), NULL, 1, H, c->vocab);
    be->to_f32(logits, out, (size_t)c->vocab);
    kv->len++;
    return 0;
}

int32_t model_argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[best]) best = i;  // first of equal maxima, as torch.argmax
    return best;
}

float model_margin(const float *x, int n, int32_t best) {
    float second = -INFINITY;
    double ss = 0.0;
    for (int i = 0; i < n; i++) {
        if (i != best && x[i] > second) second = x[i];
        ss += (double)x[i] * x[i];
    }
    double rms = sqrt(ss / (n > 0 ? n : 1));
    return (float)((x[best] - second) / (rms > 0.0 ? rms : 1.0));
}

int model_generate(const Model *m, ModelWork *w, const ModelInput *prompt, int n, int32_t eos, int32_t *out, float *margin, Err *e) {
    int V = m->cfg.text.vocab, got = 0;
    float *logits = xmalloc((size_t)V * sizeof(float));
    KvCache kv;
    int rc = model_prefill(m, w, prompt, &kv, prompt->T + n, logits, e);
    while (!rc && got < n) {
        out[got] = model_argmax(logits, V);
        if (margin) margin[got] = model_margin(logits, V, out[got]);
        if (out[got++] == eos || got == n) break;
        rc = model_decode(m, &kv, out[got - 1], logits, e);
    }
    kv_cache_free(&kv);
    free(logits);
    return rc ? -1 : got;
}
