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
    strmap_init(&m->index);
    for (int i = 0; i < m->np; i++) strmap_put(&m->index, m->ps[i].name, i);
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
    strmap_free(&m->index);
    memset(m, 0, sizeof *m);
}

const float *model_weight(const Model *m, const char *name) {
    int i = strmap_get(&m->index, name);
    return i < 0 ? NULL : m->w[i];
}

int model_param_index(const Model *m, const char *fmt, int layer) {
    char name[128];
    snprintf(name, sizeof name, fmt, layer);
    return strmap_get(&m->index, name);
}

const float *model_weight_fmt(const Model *m, const char *fmt, int layer) {
    int i = model_param_index(m, fmt, layer);
    if (i < 0) die_internal("model: no tensor %s (layer %d)", fmt, layer);
    return m->w[i];
}

float *model_grad_fmt(const Model *m, float **grads, const char *fmt, int layer) {
    if (!grads) return NULL;
    int i = model_param_index(m, fmt, layer);
    return i < 0 ? NULL : grads[i];
}

float *fzeros(size_t n) { return xcalloc(n ? n : 1, sizeof(float)); }
#define W model_weight_fmt

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

// Image-side input rules: grids (1, even h, even w) that cover the pixel rows, and a vision tower.
static int check_images(const Model *m, const ModelInput *in, Err *e) {
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
    return 0;
}

// The forward of both parts, keeping their activations in vt and tr for a backward.
static int run_forward(const Model *m, const ModelInput *in, ModelOutput *out, VisionTrace *vt, TextTrace *tr, Err *e) {
    memset(out, 0, sizeof *out);
    memset(vt, 0, sizeof *vt);
    memset(tr, 0, sizeof *tr);
    if (check_images(m, in, e) || (in->ids && model_forward_check_text(m, in, e))) return -1;
    if (in->nimg) {
        out->vision_hidden = fzeros((size_t)in->rows * m->cfg.vision.hidden);
        out->image_embeds = fzeros((size_t)(in->rows / 4) * m->cfg.text.hidden);
        vision_forward(m, in, out->vision_hidden, out->image_embeds, vt);
    }
    if (in->ids) {
        out->logits = fzeros((size_t)in->T * m->cfg.text.vocab);
        text_forward(m, in, out->image_embeds, out->logits, tr);
    }
    return 0;
}

int model_forward(const Model *m, const ModelInput *in, ModelOutput *out, Err *e) {
    VisionTrace vt;
    TextTrace tr;
    int rc = run_forward(m, in, out, &vt, &tr, e);
    vision_trace_free(&vt, m->cfg.vision.depth);
    text_trace_free(&tr, m->cfg.text.layers);
    return rc;
}

double model_shifted_loss(const float *logits, const int32_t *labels, int T, int V, float *dlogits) {
    int32_t *shifted = xmalloc((size_t)(T ? T : 1) * sizeof(int32_t));  // position t predicts labels[t+1]
    for (int t = 0; t < T; t++) shifted[t] = t + 1 < T ? labels[t + 1] : -100;
    int64_t count;
    double loss = cross_entropy_forward(logits, shifted, T, V, &count);
    if (dlogits) {
        if (count) cross_entropy_backward(dlogits, logits, shifted, T, V, 1.0f / (float)count);
        else memset(dlogits, 0, (size_t)T * V * sizeof(float));
    }
    free(shifted);
    return loss;
}

int model_loss_grads(const Model *m, const ModelInput *in, const int32_t *labels, float *loss, float **grads,
                     ModelOutput *out, Err *e) {
    if (!in->ids) { err_set(e, "a loss needs input_ids"); return -1; }
    VisionTrace vt;
    TextTrace tr;
    int rc = run_forward(m, in, out, &vt, &tr, e);
    if (!rc) {
        int T = in->T, V = m->cfg.text.vocab;
        float *dlogits = fzeros((size_t)T * V);
        *loss = (float)model_shifted_loss(out->logits, labels, T, V, dlogits);
        float *demb = in->nimg ? fzeros((size_t)(in->rows / 4) * m->cfg.text.hidden) : NULL;
        text_backward(m, &tr, dlogits, grads, demb);
        if (in->nimg) vision_backward(m, &vt, demb, grads);
        free(demb);
        free(dlogits);
    }
    vision_trace_free(&vt, m->cfg.vision.depth);
    text_trace_free(&tr, m->cfg.text.layers);
    return rc;
}
