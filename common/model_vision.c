// model_vision.c: the RICE-ViT vision tower and the 2×2 merger, forward (keeping activations) and
// backward (spec/model.md §2-§3).
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
#define Z(n) arena_floats(A, (size_t)(n))

void vision_forward(const Model *m, Arena *A, const ModelInput *in, float *hidden_out, float *embeds_out, VisionTrace *tr) {
    const VisionConfig *v = &m->cfg.vision;
    int D = v->hidden, F = v->intermediate, nh = v->heads, hd = D / nh, P = vision_patch_dim(v);
    int64_t S = in->rows + in->nimg;  // one CLS per image
    memset(tr, 0, sizeof *tr);
    tr->S = S;
    tr->rows = in->rows;
    tr->nimg = in->nimg;
    tr->pixels = in->pixels;
    float *pe = Z((size_t)in->rows * D), *x = Z((size_t)S * D);
    matmul_forward(pe, in->pixels, W(m, "visual.patch_embed.proj.weight", 0), NULL, (int)in->rows, P, D);
    tr->cu = arena_bytes(A, (size_t)(in->nimg + 1) * sizeof(int32_t));
    tr->ang = Z((size_t)S * hd / 2);
    const float *cls = W(m, "visual.class_embedding", 0), *cls_ang = W(m, "visual.class_pos_emb", 0);
    int64_t src = 0, dst = 0;
    int quarter = hd / 4;
    float *inv = Z((size_t)quarter);  // 2-D RoPE frequencies theta^(−2k/(hd/2)), k < hd/4
    for (int k = 0; k < quarter; k++) inv[k] = (float)(1.0 / pow(v->rope_theta, (double)(2 * k) / (hd / 2)));
    tr->cu[0] = 0;
    for (int i = 0; i < in->nimg; i++) {
        int gh = in->grid[3 * i + 1], gw = in->grid[3 * i + 2];
        memcpy(x + dst * D, cls, (size_t)D * sizeof(float));
        memcpy(tr->ang + dst * hd / 2, cls_ang, (size_t)(hd / 2) * sizeof(float));  // learned CLS angles
        dst++;
        for (int r = 0; r < gh * gw; r++, src++, dst++) {
            memcpy(x + dst * D, pe + src * D, (size_t)D * sizeof(float));
            // row r in 2×2-block order: ((bh·gw/2 + bw)·2 + dy)·2 + dx
            int dx = r % 2, dy = (r / 2) % 2, blk = r / 4, bw = blk % (gw / 2), bh = blk / (gw / 2);
            int py = 2 * bh + dy, px = 2 * bw + dx;
            for (int k = 0; k < quarter; k++) {
                tr->ang[dst * hd / 2 + k] = (float)py * inv[k];
                tr->ang[dst * hd / 2 + quarter + k] = (float)px * inv[k];
            }
        }
        tr->cu[i + 1] = (int32_t)dst;
    }
    float eps = (float)v->layer_norm_eps;
    tr->x0 = x;
    tr->pre_mean = Z(S);
    tr->pre_rstd = Z(S);
    x = Z((size_t)S * D);
    layernorm_forward(x, tr->pre_mean, tr->pre_rstd, tr->x0, W(m, "visual.pre_layernorm.weight", 0), W(m, "visual.pre_layernorm.bias", 0), (int)S, D, eps);
    tr->B = arena_bytes(A, (size_t)v->depth * sizeof(BlockActs));
    float *qkv = Z((size_t)S * 3 * D), *o = Z((size_t)S * D);
    for (int l = 0; l < v->depth; l++) {
        BlockActs *a = &tr->B[l];
        a->x_in = x;
        a->mean1 = Z(S); a->rstd1 = Z(S); a->h1 = Z((size_t)S * D);
        a->q = Z((size_t)S * D); a->k = Z((size_t)S * D); a->v = Z((size_t)S * D);
        a->qr = Z((size_t)S * D); a->kr = Z((size_t)S * D); a->att = Z((size_t)S * D); a->lse = Z((size_t)S * nh);
        a->x_mid = Z((size_t)S * D); a->mean2 = Z(S); a->rstd2 = Z(S); a->h2 = Z((size_t)S * D);
        a->f1 = Z((size_t)S * F); a->f1g = Z((size_t)S * F);
        layernorm_forward(a->h1, a->mean1, a->rstd1, x, W(m, "visual.blocks.%d.norm1.weight", l), W(m, "visual.blocks.%d.norm1.bias", l), (int)S, D, eps);
        matmul_forward(qkv, a->h1, W(m, "visual.blocks.%d.attn.qkv.weight", l), W(m, "visual.blocks.%d.attn.qkv.bias", l), (int)S, D, 3 * D);
        for (int64_t t = 0; t < S; t++) {  // output columns [Q | K | V]
            memcpy(a->q + t * D, qkv + t * 3 * D, (size_t)D * sizeof(float));
            memcpy(a->k + t * D, qkv + t * 3 * D + D, (size_t)D * sizeof(float));
            memcpy(a->v + t * D, qkv + t * 3 * D + 2 * D, (size_t)D * sizeof(float));
        }
        memcpy(a->qr, a->q, (size_t)S * D * sizeof(float));
        memcpy(a->kr, a->k, (size_t)S * D * sizeof(float));
        rope_forward(a->qr, tr->ang, (int)S, nh, hd);
        rope_forward(a->kr, tr->ang, (int)S, nh, hd);
        attention_forward(a->att, a->lse, a->qr, a->kr, a->v, tr->cu, in->nimg, nh, nh, hd, 0);  // bidirectional per image
        matmul_forward(o, a->att, W(m, "visual.blocks.%d.attn.proj.weight", l), W(m, "visual.blocks.%d.attn.proj.bias", l), (int)S, D, D);
        for (int64_t i = 0; i < S * D; i++) a->x_mid[i] = x[i] + o[i];
        layernorm_forward(a->h2, a->mean2, a->rstd2, a->x_mid, W(m, "visual.blocks.%d.norm2.weight", l), W(m, "visual.blocks.%d.norm2.bias", l), (int)S, D, eps);
        matmul_forward(a->f1, a->h2, W(m, "visual.blocks.%d.mlp.fc1.weight", l), W(m, "visual.blocks.%d.mlp.fc1.bias", l), (int)S, D, F);
        gelu_forward(a->f1g, a->f1, (size_t)S * F);
        matmul_forward(o, a->f1g, W(m, "visual.blocks.%d.mlp.fc2.weight", l), W(m, "visual.blocks.%d.mlp.fc2.bias", l), (int)S, F, D);
        x = Z((size_t)S * D);
        for (int64_t i = 0; i < S * D; i++) x[i] = a->x_mid[i] + o[i];
    }
    tr->x_last = x;
    // drop the CLS rows
    for (int i = 0, r = 0; i < in->nimg; i++)
        for (int t = tr->cu[i] + 1; t < tr->cu[i + 1]; t++, r++) memcpy(hidden_out + (size_t)r * D, x + (size_t)t * D, (size_t)D * sizeof(float));
    // merger: LayerNorm per row, 4 rows as one, Linear-GELU-Linear
    int64_t R4 = in->rows / 4;
    int M = 4 * D, H = m->cfg.text.hidden;
    tr->hidden = hidden_out;
    tr->ln_mean = Z(in->rows); tr->ln_rstd = Z(in->rows);
    tr->ln = Z((size_t)in->rows * D); tr->m1 = Z((size_t)R4 * M); tr->m1g = Z((size_t)R4 * M);
    layernorm_forward(tr->ln, tr->ln_mean, tr->ln_rstd, hidden_out, W(m, "visual.merger.ln_q.weight", 0), W(m, "visual.merger.ln_q.bias", 0), (int)in->rows, D, eps);
    matmul_forward(tr->m1, tr->ln, W(m, "visual.merger.mlp.0.weight", 0), W(m, "visual.merger.mlp.0.bias", 0), (int)R4, M, M);
    gelu_forward(tr->m1g, tr->m1, (size_t)R4 * M);
    matmul_forward(embeds_out, tr->m1g, W(m, "visual.merger.mlp.2.weight", 0), W(m, "visual.merger.mlp.2.bias", 0), (int)R4, M, H);
}

// d loss / d angle of a rotation, summed over heads: for y = R(θ)·x, dθ_j = Σ dy_j·(−y_{j+D/2}) + dy_{j+D/2}·y_j.
static void rope_angle_grad(float *dang, const float *y, const float *dy, int H, int D) {
    int half = D / 2;
    for (int h = 0; h < H; h++)
        for (int j = 0; j < half; j++) {
            const float *yy = y + (size_t)h * D, *dd = dy + (size_t)h * D;
            dang[j] += -dd[j] * yy[j + half] + dd[j + half] * yy[j];
        }
}

int vision_backward(const Model *m, Arena *A, const VisionTrace *tr, const float *dembeds, float **grads, int tower) {
    const VisionConfig *v = &m->cfg.vision;
    int D = v->hidden, F = v->intermediate, nh = v->heads, hd = D / nh, P = vision_patch_dim(v), H = m->cfg.text.hidden;
    int64_t S = tr->S, R4 = tr->rows / 4;
    int M = 4 * D;
    // merger
    float *dm1g = Z((size_t)R4 * M), *dm1 = Z((size_t)R4 * M), *dln = Z((size_t)tr->rows * D), *dhid = Z((size_t)tr->rows * D);
    matmul_backward(dm1g, G(m, grads, "visual.merger.mlp.2.weight", 0), G(m, grads, "visual.merger.mlp.2.bias", 0), dembeds, tr->m1g,
                    W(m, "visual.merger.mlp.2.weight", 0), (int)R4, M, H);
    gelu_backward(dm1, dm1g, tr->m1, (size_t)R4 * M);
    matmul_backward(dln, G(m, grads, "visual.merger.mlp.0.weight", 0), G(m, grads, "visual.merger.mlp.0.bias", 0), dm1, tr->ln,
                    W(m, "visual.merger.mlp.0.weight", 0), (int)R4, M, M);
    layernorm_backward(tower ? dhid : NULL, G(m, grads, "visual.merger.ln_q.weight", 0), G(m, grads, "visual.merger.ln_q.bias", 0), dln, tr->hidden,
                       W(m, "visual.merger.ln_q.weight", 0), tr->ln_mean, tr->ln_rstd, (int)tr->rows, D);
    if (!tower) return 0;
    // the CLS rows get no gradient from the output
    float *dx = Z((size_t)S * D);
    for (int i = 0, r = 0; i < tr->nimg; i++)
        for (int t = tr->cu[i] + 1; t < tr->cu[i + 1]; t++, r++) memcpy(dx + (size_t)t * D, dhid + (size_t)r * D, (size_t)D * sizeof(float));
    float *df1g = Z((size_t)S * F), *df1 = Z((size_t)S * F), *dh = Z((size_t)S * D), *datt = Z((size_t)S * D),
          *dqr = Z((size_t)S * D), *dkr = Z((size_t)S * D), *dv = Z((size_t)S * D), *dqkv = Z((size_t)S * 3 * D);
    float *dcls_ang = G(m, grads, "visual.class_pos_emb", 0);
    for (int l = v->depth - 1; l >= 0; l--) {
        const BlockActs *a = &tr->B[l];
        memset(df1g, 0, (size_t)S * F * sizeof(float));
        matmul_backward(df1g, G(m, grads, "visual.blocks.%d.mlp.fc2.weight", l), G(m, grads, "visual.blocks.%d.mlp.fc2.bias", l), dx, a->f1g,
                        W(m, "visual.blocks.%d.mlp.fc2.weight", l), (int)S, F, D);
        memset(df1, 0, (size_t)S * F * sizeof(float));
        gelu_backward(df1, df1g, a->f1, (size_t)S * F);
        memset(dh, 0, (size_t)S * D * sizeof(float));
        matmul_backward(dh, G(m, grads, "visual.blocks.%d.mlp.fc1.weight", l), G(m, grads, "visual.blocks.%d.mlp.fc1.bias", l), df1, a->h2,
                        W(m, "visual.blocks.%d.mlp.fc1.weight", l), (int)S, D, F);
        layernorm_backward(dx, G(m, grads, "visual.blocks.%d.norm2.weight", l), G(m, grads, "visual.blocks.%d.norm2.bias", l), dh, a->x_mid,
                           W(m, "visual.blocks.%d.norm2.weight", l), a->mean2, a->rstd2, (int)S, D);
        memset(datt, 0, (size_t)S * D * sizeof(float));
        matmul_backward(datt, G(m, grads, "visual.blocks.%d.attn.proj.weight", l), G(m, grads, "visual.blocks.%d.attn.proj.bias", l), dx, a->att,
                        W(m, "visual.blocks.%d.attn.proj.weight", l), (int)S, D, D);
        memset(dqr, 0, (size_t)S * D * sizeof(float)); memset(dkr, 0, (size_t)S * D * sizeof(float)); memset(dv, 0, (size_t)S * D * sizeof(float));
        attention_backward(dqr, dkr, dv, datt, a->att, a->lse, a->qr, a->kr, a->v, tr->cu, tr->nimg, nh, nh, hd, 0);
        if (dcls_ang)  // the CLS rows rotate by learned angles: their gradient, before undoing the rotation
            for (int i = 0; i < tr->nimg; i++) {
                int64_t t = tr->cu[i];
                rope_angle_grad(dcls_ang, a->qr + t * D, dqr + t * D, nh, hd);
                rope_angle_grad(dcls_ang, a->kr + t * D, dkr + t * D, nh, hd);
            }
        rope_backward(dqr, tr->ang, (int)S, nh, hd);
        rope_backward(dkr, tr->ang, (int)S, nh, hd);
        for (int64_t t = 0; t < S; t++) {
            memcpy(dqkv + t * 3 * D, dqr + t * D, (size_t)D * sizeof(float));
            memcpy(dqkv + t * 3 * D + D, dkr + t * D, (size_t)D * sizeof(float));
            memcpy(dqkv + t * 3 * D + 2 * D, dv + t * D, (size_t)D * sizeof(float));
        }
        memset(dh, 0, (size_t)S * D * sizeof(float));
        matmul_backward(dh, G(m, grads, "visual.blocks.%d.attn.qkv.weight", l), G(m, grads, "visual.blocks.%d.attn.qkv.bias", l), dqkv, a->h1,
                        W(m, "visual.blocks.%d.attn.qkv.weight", l), (int)S, D, 3 * D);
        layernorm_backward(dx, G(m, grads, "visual.blocks.%d.norm1.weight", l), G(m, grads, "visual.blocks.%d.norm1.bias", l), dh, a->x_in,
                           W(m, "visual.blocks.%d.norm1.weight", l), a->mean1, a->rstd1, (int)S, D);
    }
    // pre-LayerNorm, then CLS embeddings and the patch projection
    memset(dh, 0, (size_t)S * D * sizeof(float));
    layernorm_backward(dh, G(m, grads, "visual.pre_layernorm.weight", 0), G(m, grads, "visual.pre_layernorm.bias", 0), dx, tr->x0,
                       W(m, "visual.pre_layernorm.weight", 0), tr->pre_mean, tr->pre_rstd, (int)S, D);
    float *dcls = G(m, grads, "visual.class_embedding", 0), *dpe = Z((size_t)tr->rows * D);
    for (int i = 0, r = 0; i < tr->nimg; i++) {
        for (int c = 0; dcls && c < D; c++) dcls[c] += dh[(size_t)tr->cu[i] * D + c];
        for (int t = tr->cu[i] + 1; t < tr->cu[i + 1]; t++, r++) memcpy(dpe + (size_t)r * D, dh + (size_t)t * D, (size_t)D * sizeof(float));
    }
    matmul_backward(NULL, G(m, grads, "visual.patch_embed.proj.weight", 0), NULL, dpe, tr->pixels,
                    W(m, "visual.patch_embed.proj.weight", 0), (int)tr->rows, P, D);
    return v->depth;
}
