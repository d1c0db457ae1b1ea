// model.c: see model.h.
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops.h"
#include "hfdir.h"
#include "model_internal.h"

int model_load(Model *m, const char *dir, Err *e) {
    memset(m, 0, sizeof *m);
    char *cfg = path_join(dir, "config.json");
    int rc = cfg_model_read(&m->cfg, cfg, e);
    free(cfg);
    if (rc) return -1;
    HfDir h;
    if (hfdir_open(&h, dir, e)) return -1;
    m->np = params_hf(&m->cfg, &m->ps);
    m->w = xcalloc((size_t)m->np, sizeof(float *));
    for (int i = 0; i < m->np && !rc; i++) {
        const ParamSpec *p = &m->ps[i];
        const StTensor *t = hfdir_find(&h, p->name);
        DType dt = DT_INVALID;
        if (check_weight(t, hfdir_path_of(&h, t), p->name, p->ndim, p->shape, &dt, e)) { rc = -1; break; }
        m->w[i] = xmalloc((size_t)param_numel(p) * sizeof(float));
        convert_floats(m->w[i], DT_F32, t->data, t->dtype, (size_t)param_numel(p));
    }
    hfdir_close(&h);
    if (rc) model_free(m);
    return rc;
}

void model_free(Model *m) {
    for (int i = 0; m->w && i < m->np; i++) free(m->w[i]);
    free(m->w);
    free(m->ps);
    memset(m, 0, sizeof *m);
}

const float *model_weight(const Model *m, const char *name) {
    for (int i = 0; i < m->np; i++) if (!strcmp(m->ps[i].name, name)) return m->w[i];
    return NULL;
}

const float *model_weight_fmt(const Model *m, const char *fmt, int layer) {
    char name[128];
    snprintf(name, sizeof name, fmt, layer);
    const float *w = model_weight(m, name);
    if (!w) die_internal("model: no tensor %s", name);
    return w;
}

float *fzeros(size_t n) { return xcalloc(n ? n : 1, sizeof(float)); }
#define W model_weight_fmt

// ---- vision tower + merger ------------------------------------------------------------------------

static void vision_forward(const Model *m, const ModelInput *in, float *hidden_out, float *embeds_out) {
    const VisionConfig *v = &m->cfg.vision;
    int D = v->hidden, F = v->intermediate, nh = v->heads, hd = D / nh, P = vision_patch_dim(v);
    int64_t S = in->rows + in->nimg;  // one CLS per image
    // patch embedding of every row, then the CLS rows in front of each image's patches
    float *pe = fzeros((size_t)in->rows * D), *x = fzeros((size_t)S * D);
    matmul_forward(pe, in->pixels, W(m, "visual.patch_embed.proj.weight", 0), NULL, (int)in->rows, P, D);
    int32_t *cu = xmalloc((size_t)(in->nimg + 1) * sizeof(int32_t));
    float *ang = fzeros((size_t)S * hd / 2);
    const float *cls = W(m, "visual.class_embedding", 0), *cls_ang = W(m, "visual.class_pos_emb", 0);
    int64_t src = 0, dst = 0;
    cu[0] = 0;
    int quarter = hd / 4;
    for (int i = 0; i < in->nimg; i++) {
        int gh = in->grid[3 * i + 1], gw = in->grid[3 * i + 2];
        memcpy(x + dst * D, cls, (size_t)D * sizeof(float));
        memcpy(ang + dst * hd / 2, cls_ang, (size_t)(hd / 2) * sizeof(float));  // learned CLS angles
        dst++;
        for (int r = 0; r < gh * gw; r++, src++, dst++) {
            memcpy(x + dst * D, pe + src * D, (size_t)D * sizeof(float));
            // row r in 2×2-block order: ((bh·gw/2 + bw)·2 + dy)·2 + dx
            int dx = r % 2, dy = (r / 2) % 2, blk = r / 4, bw = blk % (gw / 2), bh = blk / (gw / 2);
            int py = 2 * bh + dy, px = 2 * bw + dx;
            for (int k = 0; k < quarter; k++) {
                float inv = (float)(1.0 / pow(v->rope_theta, (double)(2 * k) / (hd / 2)));
                ang[dst * hd / 2 + k] = (float)py * inv;
                ang[dst * hd / 2 + quarter + k] = (float)px * inv;
            }
        }
        cu[i + 1] = (int32_t)dst;
    }
    free(pe);
    float eps = (float)v->layer_norm_eps;
    float *mean = fzeros((size_t)S), *rstd = fzeros((size_t)S), *h = fzeros((size_t)S * D), *qkv = fzeros((size_t)S * 3 * D),
          *q = fzeros((size_t)S * D), *k = fzeros((size_t)S * D), *vv = fzeros((size_t)S * D), *att = fzeros((size_t)S * D),
          *lse = fzeros((size_t)S * nh), *o = fzeros((size_t)S * D), *f1 = fzeros((size_t)S * F), *f1g = fzeros((size_t)S * F);
    layernorm_forward(h, mean, rstd, x, W(m, "visual.pre_layernorm.weight", 0), W(m, "visual.pre_layernorm.bias", 0), (int)S, D, eps);
    memcpy(x, h, (size_t)S * D * sizeof(float));
    for (int l = 0; l < v->depth; l++) {
        layernorm_forward(h, mean, rstd, x, W(m, "visual.blocks.%d.norm1.weight", l), W(m, "visual.blocks.%d.norm1.bias", l), (int)S, D, eps);
        matmul_forward(qkv, h, W(m, "visual.blocks.%d.attn.qkv.weight", l), W(m, "visual.blocks.%d.attn.qkv.bias", l), (int)S, D, 3 * D);
        for (int64_t t = 0; t < S; t++) {  // output columns [Q | K | V]
            memcpy(q + t * D, qkv + t * 3 * D, (size_t)D * sizeof(float));
            memcpy(k + t * D, qkv + t * 3 * D + D, (size_t)D * sizeof(float));
            memcpy(vv + t * D, qkv + t * 3 * D + 2 * D, (size_t)D * sizeof(float));
        }
        rope_forward(q, ang, (int)S, nh, hd);
        rope_forward(k, ang, (int)S, nh, hd);
        attention_forward(att, lse, q, k, vv, cu, in->nimg, nh, nh, hd, 0);  // bidirectional, per image
        matmul_forward(o, att, W(m, "visual.blocks.%d.attn.proj.weight", l), W(m, "visual.blocks.%d.attn.proj.bias", l), (int)S, D, D);
        for (int64_t i = 0; i < S * D; i++) x[i] += o[i];
        layernorm_forward(h, mean, rstd, x, W(m, "visual.blocks.%d.norm2.weight", l), W(m, "visual.blocks.%d.norm2.bias", l), (int)S, D, eps);
        matmul_forward(f1, h, W(m, "visual.blocks.%d.mlp.fc1.weight", l), W(m, "visual.blocks.%d.mlp.fc1.bias", l), (int)S, D, F);
        gelu_forward(f1g, f1, (size_t)S * F);
        matmul_forward(o, f1g, W(m, "visual.blocks.%d.mlp.fc2.weight", l), W(m, "visual.blocks.%d.mlp.fc2.bias", l), (int)S, F, D);
        for (int64_t i = 0; i < S * D; i++) x[i] += o[i];
    }
    // drop the CLS rows
    for (int i = 0, r = 0; i < in->nimg; i++)
        for (int t = cu[i] + 1; t < cu[i + 1]; t++, r++) memcpy(hidden_out + (size_t)r * D, x + (size_t)t * D, (size_t)D * sizeof(float));
    // merger: LayerNorm per row, 4 rows as one, Linear-GELU-Linear
    int64_t R4 = in->rows / 4;
    int M = 4 * D, H = m->cfg.text.hidden;
    float *ln = fzeros((size_t)in->rows * D), *m1 = fzeros((size_t)R4 * M), *m1g = fzeros((size_t)R4 * M);
    layernorm_forward(ln, mean, rstd, hidden_out, W(m, "visual.merger.ln_q.weight", 0), W(m, "visual.merger.ln_q.bias", 0), (int)in->rows, D, eps);
    matmul_forward(m1, ln, W(m, "visual.merger.mlp.0.weight", 0), W(m, "visual.merger.mlp.0.bias", 0), (int)R4, M, M);
    gelu_forward(m1g, m1, (size_t)R4 * M);
    matmul_forward(embeds_out, m1g, W(m, "visual.merger.mlp.2.weight", 0), W(m, "visual.merger.mlp.2.bias", 0), (int)R4, M, H);
    free(ln); free(m1); free(m1g);
    free(x); free(cu); free(ang); free(mean); free(rstd); free(h); free(qkv); free(q); free(k); free(vv); free(att); free(lse);
    free(o); free(f1); free(f1g);
}

// Text-side input rules: ids in the vocabulary, one <|image_pad|> per merged embedding, cu_seqlens
// spanning the row.
int model_forward_check_text(const Model *m, const ModelInput *in, Err *e) {
    int64_t pads = 0;
    for (int t = 0; t < in->T; t++) {
        if (in->ids[t] < 0 || in->ids[t] >= m->cfg.text.vocab) { err_set(e, "input_ids[%d] = %d is outside the vocabulary", t, in->ids[t]); return -1; }
        pads += m->cfg.vision.present && in->ids[t] == m->cfg.image_token_id;
    }
    if (pads != in->rows / 4) {
        err_set(e, "%lld <|image_pad|> tokens but the images give %lld merged embeddings", (long long)pads, (long long)(in->rows / 4));
        return -1;
    }
    if (in->cu_seqlens && (in->cu_seqlens[0] != 0 || in->cu_seqlens[in->nseq] != in->T)) {
        err_set(e, "cu_seqlens must run from 0 to the sequence length %d", in->T);
        return -1;
    }
    return 0;
}

int model_forward(const Model *m, const ModelInput *in, ModelOutput *out, Err *e) {
    memset(out, 0, sizeof *out);
    int64_t rows = 0;
    for (int i = 0; i < in->nimg; i++) {
        int gh = in->grid[3 * i + 1], gw = in->grid[3 * i + 2];
        if (in->grid[3 * i] != 1 || gh <= 0 || gw <= 0 || gh % 2 || gw % 2) {
            err_set(e, "grid_thw[%d] = (%d, %d, %d): expected (1, even h, even w)", i, in->grid[3 * i], gh, gw);
            return -1;
        }
        rows += (int64_t)gh * gw;
    }
    if (rows != in->rows) { err_set(e, "grid_thw covers %lld patch rows but pixel_values has %lld", (long long)rows, (long long)in->rows); return -1; }
    if (in->nimg && !m->cfg.vision.present) { err_set(e, "images given to a model without a vision tower"); return -1; }
    if (in->nimg) {
        out->vision_hidden = fzeros((size_t)rows * m->cfg.vision.hidden);
        out->image_embeds = fzeros((size_t)(rows / 4) * m->cfg.text.hidden);
        vision_forward(m, in, out->vision_hidden, out->image_embeds);
    }
    if (!in->ids) return 0;
    if (model_forward_check_text(m, in, e)) return -1;
    out->logits = fzeros((size_t)in->T * m->cfg.text.vocab);
    TextTrace tr;
    text_forward(m, in, out->image_embeds, out->logits, &tr);
    text_trace_free(&tr, m->cfg.text.layers);
    return 0;
}

int model_loss_grads(const Model *m, const ModelInput *in, const int32_t *labels, float *loss, float **grads,
                     ModelOutput *out, float **dimage_embeds, Err *e) {
    if (!in->ids) { err_set(e, "a loss needs input_ids"); return -1; }
    // The forward of model_forward, keeping the decoder's activations.
    ModelInput vis = *in;
    vis.ids = NULL;
    if (model_forward(m, &vis, out, e)) return -1;
    ModelInput full = *in;
    if (model_forward_check_text(m, &full, e)) return -1;
    int T = in->T, V = m->cfg.text.vocab;
    out->logits = fzeros((size_t)T * V);
    TextTrace tr;
    text_forward(m, in, out->image_embeds, out->logits, &tr);
    int32_t *shifted = xmalloc((size_t)T * sizeof(int32_t));  // position t predicts labels[t+1]
    for (int t = 0; t < T; t++) shifted[t] = t + 1 < T ? labels[t + 1] : -100;
    int64_t count;
    *loss = (float)cross_entropy_forward(out->logits, shifted, T, V, &count);
    float *dlogits = fzeros((size_t)T * V);
    if (count) cross_entropy_backward(dlogits, out->logits, shifted, T, V, 1.0f / (float)count);
    float *demb = in->nimg ? fzeros((size_t)(in->rows / 4) * m->cfg.text.hidden) : NULL;
    text_backward(m, &tr, dlogits, grads, demb);
    if (dimage_embeds) *dimage_embeds = demb; else free(demb);
    text_trace_free(&tr, m->cfg.text.layers);
    free(dlogits);
    free(shifted);
    return 0;
}
