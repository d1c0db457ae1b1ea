// model_generate.c: the KV-cache forward for generation. The prompt goes through the full forward
// (images included) and leaves each layer's rotated keys and its values in the cache; every later
// token runs the decoder alone at its position, attending to the cache. The math per token is the
// full forward's (same ops, same RoPE angles), so greedy tokens equal those of repeated full forwards.
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops.h"
#include "model_internal.h"

#define W(m, fmt, l) ((const float *)model_weight_fmt(m, fmt, l))  // generation runs on the cpu backend: fp32 host weights

void kv_cache_free(KvCache *kv) {
    free(kv->k);
    free(kv->v);
    free(kv->scratch);
    free(kv->ang);
    memset(kv, 0, sizeof *kv);
}

static size_t kv_layer_stride(const Model *m, const KvCache *kv) {
    return (size_t)kv->cap * m->cfg.text.kv_heads * m->cfg.text.head_dim;
}

int model_prefill(const Model *m, ModelWork *w, const ModelInput *in, KvCache *kv, int cap, float *logits_last, Err *e) {
    const TextConfig *c = &m->cfg.text;
    memset(kv, 0, sizeof *kv);
    if (m->be != &backend_cpu) { err_set(e, "generation runs on the cpu backend only so far"); return -1; }
    if (!in->ids || (in->B > 1) || (in->cu_seqlens && in->nseq != 1)) {
        err_set(e, "generation takes one prompt: input_ids of one row without packed sub-sequences");
        return -1;
    }
    if (in->T < 1 || cap < in->T) { err_set(e, "the prompt (%d tokens) must fit the cache (%d)", in->T, cap); return -1; }
    ModelOutput out;
    VisionTrace vt;
    TextTrace tr;
    if (model_run_forward(m, w, in, &out, &vt, &tr, e)) return -1;
    size_t KV = (size_t)c->kv_heads * c->head_dim, H = c->hidden, I = c->intermediate, Q = (size_t)c->heads * c->head_dim;
    kv->cap = cap;
    kv->len = in->T;
    kv->k = xmalloc((size_t)c->layers * cap * KV * sizeof(float));
    kv->v = xmalloc((size_t)c->layers * cap * KV * sizeof(float));
    kv->scratch = xmalloc((4 * H + 3 * Q + 2 * KV + 4 * I + 2 * (size_t)c->heads + 2) * sizeof(float));
    kv->ang = xmalloc((size_t)cap * (c->head_dim / 2) * sizeof(float));
    int32_t all[2] = {0, cap};
    rope_angles_1d(kv->ang, all, 1, c->head_dim, c->rope_theta);
    for (int l = 0; l < c->layers; l++) {
        memcpy(kv->k + l * kv_layer_stride(m, kv), (const float *)tr.L[l].kr, (size_t)in->T * KV * sizeof(float));
        memcpy(kv->v + l * kv_layer_stride(m, kv), (const float *)tr.L[l].v, (size_t)in->T * KV * sizeof(float));
    }
    memcpy(logits_last, (const float *)out.logits + (size_t)(in->T - 1) * c->vocab, (size_t)c->vocab * sizeof(float));
    return 0;
}

int model_decode(const Model *m, KvCache *kv, int32_t id, float *logits, Err *e) {
    const TextConfig *c = &m->cfg.text;
    int H = c->hidden, I = c->intermediate, nq = c->heads, nkv = c->kv_heads, hd = c->head_dim;
    int Q = nq * hd, KV = nkv * hd;
    float eps = (float)c->rms_eps;
    if (kv->len >= kv->cap) { err_set(e, "the KV cache is full (%d positions)", kv->cap); return -1; }
    if (id < 0 || id >= c->vocab) { err_set(e, "token %d is outside the vocabulary", id); return -1; }
    if (m->cfg.vision.present && id == m->cfg.image_token_id) { err_set(e, "an <|image_pad|> token cannot be decoded without its image"); return -1; }
    // one token's activations, carved from the scratch block
    float *x = kv->scratch, *h = x + H, *o = h + H, *x_mid = o + H, *q = x_mid + H, *qr = q + Q, *att = qr + Q,
          *k = att + Q, *v = k + KV, *gu = v + KV, *act = gu + 2 * I, *rstd = act + I,
          *qrstd = rstd + 2, *krstd = qrstd + nq;
    int pos = kv->len;
    const float *ang = kv->ang + (size_t)pos * (hd / 2);
    embedding_forward(x, &id, W(m, "model.embed_tokens.weight", 0), 1, H);
    for (int l = 0; l < c->layers; l++) {
        float *kc = kv->k + l * kv_layer_stride(m, kv), *vc = kv->v + l * kv_layer_stride(m, kv);
        rmsnorm_forward(h, rstd, x, W(m, "model.layers.%d.input_layernorm.weight", l), 1, H, eps);
        matmul_forward(q, h, W(m, "model.layers.%d.self_attn.q_proj.weight", l), NULL, 1, H, Q);
        matmul_forward(k, h, W(m, "model.layers.%d.self_attn.k_proj.weight", l), NULL, 1, H, KV);
        matmul_forward(vc + (size_t)pos * KV, h, W(m, "model.layers.%d.self_attn.v_proj.weight", l), NULL, 1, H, KV);
        rmsnorm_forward(qr, qrstd, q, W(m, "model.layers.%d.self_attn.q_norm.weight", l), nq, hd, eps);
        rmsnorm_forward(kc + (size_t)pos * KV, krstd, k, W(m, "model.layers.%d.self_attn.k_norm.weight", l), nkv, hd, eps);
        rope_forward(qr, ang, 1, nq, hd);
        rope_forward(kc + (size_t)pos * KV, ang, 1, nkv, hd);
        attention_decode(att, qr, kc, vc, pos + 1, nq, nkv, hd);
        matmul_forward(o, att, W(m, "model.layers.%d.self_attn.o_proj.weight", l), NULL, 1, Q, H);
        for (int i = 0; i < H; i++) x_mid[i] = x[i] + o[i];
        rmsnorm_forward(h, rstd, x_mid, W(m, "model.layers.%d.post_attention_layernorm.weight", l), 1, H, eps);
        matmul_forward(gu, h, W(m, "model.layers.%d.mlp.gate_proj.weight", l), NULL, 1, H, I);
        matmul_forward(gu + I, h, W(m, "model.layers.%d.mlp.up_proj.weight", l), NULL, 1, H, I);
        swiglu_forward(act, gu, 1, I);
        matmul_forward(o, act, W(m, "model.layers.%d.mlp.down_proj.weight", l), NULL, 1, I, H);
        for (int i = 0; i < H; i++) x[i] = x_mid[i] + o[i];
    }
    rmsnorm_forward(h, rstd, x, W(m, "model.norm.weight", 0), 1, H, eps);
    const float *head = model_weight(m, "lm_head.weight");
    matmul_forward(logits, h, head ? head : W(m, "model.embed_tokens.weight", 0), NULL, 1, H, c->vocab);
    kv->len++;
    return 0;
}

static int32_t argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[best]) best = i;  // first of equal maxima, as torch.argmax
    return best;
}

int model_generate(const Model *m, ModelWork *w, const ModelInput *prompt, int n, int32_t eos, int32_t *out, Err *e) {
    int V = m->cfg.text.vocab, got = 0;
    float *logits = xmalloc((size_t)V * sizeof(float));
    KvCache kv;
    int rc = model_prefill(m, w, prompt, &kv, prompt->T + n, logits, e);
    while (!rc && got < n) {
        out[got] = argmax(logits, V);
        if (out[got++] == eos || got == n) break;
        rc = model_decode(m, &kv, out[got - 1], logits, e);
    }
    kv_cache_free(&kv);
    free(logits);
    return rc ? -1 : got;
}
