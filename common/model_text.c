// model_text.c: the Qwen3 decoder, forward (keeping what the backward needs) and backward.
//   per layer:  h1 = RMSNorm(x_in); q,k,v = h1·W; qr,kr = RoPE(RMSNorm_head(q,k)); att = attn(qr,kr,v)
//               x_mid = x_in + att·Woᵀ;  h2 = RMSNorm(x_mid); act = silu(h2·Wgᵀ)·(h2·Wuᵀ)
//               x_out = x_mid + act·Wdᵀ
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops.h"
#include "model_internal.h"

#define W model_weight_fmt
#define G model_grad_fmt
#define Z(n) arena_floats(A, (size_t)(n))

int32_t *text_blocks(const ModelInput *in, Arena *A, int *nseq) {
    int B = in->B ? in->B : 1;
    *nseq = in->cu_seqlens ? in->nseq : B;
    int32_t *cu = arena_bytes(A, (size_t)(*nseq + 1) * sizeof(int32_t));
    for (int s = 0; s <= *nseq; s++) cu[s] = in->cu_seqlens ? in->cu_seqlens[s] : s * in->T;
    return cu;
}

void text_forward(const Model *m, Arena *A, const ModelInput *in, const float *image_embeds, float *logits, TextTrace *tr) {
    const TextConfig *c = &m->cfg.text;
    int T = (in->B ? in->B : 1) * in->T, H = c->hidden, I = c->intermediate, nq = c->heads, nkv = c->kv_heads, hd = c->head_dim;
    size_t Q = (size_t)nq * hd, KV = (size_t)nkv * hd;
    float eps = (float)c->rms_eps;
    memset(tr, 0, sizeof *tr);
    tr->T = T;
    tr->cu = text_blocks(in, A, &tr->nseq);
    tr->ids = arena_bytes(A, (size_t)T * sizeof(int32_t));
    memcpy(tr->ids, in->ids, (size_t)T * sizeof(int32_t));
    float *x = Z((size_t)T * H);
    embedding_forward(x, in->ids, W(m, "model.embed_tokens.weight", 0), T, H);
    for (int t = 0, j = 0; t < T; t++)  // image pads take the merger outputs in order
        if (m->cfg.vision.present && in->ids[t] == m->cfg.image_token_id) memcpy(x + (size_t)t * H, image_embeds + (size_t)(j++) * H, (size_t)H * sizeof(float));
    tr->ang = Z((size_t)T * hd / 2);
    rope_angles_1d(tr->ang, tr->cu, tr->nseq, hd, c->rope_theta);
    tr->L = arena_bytes(A, (size_t)c->layers * sizeof(LayerActs));
    float *g = Z((size_t)T * I), *u = Z((size_t)T * I), *o = Z((size_t)T * H);
    for (int l = 0; l < c->layers; l++) {
        LayerActs *a = &tr->L[l];
        a->x_in = x;
        a->rstd1 = Z(T); a->h1 = Z((size_t)T * H);
        a->q = Z(T * Q); a->k = Z(T * KV); a->v = Z(T * KV);
        a->qrstd = Z((size_t)T * nq); a->krstd = Z((size_t)T * nkv);
        a->qr = Z(T * Q); a->kr = Z(T * KV); a->att = Z(T * Q); a->lse = Z((size_t)T * nq);
        a->x_mid = Z((size_t)T * H); a->rstd2 = Z(T); a->h2 = Z((size_t)T * H);
        a->gu = Z((size_t)T * 2 * I); a->act = Z((size_t)T * I);
        rmsnorm_forward(a->h1, a->rstd1, x, W(m, "model.layers.%d.input_layernorm.weight", l), T, H, eps);
        matmul_forward(a->q, a->h1, W(m, "model.layers.%d.self_attn.q_proj.weight", l), NULL, T, H, (int)Q);
        matmul_forward(a->k, a->h1, W(m, "model.layers.%d.self_attn.k_proj.weight", l), NULL, T, H, (int)KV);
        matmul_forward(a->v, a->h1, W(m, "model.layers.%d.self_attn.v_proj.weight", l), NULL, T, H, (int)KV);
        // QK-norm per head over head_dim, before RoPE
        rmsnorm_forward(a->qr, a->qrstd, a->q, W(m, "model.layers.%d.self_attn.q_norm.weight", l), T * nq, hd, eps);
        rmsnorm_forward(a->kr, a->krstd, a->k, W(m, "model.layers.%d.self_attn.k_norm.weight", l), T * nkv, hd, eps);
        rope_forward(a->qr, tr->ang, T, nq, hd);
        rope_forward(a->kr, tr->ang, T, nkv, hd);
        attention_forward(a->att, a->lse, a->qr, a->kr, a->v, tr->cu, tr->nseq, nq, nkv, hd, 1);
        matmul_forward(o, a->att, W(m, "model.layers.%d.self_attn.o_proj.weight", l), NULL, T, (int)Q, H);
        for (size_t i = 0; i < (size_t)T * H; i++) a->x_mid[i] = x[i] + o[i];
        rmsnorm_forward(a->h2, a->rstd2, a->x_mid, W(m, "model.layers.%d.post_attention_layernorm.weight", l), T, H, eps);
        matmul_forward(g, a->h2, W(m, "model.layers.%d.mlp.gate_proj.weight", l), NULL, T, H, I);
        matmul_forward(u, a->h2, W(m, "model.layers.%d.mlp.up_proj.weight", l), NULL, T, H, I);
        for (int t = 0; t < T; t++) {  // [gate | up] rows for swiglu
            memcpy(a->gu + (size_t)t * 2 * I, g + (size_t)t * I, (size_t)I * sizeof(float));
            memcpy(a->gu + (size_t)t * 2 * I + I, u + (size_t)t * I, (size_t)I * sizeof(float));
        }
        swiglu_forward(a->act, a->gu, T, I);
        matmul_forward(o, a->act, W(m, "model.layers.%d.mlp.down_proj.weight", l), NULL, T, I, H);
        x = Z((size_t)T * H);  // the next layer's input; this layer keeps its own
        for (size_t i = 0; i < (size_t)T * H; i++) x[i] = a->x_mid[i] + o[i];
    }
    tr->x_final = x;
    tr->rstdf = Z(T);
    tr->hf = Z((size_t)T * H);
    rmsnorm_forward(tr->hf, tr->rstdf, x, W(m, "model.norm.weight", 0), T, H, eps);
    const float *head = model_weight(m, "lm_head.weight");
    matmul_forward(logits, tr->hf, head ? head : W(m, "model.embed_tokens.weight", 0), NULL, T, H, c->vocab);
}

// The lowest decoder layer the backward has to reach: 0 when the embeddings or the image embeddings
// need a gradient, else the lowest layer with a trainable tensor (layers below it are skipped);
// c->layers when no layer trains.
static int lowest_layer(const Model *m, float **grads, const float *dembeds) {
    if (dembeds || model_grad_fmt(m, grads, "model.embed_tokens.weight", 0)) return 0;
    for (int i = 0; grads && i < m->np; i++)
        if (grads[i] && m->ps[i].part == PART_TEXT && m->ps[i].layer >= 0) return m->ps[i].layer;  // table order: layers ascend
    return m->cfg.text.layers;
}

int text_backward(const Model *m, Arena *A, const TextTrace *tr, const float *dlogits, float **grads, float *dembeds) {
    const TextConfig *c = &m->cfg.text;
    int T = tr->T, H = c->hidden, I = c->intermediate, nq = c->heads, nkv = c->kv_heads, hd = c->head_dim;
    size_t Q = (size_t)nq * hd, KV = (size_t)nkv * hd;
    int tied = model_weight(m, "lm_head.weight") == NULL;
    const char *head = tied ? "model.embed_tokens.weight" : "lm_head.weight";
    int stop = lowest_layer(m, grads, dembeds);
    float *dnorm = G(m, grads, "model.norm.weight", 0);
    int below = stop < c->layers || dnorm;  // does anything under the head need its input gradient?
    float *dh = Z((size_t)T * H), *dx = Z((size_t)T * H);
    matmul_backward(below ? dh : NULL, G(m, grads, head, 0), NULL, dlogits, tr->hf, W(m, head, 0), T, H, c->vocab);
    if (!below) return 0;
    rmsnorm_backward(stop < c->layers ? dx : NULL, dnorm, dh, tr->x_final, W(m, "model.norm.weight", 0), tr->rstdf, T, H);
    float *dact = Z((size_t)T * I), *dgu = Z((size_t)T * 2 * I), *dg = Z((size_t)T * I), *du = Z((size_t)T * I),
          *datt = Z(T * Q), *dqr = Z(T * Q), *dkr = Z(T * KV), *dv = Z(T * KV), *dq = Z(T * Q), *dk = Z(T * KV);
    for (int l = c->layers - 1; l >= stop; l--) {
        const LayerActs *a = &tr->L[l];
        // MLP: x_out = x_mid + act·Wdᵀ (dx is d x_out and becomes d x_mid)
        memset(dact, 0, (size_t)T * I * sizeof(float));
        matmul_backward(dact, G(m, grads, "model.layers.%d.mlp.down_proj.weight", l), NULL, dx, a->act,
                        W(m, "model.layers.%d.mlp.down_proj.weight", l), T, I, H);
        memset(dgu, 0, (size_t)T * 2 * I * sizeof(float));
        swiglu_backward(dgu, dact, a->gu, T, I);
        for (int t = 0; t < T; t++) {
            memcpy(dg + (size_t)t * I, dgu + (size_t)t * 2 * I, (size_t)I * sizeof(float));
            memcpy(du + (size_t)t * I, dgu + (size_t)t * 2 * I + I, (size_t)I * sizeof(float));
        }
        memset(dh, 0, (size_t)T * H * sizeof(float));
        matmul_backward(dh, G(m, grads, "model.layers.%d.mlp.gate_proj.weight", l), NULL, dg, a->h2,
                        W(m, "model.layers.%d.mlp.gate_proj.weight", l), T, H, I);
        matmul_backward(dh, G(m, grads, "model.layers.%d.mlp.up_proj.weight", l), NULL, du, a->h2,
                        W(m, "model.layers.%d.mlp.up_proj.weight", l), T, H, I);
        rmsnorm_backward(dx, G(m, grads, "model.layers.%d.post_attention_layernorm.weight", l), dh, a->x_mid,
                         W(m, "model.layers.%d.post_attention_layernorm.weight", l), a->rstd2, T, H);
        // attention: x_mid = x_in + att·Woᵀ (dx becomes d x_in)
        memset(datt, 0, T * Q * sizeof(float));
        matmul_backward(datt, G(m, grads, "model.layers.%d.self_attn.o_proj.weight", l), NULL, dx, a->att,
                        W(m, "model.layers.%d.self_attn.o_proj.weight", l), T, (int)Q, H);
        memset(dqr, 0, T * Q * sizeof(float)); memset(dkr, 0, T * KV * sizeof(float)); memset(dv, 0, T * KV * sizeof(float));
        attention_backward(dqr, dkr, dv, datt, a->att, a->lse, a->qr, a->kr, a->v, tr->cu, tr->nseq, nq, nkv, hd, 1);
        rope_backward(dqr, tr->ang, T, nq, hd);
        rope_backward(dkr, tr->ang, T, nkv, hd);
        memset(dq, 0, T * Q * sizeof(float)); memset(dk, 0, T * KV * sizeof(float));
        rmsnorm_backward(dq, G(m, grads, "model.layers.%d.self_attn.q_norm.weight", l), dqr, a->q,
                         W(m, "model.layers.%d.self_attn.q_norm.weight", l), a->qrstd, T * nq, hd);
        rmsnorm_backward(dk, G(m, grads, "model.layers.%d.self_attn.k_norm.weight", l), dkr, a->k,
                         W(m, "model.layers.%d.self_attn.k_norm.weight", l), a->krstd, T * nkv, hd);
        memset(dh, 0, (size_t)T * H * sizeof(float));
        matmul_backward(dh, G(m, grads, "model.layers.%d.self_attn.q_proj.weight", l), NULL, dq, a->h1,
                        W(m, "model.layers.%d.self_attn.q_proj.weight", l), T, H, (int)Q);
        matmul_backward(dh, G(m, grads, "model.layers.%d.self_attn.k_proj.weight", l), NULL, dk, a->h1,
                        W(m, "model.layers.%d.self_attn.k_proj.weight", l), T, H, (int)KV);
        matmul_backward(dh, G(m, grads, "model.layers.%d.self_attn.v_proj.weight", l), NULL, dv, a->h1,
                        W(m, "model.layers.%d.self_attn.v_proj.weight", l), T, H, (int)KV);
        rmsnorm_backward(dx, G(m, grads, "model.layers.%d.input_layernorm.weight", l), dh, a->x_in,
                         W(m, "model.layers.%d.input_layernorm.weight", l), a->rstd1, T, H);
    }
    if (stop > 0) return c->layers - stop;
    // embedding rows, or the image embeddings where the image pads were
    float *demb = G(m, grads, "model.embed_tokens.weight", 0), *drows = Z((size_t)T * H);
    int32_t *rows = arena_bytes(A, (size_t)T * sizeof(int32_t));
    int n = 0;
    for (int t = 0, j = 0; t < T; t++) {
        if (m->cfg.vision.present && tr->ids[t] == m->cfg.image_token_id) {
            if (dembeds) memcpy(dembeds + (size_t)(j) * H, dx + (size_t)t * H, (size_t)H * sizeof(float));
            j++;
        } else {
            memcpy(drows + (size_t)n * H, dx + (size_t)t * H, (size_t)H * sizeof(float));
            rows[n++] = tr->ids[t];
        }
    }
    if (demb) embedding_backward(demb, drows, rows, n, H);
    return c->layers;
}
