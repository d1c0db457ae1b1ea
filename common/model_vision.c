// model_vision.c: the RICE-ViT vision tower and the 2×2 merger on a backend, forward (keeping
// activations) and backward (spec/model.md §2-§3).
//   x0 = [CLS_i, patches_i·Wpᵀ]_i;  x = LN_pre(x0)
//   per block: h1 = LN1(x_in); q,k,v = h1·Wqkvᵀ + b; qr,kr = RoPE2D(q,k); att = attn(qr,kr,v) per image
//              x_mid = x_in + att·Wprojᵀ + b; h2 = LN2(x_mid); x_out = x_mid + gelu(h2·Wfc1ᵀ + b)·Wfc2ᵀ + b
//   hidden = x without CLS rows; embeds = gelu(LN_q(hidden).view(·, 4D)·W0ᵀ + b0)·W2ᵀ + b2
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops.h"
#include "model_internal.h"

#define W model_weight_fmt
#define G model_grad_fmt
#define Z(n) ((Act *)arena_bytes(A, (size_t)(n) * be->esize))  // zeroed
#define U(n) ((Act *)arena_uninit(A, (size_t)(n) * be->esize))  // for outputs written whole
#define UF(n) ((float *)arena_uninit(A, (size_t)(n) * sizeof(float)))
#define AT_(x, i) AT(be, x, i)

void vision_forward(const Model *m, ModelWork *w, const ModelInput *in, Act *hidden_out, Act *embeds_out, VisionTrace *tr) {
    const Backend *be = m->be;
    Arena *A = &w->arena, *Hs = &w->host;
    const VisionConfig *v = &m->cfg.vision;
    int D = v->hidden, F = v->intermediate, nh = v->heads, hd = D / nh, P = vision_patch_dim(v);
    int64_t S = in->rows + in->nimg;  // one CLS per image
    memset(tr, 0, sizeof *tr);
    tr->S = S;
    tr->rows = in->rows;
    tr->nimg = in->nimg;
    // host tables: where each image's CLS and patches sit, and every row's 2-D RoPE angles
    int32_t *cu = arena_bytes(Hs, (size_t)(in->nimg + 1) * sizeof(int32_t)), *cls = arena_bytes(Hs, (size_t)in->nimg * sizeof(int32_t)),
            *patch = arena_bytes(Hs, (size_t)(in->rows ? in->rows : 1) * sizeof(int32_t));
    float *ang = arena_floats(Hs, (size_t)S * hd / 2);
    const float *cls_ang = m->w[model_param_id(m, "visual.class_pos_emb")];  // host fp32 copy
    int64_t src = 0, dst = 0;
    int quarter = hd / 4;
    float *inv = arena_floats(Hs, (size_t)quarter);  // 2-D RoPE frequencies theta^(−2k/(hd/2)), k < hd/4
    for (int k = 0; k < quarter; k++) inv[k] = (float)(1.0 / pow(v->rope_theta, (double)(2 * k) / (hd / 2)));
    cu[0] = 0;
    tr->max_len = 1;
    for (int i = 0; i < in->nimg; i++) {
        int gh = in->grid[3 * i + 1], gw = in->grid[3 * i + 2];
        cls[i] = (int32_t)dst;
        memcpy(ang + dst * hd / 2, cls_ang, (size_t)(hd / 2) * sizeof(float));  // learned CLS angles
        dst++;
        for (int r = 0; r < gh * gw; r++, src++, dst++) {
            patch[src] = (int32_t)dst;
            // row r in 2×2-block order: ((bh·gw/2 + bw)·2 + dy)·2 + dx
            int dx = r % 2, dy = (r / 2) % 2, blk = r / 4, bw = blk % (gw / 2), bh = blk / (gw / 2);
            int py = 2 * bh + dy, px = 2 * bw + dx;
            for (int k = 0; k < quarter; k++) {
                ang[dst * hd / 2 + k] = (float)py * inv[k];
                ang[dst * hd / 2 + quarter + k] = (float)px * inv[k];
            }
        }
        cu[i + 1] = (int32_t)dst;
        if (gh * gw + 1 > tr->max_len) tr->max_len = gh * gw + 1;
    }
    tr->cu = model_upload(m, A, cu, (size_t)(in->nimg + 1) * sizeof(int32_t));
    tr->cls_rows = model_upload(m, A, cls, (size_t)in->nimg * sizeof(int32_t));
    tr->patch_rows = model_upload(m, A, patch, (size_t)(in->rows ? in->rows : 1) * sizeof(int32_t));
    tr->ang = model_upload(m, A, ang, (size_t)S * hd / 2 * sizeof(float));
    Act *px = U((size_t)in->rows * P);
    be->from_f32(px, in->pixels, (size_t)in->rows * P);
    tr->pixels = px;

    Act *pe = U((size_t)in->rows * D), *x = U((size_t)S * D);
    be->matmul_forward(pe, px, W(m, "visual.patch_embed.proj.weight", 0), NULL, (int)in->rows, P, D);
    be->scatter_rows(x, pe, tr->patch_rows, (int)in->rows, D);
    for (int i = 0; i < in->nimg; i++) be->copy2d(AT_(x, (size_t)cls[i] * D), D, W(m, "visual.class_embedding", 0), D, 1, D);
    float eps = (float)v->layer_norm_eps;
    tr->x0 = x;
    tr->pre_mean = UF(S);
    tr->pre_rstd = UF(S);
    tr->res = model_resid(m, w);
    const Resid *r = &tr->res;
    Act *pre = U((size_t)S * D);
    be->layernorm_forward(pre, tr->pre_mean, tr->pre_rstd, tr->x0, W(m, "visual.pre_layernorm.weight", 0), W(m, "visual.pre_layernorm.bias", 0), (int)S, D, eps);
    Res *xr = res_of(r, A, pre, (size_t)S * D);  // the residual stream from here to the last block
    tr->B = arena_bytes(Hs, (size_t)v->depth * sizeof(BlockActs));
    Act *qkv = U((size_t)S * 3 * D), *o = U((size_t)S * D);
    for (int l = 0; l < v->depth; l++) {
        be->wait_mark(1 + l);  // block l's weights updated (model_weight_mark)
        BlockActs *a = &tr->B[l];
        a->x_in = xr;
        a->mean1 = UF(S); a->rstd1 = UF(S); a->h1 = U((size_t)S * D);
        a->v = U((size_t)S * D);
        a->qr = U((size_t)S * D); a->kr = U((size_t)S * D); a->att = U((size_t)S * D); a->lse = UF((size_t)S * nh);
        a->x_mid = res_alloc(r, A, (size_t)S * D); a->mean2 = UF(S); a->rstd2 = UF(S); a->h2 = U((size_t)S * D);
        a->f1 = U((size_t)S * F); a->f1g = U((size_t)S * F);
        res_layernorm(r, a->h1, a->mean1, a->rstd1, xr, W(m, "visual.blocks.%d.norm1.weight", l), W(m, "visual.blocks.%d.norm1.bias", l), (int)S, D, eps);
        be->matmul_forward(qkv, a->h1, W(m, "visual.blocks.%d.attn.qkv.weight", l), W(m, "visual.blocks.%d.attn.qkv.bias", l), (int)S, D, 3 * D);
        be->qkv_split_rope(a->qr, a->kr, a->v, qkv, tr->ang, (int)S, nh, hd);  // output columns [Q | K | V], Q and K rotated
        be->attention_forward(a->att, a->lse, a->qr, a->kr, a->v, tr->cu, in->nimg, (int)S, tr->max_len, nh, nh, hd, 0);  // per image
        be->matmul_forward(o, a->att, W(m, "visual.blocks.%d.attn.proj.weight", l), W(m, "visual.blocks.%d.attn.proj.bias", l), (int)S, D, D);
        res_add_layernorm(r, a->x_mid, a->h2, a->mean2, a->rstd2, xr, o, W(m, "visual.blocks.%d.norm2.weight", l),
                          W(m, "visual.blocks.%d.norm2.bias", l), (int)S, D, eps);  // x_mid = x + attention, h2 = LN(x_mid)
        be->matmul_forward(a->f1, a->h2, W(m, "visual.blocks.%d.mlp.fc1.weight", l), W(m, "visual.blocks.%d.mlp.fc1.bias", l), (int)S, D, F);
        be->gelu_forward(a->f1g, a->f1, (size_t)S * F);
        be->matmul_forward(o, a->f1g, W(m, "visual.blocks.%d.mlp.fc2.weight", l), W(m, "visual.blocks.%d.mlp.fc2.bias", l), (int)S, F, D);
        xr = res_alloc(r, A, (size_t)S * D);
        res_add(r, xr, a->x_mid, o, (size_t)S * D);
    }
    tr->x_last = xr;
    const Act *last = res_stored(r, r->f32 ? U((size_t)S * D) : NULL, xr, (size_t)S * D);
    be->gather_rows(hidden_out, last, tr->patch_rows, (int)in->rows, D);  // drop the CLS rows
    // merger: LayerNorm per row, 4 rows as one, Linear-GELU-Linear
    int64_t R4 = in->rows / 4;
    int M = 4 * D, H = m->cfg.text.hidden;
    tr->hidden = hidden_out;
    tr->ln_mean = UF(in->rows); tr->ln_rstd = UF(in->rows);
    tr->ln = U((size_t)in->rows * D); tr->m1 = U((size_t)R4 * M); tr->m1g = U((size_t)R4 * M);
    be->layernorm_forward(tr->ln, tr->ln_mean, tr->ln_rstd, hidden_out, W(m, "visual.merger.ln_q.weight", 0), W(m, "visual.merger.ln_q.bias", 0), (int)in->rows, D, eps);
    be->matmul_forward(tr->m1, tr->ln, W(m, "visual.merger.mlp.0.weight", 0), W(m, "visual.merger.mlp.0.bias", 0), (int)R4, M, M);
    be->gelu_forward(tr->m1g, tr->m1, (size_t)R4 * M);
    be->matmul_forward(embeds_out, tr->m1g, W(m, "visual.merger.mlp.2.weight", 0), W(m, "visual.merger.mlp.2.bias", 0), (int)R4, M, H);
}

int vision_backward(const Model *m, ModelWork *w, const VisionTrace *tr, const Act *dembeds, float **grads, int tower) {
    const Backend *be = m->be;
    Arena *A = &w->arena;
    const VisionConfig *v = &m->cfg.vision;
    int D = v->hidden, F = v->intermediate, nh = v->heads, hd = D / nh, P = vision_patch_dim(v), H = m->cfg.text.hidden;
    int64_t S = tr->S, R4 = tr->rows / 4;
    int M = 4 * D;
    size_t es = be->esize;
    // merger
    Act *dm1g = Z((size_t)R4 * M), *dm1 = Z((size_t)R4 * M), *dln = Z((size_t)tr->rows * D), *dhid = Z((size_t)tr->rows * D);
    model_matmul_backward(m, w, grads, dm1g, 0, "visual.merger.mlp.2.weight", "visual.merger.mlp.2.bias", 0, dembeds, tr->m1g, (int)R4, M, H);
    be->gelu_backward(dm1, dm1g, tr->m1, (size_t)R4 * M);
    model_matmul_backward(m, w, grads, dln, 0, "visual.merger.mlp.0.weight", "visual.merger.mlp.0.bias", 0, dm1, tr->ln, (int)R4, M, M);
    be->layernorm_backward(tower ? dhid : NULL, model_grad_acc(m, w, grads, "visual.merger.ln_q.weight", 0),
                           model_grad_acc(m, w, grads, "visual.merger.ln_q.bias", 0), dln, tr->hidden,
                           W(m, "visual.merger.ln_q.weight", 0), tr->ln_mean, tr->ln_rstd, (int)tr->rows, D);
    model_grads_final(m, w, "visual.merger.ln_q.weight", 0);
    if (!tower) return 0;
    // the CLS rows get no gradient from the output
    const Resid *r = &tr->res;
    Act *dlast = Z((size_t)S * D), *dxs = r->f32 ? U((size_t)S * D) : NULL;  // dxs: dx rounded, for the products (fp32 stream)
    be->scatter_rows(dlast, dhid, tr->patch_rows, (int)tr->rows, D);
    Res *dx = res_of(r, A, dlast, (size_t)S * D);
    const Act *dxo = dlast;  // dx's rows as the products read them (dlast: dx itself, or its rounded copy; then dxs)
    // all written whole, none zeroed: dqkv, df1 (the GELU backward), df1g, dh and datt (MM_SET_DINP), dqr, dkr
    // and dv (the attention backward)
    Act *df1g = U((size_t)S * F), *df1 = U((size_t)S * F), *dh = U((size_t)S * D), *datt = U((size_t)S * D),
        *dqr = U((size_t)S * D), *dkr = U((size_t)S * D), *dv = U((size_t)S * D), *dqkv = U((size_t)S * 3 * D);
    float *dcls_ang = model_grad_acc(m, w, grads, "visual.class_pos_emb", 0);  // (accumulated over the blocks)
    for (int l = v->depth - 1; l >= 0; l--) {
        const BlockActs *a = &tr->B[l];
        model_matmul_backward(m, w, grads, df1g, 1, "visual.blocks.%d.mlp.fc2.weight", "visual.blocks.%d.mlp.fc2.bias", l,
                              dxo, a->f1g, (int)S, F, D);
        be->gelu_backward(df1, df1g, a->f1, (size_t)S * F);  // (overwrites df1)
        model_matmul_backward(m, w, grads, dh, 1, "visual.blocks.%d.mlp.fc1.weight", "visual.blocks.%d.mlp.fc1.bias", l, df1, a->h2, (int)S,
                              D, F);
        dxo = res_layernorm_backward(r, dx, dxs, model_grad_acc(m, w, grads, "visual.blocks.%d.norm2.weight", l),
                                     model_grad_acc(m, w, grads, "visual.blocks.%d.norm2.bias", l), dh, a->x_mid,
                                     W(m, "visual.blocks.%d.norm2.weight", l), a->mean2, a->rstd2, (int)S, D);
        model_matmul_backward(m, w, grads, datt, 1, "visual.blocks.%d.attn.proj.weight", "visual.blocks.%d.attn.proj.bias", l,
                              dxo, a->att, (int)S, D, D);
        be->attention_backward(dqr, dkr, dv, datt, a->att, a->lse, a->qr, a->kr, a->v, tr->cu, tr->nimg, (int)S, tr->max_len, nh, nh, hd, 0);
        if (dcls_ang) {  // the CLS rows rotate by learned angles: their gradient, before undoing the rotation
            be->rope_angle_grad(dcls_ang, a->qr, dqr, tr->cls_rows, tr->nimg, nh, hd);
            be->rope_angle_grad(dcls_ang, a->kr, dkr, tr->cls_rows, tr->nimg, nh, hd);
        }
        be->qkv_merge_rope_backward(dqkv, dqr, dkr, dv, tr->ang, (int)S, nh, hd);
        model_matmul_backward(m, w, grads, dh, 1, "visual.blocks.%d.attn.qkv.weight", "visual.blocks.%d.attn.qkv.bias", l, dqkv, a->h1,
                              (int)S, D, 3 * D);
        dxo = res_layernorm_backward(r, dx, dxs, model_grad_acc(m, w, grads, "visual.blocks.%d.norm1.weight", l),
                                     model_grad_acc(m, w, grads, "visual.blocks.%d.norm1.bias", l), dh, a->x_in,
                                     W(m, "visual.blocks.%d.norm1.weight", l), a->mean1, a->rstd1, (int)S, D);
        model_grads_final(m, w, "visual.blocks.%d.norm1.weight", l);  // the class_pos_emb gradient is still growing, below
    }
    // pre-LayerNorm, then CLS embeddings and the patch projection
    be->zero(dh, (size_t)S * D * es);
    be->layernorm_backward(dh, model_grad_acc(m, w, grads, "visual.pre_layernorm.weight", 0),
                           model_grad_acc(m, w, grads, "visual.pre_layernorm.bias", 0), dxo, tr->x0,
                           W(m, "visual.pre_layernorm.weight", 0), tr->pre_mean, tr->pre_rstd, (int)S, D);
    float *dcls = model_grad_acc(m, w, grads, "visual.class_embedding", 0);
    if (dcls) be->sum_rows(dcls, dh, tr->cls_rows, tr->nimg, D);
    Act *dpe = U((size_t)tr->rows * D);
    be->gather_rows(dpe, dh, tr->patch_rows, (int)tr->rows, D);
    model_matmul_backward(m, w, grads, NULL, 0, "visual.patch_embed.proj.weight", NULL, 0, dpe, tr->pixels, (int)tr->rows, P, D);
    model_grads_final(m, w, "visual.patch_embed.proj.weight", 0);  // the table's first tensor: all
    return v->depth;
}
