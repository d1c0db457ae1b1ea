// model_text.c: the Qwen3 decoder on a backend (kernels/backend.h), forward (keeping what the backward
// needs) and backward.
//   per layer:  h1 = RMSNorm(x_in); q,k,v = h1·W; qr,kr = RoPE(RMSNorm_head(q,k)); att = attn(qr,kr,v)
//               x_mid = x_in + att·Woᵀ;  h2 = RMSNorm(x_mid); act = silu(h2·Wgᵀ)·(h2·Wuᵀ)
//               x_out = x_mid + act·Wdᵀ
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops.h"
#include "model_internal.h"

#define W model_weight_fmt
#define G model_grad_fmt
#define Z(n) ((Act *)arena_bytes(A, (size_t)(n) * be->esize))  // activations in the backend's storage, zeroed
#define U(n) ((Act *)arena_uninit(A, (size_t)(n) * be->esize))  // the same, for outputs written whole
#define UF(n) ((float *)arena_uninit(A, (size_t)(n) * sizeof(float)))  // fp32 statistics, written whole
#define AT_(x, i) AT(be, x, i)

int32_t *text_blocks(const ModelInput *in, Arena *H, int *nseq) {
    int B = in->B ? in->B : 1;
    *nseq = in->cu_seqlens ? in->nseq : B;
    int32_t *cu = arena_bytes(H, (size_t)(*nseq + 1) * sizeof(int32_t));
    for (int s = 0; s <= *nseq; s++) cu[s] = in->cu_seqlens ? in->cu_seqlens[s] : s * in->T;
    return cu;
}

// One decoder layer's activations (all but x_in) from the arena.
static void layer_acts_alloc(const Model *m, const TextTrace *tr, Arena *A, int T, LayerActs *a) {
    const Backend *be = m->be;
    const TextConfig *c = &m->cfg.text;
    size_t H = c->hidden, I = c->intermediate, Q = (size_t)c->heads * c->head_dim, KV = (size_t)c->kv_heads * c->head_dim;
    a->rstd1 = UF(T); a->h1 = U(T * H);
    a->q = U(T * Q); a->k = U(T * KV); a->v = U(T * KV);
    a->qrstd = UF((size_t)T * c->heads); a->krstd = UF((size_t)T * c->kv_heads);
    a->qr = U(T * Q); a->kr = U(T * KV); a->att = U(T * Q); a->lse = UF((size_t)T * c->heads);
    a->x_mid = res_alloc(&tr->res, A, T * H); a->rstd2 = UF(T); a->h2 = U(T * H);
    a->gu = U(T * 2 * I); a->act = U(T * I);
}

// Whether gate_proj and up_proj sit back to back in the weights (and in the gradients: both absent, or
// both present and adjacent), so that [gate; up] is one [2I, H] matrix whose product gives the
// [gate | up] rows swiglu reads, with no copies. The flat layouts make it so whenever I·H is a
// multiple of their alignment; the check keeps the graph correct for any other layout.
// grads NULL: the weights alone (the forward).
static int gate_up_fused(const Model *m, float **grads, int l) {
    size_t n = (size_t)m->cfg.text.intermediate * m->cfg.text.hidden;
    if (AT(m->be, W(m, "model.layers.%d.mlp.gate_proj.weight", l), n) != W(m, "model.layers.%d.mlp.up_proj.weight", l)) return 0;
    const float *dg = G(m, grads, "model.layers.%d.mlp.gate_proj.weight", l), *du = G(m, grads, "model.layers.%d.mlp.up_proj.weight", l);
    return (!dg && !du) || (dg && du && dg + n == du);
}
static int gate_up_fused_from(const Model *m, float **grads, int first) {  // layers first .. last all fused
    for (int l = first; l < m->cfg.text.layers; l++) if (!gate_up_fused(m, grads, l)) return 0;
    return 1;
}

// Layer l from a->x_in into a's activations; x_out (NULL: not needed, as when recomputing) gets its output.
static void layer_forward(const Model *m, const TextTrace *tr, int l, LayerActs *a, Res *x_out) {
    m->be->wait_mark(1 + m->cfg.vision.depth + l);  // layer l's weights updated (model_weight_mark)
    const Backend *be = m->be;
    const TextConfig *c = &m->cfg.text;
    int T = tr->T, H = c->hidden, I = c->intermediate, nq = c->heads, nkv = c->kv_heads, hd = c->head_dim;
    int Q = nq * hd, KV = nkv * hd;
    float eps = (float)c->rms_eps;
    Act *g = tr->g, *u = tr->u, *o = tr->o;
    const Resid *r = &tr->res;
    res_rmsnorm(r, a->h1, a->rstd1, a->x_in, W(m, "model.layers.%d.input_layernorm.weight", l), T, H, eps);
    be->matmul_forward(a->q, a->h1, W(m, "model.layers.%d.self_attn.q_proj.weight", l), NULL, T, H, Q);
    be->matmul_forward(a->k, a->h1, W(m, "model.layers.%d.self_attn.k_proj.weight", l), NULL, T, H, KV);
    be->matmul_forward(a->v, a->h1, W(m, "model.layers.%d.self_attn.v_proj.weight", l), NULL, T, H, KV);
    // QK-norm per head over head_dim, then RoPE (one pass)
    be->rmsnorm_rope_forward(a->qr, a->qrstd, a->q, W(m, "model.layers.%d.self_attn.q_norm.weight", l), tr->ang, T, nq, hd, eps);
    be->rmsnorm_rope_forward(a->kr, a->krstd, a->k, W(m, "model.layers.%d.self_attn.k_norm.weight", l), tr->ang, T, nkv, hd, eps);
    be->attention_forward(a->att, a->lse, a->qr, a->kr, a->v, tr->cu, tr->nseq, T, tr->max_len, nq, nkv, hd, 1);
    be->matmul_forward(o, a->att, W(m, "model.layers.%d.self_attn.o_proj.weight", l), NULL, T, Q, H);
    res_add_rmsnorm(r, a->x_mid, a->h2, a->rstd2, a->x_in, o, W(m, "model.layers.%d.post_attention_layernorm.weight", l), T, H,
                    eps);  // x_mid = x_in + attention, h2 = RMSNorm(x_mid)
    const Act *wg = W(m, "model.layers.%d.mlp.gate_proj.weight", l), *wu = W(m, "model.layers.%d.mlp.up_proj.weight", l);
    if (gate_up_fused(m, NULL, l)) {
        be->matmul_forward(a->gu, a->h2, wg, NULL, T, H, 2 * I);  // [gate; up] is one [2I, H] matrix: rows [gate | up]
    } else {
        be->matmul_forward(g, a->h2, wg, NULL, T, H, I);
        be->matmul_forward(u, a->h2, wu, NULL, T, H, I);
        be->copy2d(a->gu, 2 * (size_t)I, g, I, T, I);  // [gate | up] rows for swiglu
        be->copy2d(AT_(a->gu, I), 2 * (size_t)I, u, I, T, I);
    }
    be->swiglu_forward(a->act, a->gu, T, I);
    if (!x_out) return;
    be->matmul_forward(o, a->act, W(m, "model.layers.%d.mlp.down_proj.weight", l), NULL, T, I, H);
    res_add(r, x_out, a->x_mid, o, (size_t)T * H);
}

void text_forward(const Model *m, ModelWork *w, const ModelInput *in, const Act *image_embeds, const int32_t *head_rows,
                  int nhead, Act *logits, TextTrace *tr) {
    const Backend *be = m->be;
    Arena *A = &w->arena, *Hs = &w->host;
    const TextConfig *c = &m->cfg.text;
    int T = (in->B ? in->B : 1) * in->T, H = c->hidden, I = c->intermediate, hd = c->head_dim;
    float eps = (float)c->rms_eps;
    memset(tr, 0, sizeof *tr);
    tr->T = T;
    tr->res = model_resid(m, w);
    // host tables: attention blocks, RoPE angles, where the image pads are
    int32_t *cu = text_blocks(in, Hs, &tr->nseq);
    tr->max_len = 1;
    for (int s = 0; s < tr->nseq; s++) if (cu[s + 1] - cu[s] > tr->max_len) tr->max_len = cu[s + 1] - cu[s];
    float *ang = arena_floats(Hs, (size_t)T * hd / 2);
    rope_angles_1d(ang, cu, tr->nseq, hd, c->rope_theta);
    int32_t *pad = arena_bytes(Hs, (size_t)T * sizeof(int32_t)), *text = arena_bytes(Hs, (size_t)T * sizeof(int32_t)),
            *text_ids = arena_bytes(Hs, (size_t)T * sizeof(int32_t));
    for (int t = 0; t < T; t++) {
        if (m->cfg.vision.present && in->ids[t] == m->cfg.image_token_id) pad[tr->npad++] = t;
        else { text[tr->ntext] = t; text_ids[tr->ntext++] = in->ids[t]; }
    }
    tr->cu = model_upload(m, A, cu, (size_t)(tr->nseq + 1) * sizeof(int32_t));
    tr->ids = model_upload(m, A, in->ids, (size_t)T * sizeof(int32_t));
    tr->ang = model_upload(m, A, ang, (size_t)T * hd / 2 * sizeof(float));
    tr->pad_rows = model_upload(m, A, pad, (size_t)(tr->npad ? tr->npad : 1) * sizeof(int32_t));
    tr->text_rows = model_upload(m, A, text, (size_t)(tr->ntext ? tr->ntext : 1) * sizeof(int32_t));
    tr->text_ids = text_ids;  // host arena: valid until the next step

    Act *emb = U((size_t)T * H);
    be->embedding_forward(emb, tr->ids, W(m, "model.embed_tokens.weight", 0), T, H);
    if (tr->npad) be->scatter_rows(emb, image_embeds, tr->pad_rows, tr->npad, H);  // image pads take the merger outputs in order
    Res *x = res_of(&tr->res, A, emb, (size_t)T * H);
    tr->L = arena_bytes(Hs, (size_t)c->layers * sizeof(LayerActs));
    tr->o = U((size_t)T * H);
    if (!gate_up_fused_from(m, NULL, 0)) {  // separate gate and up products where they are not fused
        tr->g = U((size_t)T * I);
        tr->u = U((size_t)T * I);
    }
    // The recomputed layers (the first w->recompute) share one set of activations: the backward runs
    // each one's forward again from its kept input just before its backward.
    tr->recompute = w->recompute < c->layers ? w->recompute : c->layers;
    if (tr->recompute > 0) layer_acts_alloc(m, tr, A, T, &tr->shared);
    for (int l = 0; l < c->layers; l++) {
        LayerActs *a = &tr->L[l];
        if (l < tr->recompute) *a = tr->shared;
        else layer_acts_alloc(m, tr, A, T, a);
        a->x_in = x;
        x = res_alloc(&tr->res, A, (size_t)T * H);  // the next layer's input; this layer keeps its own
        layer_forward(m, tr, l, a, x);
    }
    tr->x_final = x;
    tr->rstdf = UF(T);
    tr->hf = U((size_t)T * H);
    res_rmsnorm(&tr->res, tr->hf, tr->rstdf, x, W(m, "model.norm.weight", 0), T, H, eps);
    tr->nhead = T;
    tr->hhead = tr->hf;
    if (head_rows) {  // the head over some positions: their rows of hf gathered first
        tr->nhead = nhead;
        tr->head_rows = model_upload(m, A, head_rows, (size_t)(nhead ? nhead : 1) * sizeof(int32_t));
        tr->hhead = U((size_t)nhead * H);
        be->gather_rows(tr->hhead, tr->hf, tr->head_rows, nhead, H);
    }
    int head = model_param_id(m, "lm_head.weight");
    be->matmul_forward(logits, tr->hhead, head >= 0 ? m->wb[head] : W(m, "model.embed_tokens.weight", 0), NULL, tr->nhead, H,
                       c->vocab);
}

// The lowest decoder layer the backward has to reach: 0 when the embeddings or the image embeddings
// need a gradient, else the lowest layer with a trainable tensor (layers below it are skipped);
// c->layers when no layer trains.
static int lowest_layer(const Model *m, float **grads, const Act *dembeds) {
    if (dembeds || model_grad_fmt(m, grads, "model.embed_tokens.weight", 0)) return 0;
    for (int i = 0; grads && i < m->np; i++)
        if (grads[i] && m->ps[i].part == PART_TEXT && m->ps[i].layer >= 0) return m->ps[i].layer;  // table order: layers ascend
    return m->cfg.text.layers;
}

int text_backward(const Model *m, ModelWork *w, const TextTrace *tr, const Act *dlogits, float **grads, Act *dembeds) {
    const Backend *be = m->be;
    Arena *A = &w->arena;
    const TextConfig *c = &m->cfg.text;
    int T = tr->T, H = c->hidden, I = c->intermediate, nq = c->heads, nkv = c->kv_heads, hd = c->head_dim;
    size_t Q = (size_t)nq * hd, KV = (size_t)nkv * hd;
    int tied = model_param_id(m, "lm_head.weight") < 0;
    const char *head = tied ? "model.embed_tokens.weight" : "lm_head.weight";
    int stop = lowest_layer(m, grads, dembeds);
    float *dnorm = G(m, grads, "model.norm.weight", 0);
    int below = stop < c->layers || dnorm;  // does anything under the head need its input gradient?
    const Resid *r = &tr->res;
    // dh: the head's input gradient, zero at the rows the head skipped (then scratch); dxs: dx rounded, for the
    // products (fp32 stream)
    Act *dh = tr->head_rows ? Z((size_t)T * H) : U((size_t)T * H), *dxs = r->f32 ? U((size_t)T * H) : NULL;
    const Act *dxo;  // dx's rows as the products read them (dx itself, or dxs)
    Res *dx = res_zeros(r, A, (size_t)T * H);
    // the head: dlogits [nhead, V] -> dW and the gradient of its rows of hf (zero at the positions it skipped;
    // rows that pad head_rows repeat a skipped position with a zero gradient row, identical bits)
    Act *dhead = tr->head_rows && below ? U((size_t)tr->nhead * H) : dh;
    model_matmul_backward(m, w, grads, below ? dhead : NULL, 1, head, NULL, 0, dlogits, tr->hhead, tr->nhead, H, c->vocab);
    if (!below) return 0;
    if (tr->head_rows) be->scatter_rows(dh, dhead, tr->head_rows, tr->nhead, H);
    dnorm = model_grad_acc(m, w, grads, "model.norm.weight", 0);
    dxo = res_rmsnorm_backward(r, stop < c->layers ? dx : NULL, dxs, dnorm, dh, tr->x_final, W(m, "model.norm.weight", 0), tr->rstdf, T, H);
    model_grads_final(m, w, "model.norm.weight", 0);  // and the head above it
    Act *dg = NULL, *du = NULL;
    if (!gate_up_fused_from(m, grads, stop)) {
        dg = U((size_t)T * I);
        du = U((size_t)T * I);
    }
    // all written whole, none zeroed: dgu by the SwiGLU backward, dact, datt and dh by their first product
    // (MM_SET_DINP), dqr, dkr and dv by the attention backward, dq and dk by the QK-norm backward
    Act *dact = U((size_t)T * I), *dgu = U((size_t)T * 2 * I),
        *datt = U(T * Q), *dqr = U(T * Q), *dkr = U(T * KV), *dv = U(T * KV), *dq = U(T * Q), *dk = U(T * KV);
    for (int l = c->layers - 1; l >= stop; l--) {
        LayerActs *a = &tr->L[l];
        if (l < tr->recompute) layer_forward(m, tr, l, a, NULL);  // its activations again, into the shared set
        // MLP: x_out = x_mid + act·Wdᵀ (dx is d x_out and becomes d x_mid)
        model_matmul_backward(m, w, grads, dact, 1, "model.layers.%d.mlp.down_proj.weight", NULL, l, dxo, a->act, T, I, H);
        be->swiglu_backward(dgu, dact, a->gu, T, I);  // (overwrites dgu)
        if (gate_up_fused(m, grads, l)) {  // one product for both (weights and gradients back to back)
            model_matmul_backward(m, w, grads, dh, 1, "model.layers.%d.mlp.gate_proj.weight", NULL, l, dgu, a->h2, T, H, 2 * I);
        } else {
            be->copy2d(dg, I, dgu, 2 * (size_t)I, T, I);
            be->copy2d(du, I, AT_(dgu, I), 2 * (size_t)I, T, I);
            model_matmul_backward(m, w, grads, dh, 1, "model.layers.%d.mlp.gate_proj.weight", NULL, l, dg, a->h2, T, H, I);
            model_matmul_backward(m, w, grads, dh, 0, "model.layers.%d.mlp.up_proj.weight", NULL, l, du, a->h2, T, H, I);
        }
        dxo = res_rmsnorm_backward(r, dx, dxs, model_grad_acc(m, w, grads, "model.layers.%d.post_attention_layernorm.weight", l), dh,
                                   a->x_mid, W(m, "model.layers.%d.post_attention_layernorm.weight", l), a->rstd2, T, H);
        // attention: x_mid = x_in + att·Woᵀ (dx becomes d x_in)
        model_matmul_backward(m, w, grads, datt, 1, "model.layers.%d.self_attn.o_proj.weight", NULL, l, dxo, a->att, T, (int)Q, H);
        be->attention_backward(dqr, dkr, dv, datt, a->att, a->lse, a->qr, a->kr, a->v, tr->cu, tr->nseq, T, tr->max_len, nq, nkv, hd, 1);
        // QK-norm and RoPE backwards in one pass (dq, dk overwritten; dqr, dkr spent)
        be->rmsnorm_rope_backward(dq, model_grad_acc(m, w, grads, "model.layers.%d.self_attn.q_norm.weight", l), dqr, a->q,
                                  W(m, "model.layers.%d.self_attn.q_norm.weight", l), a->qrstd, tr->ang, T, nq, hd);
        be->rmsnorm_rope_backward(dk, model_grad_acc(m, w, grads, "model.layers.%d.self_attn.k_norm.weight", l), dkr, a->k,
                                  W(m, "model.layers.%d.self_attn.k_norm.weight", l), a->krstd, tr->ang, T, nkv, hd);
        model_matmul_backward(m, w, grads, dh, 1, "model.layers.%d.self_attn.q_proj.weight", NULL, l, dq, a->h1, T, H, (int)Q);
        model_matmul_backward(m, w, grads, dh, 0, "model.layers.%d.self_attn.k_proj.weight", NULL, l, dk, a->h1, T, H, (int)KV);
        model_matmul_backward(m, w, grads, dh, 0, "model.layers.%d.self_attn.v_proj.weight", NULL, l, dv, a->h1, T, H, (int)KV);
        dxo = res_rmsnorm_backward(r, dx, dxs, model_grad_acc(m, w, grads, "model.layers.%d.input_layernorm.weight", l), dh, a->x_in,
                                   W(m, "model.layers.%d.input_layernorm.weight", l), a->rstd1, T, H);
        model_grads_final(m, w, "model.layers.%d.input_layernorm.weight", l);  // layer l's first tensor
    }
    if (stop > 0) return c->layers - stop;
    // embedding rows, or the image embeddings where the image pads were
    float *demb = model_grad_acc(m, w, grads, "model.embed_tokens.weight", 0);
    if (dembeds && tr->npad) be->gather_rows(dembeds, dxo, tr->pad_rows, tr->npad, H);
    if (demb && tr->ntext) {
        Act *drows = U((size_t)tr->ntext * H);
        be->gather_rows(drows, dxo, tr->text_rows, tr->ntext, H);
        be->embedding_backward(demb, drows, tr->text_ids, tr->ntext, H);
    }
    model_grads_final(m, w, "model.embed_tokens.weight", 0);
    return c->layers;
}
