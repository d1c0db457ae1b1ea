// model.c: loading, input checks, the step (forward, loss, backward) and trainable sets; see model.h.
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops.h"
#include "convert.h"
#include "hfdir.h"
#include "model_internal.h"

enum { FLAT_ALIGN = PARAM_ALIGN };  // floats: the layout of the backends' copies and the optimizer's vectors

// The parameter table and one flat fp32 buffer of views for a config.
static void model_alloc(Model *m) {
    m->np = params_hf(&m->cfg, &m->ps);
    m->w = xcalloc((size_t)m->np, sizeof(float *));
    strmap_init(&m->index);
    size_t *off = xmalloc((size_t)m->np * sizeof(size_t));
    for (int i = 0; i < m->np; i++) {
        strmap_put(&m->index, m->ps[i].name, i);
        off[i] = m->nflat;
        m->nflat += ((size_t)param_numel(&m->ps[i]) + FLAT_ALIGN - 1) / FLAT_ALIGN * FLAT_ALIGN;
    }
    m->flat = xcalloc(m->nflat ? m->nflat : 1, sizeof(float));
    m->wb = xcalloc((size_t)m->np, sizeof(Act *));
    for (int i = 0; i < m->np; i++) m->wb[i] = (Act *)(m->w[i] = m->flat + off[i]);  // cpu: the fp32 weights themselves
    m->be = &backend_cpu;
    free(off);
}

void model_to_backend(Model *m, const Backend *be) {
    if (m->wb_block) m->be->release(m->wb_block);
    m->wb_block = NULL;
    m->be = be;
    if (be == &backend_cpu) {
        for (int i = 0; i < m->np; i++) m->wb[i] = (Act *)m->w[i];
        return;
    }  // other backends get their own copy in their storage type
    size_t total = 0;  // each tensor at a multiple of PARAM_ALIGN elements, as in the optimizer's vectors
    for (int i = 0; i < m->np; i++) total += param_padded(&m->ps[i]) * be->esize;
    char *block = m->wb_block = be->alloc(total);
    for (int i = 0; i < m->np; i++) {
        m->wb[i] = (Act *)block;
        be->from_f32(m->wb[i], m->w[i], (size_t)param_numel(&m->ps[i]));
        block += param_padded(&m->ps[i]) * be->esize;
    }
}

void *model_upload(const Model *m, Arena *A, const void *host, size_t bytes) {
    void *p = arena_uninit(A, bytes);
    m->be->upload(p, host, bytes);
    return p;
}

static int load_hf(Model *m, const char *dir, Err *e) {
    char *cfg = path_join(dir, "config.json");
    int rc = cfg_model_read(&m->cfg, cfg, e);
    free(cfg);
    if (rc) return -1;
    HfDir h;
    if (hfdir_open(&h, dir, e)) return -1;
    model_alloc(m);
    for (int i = 0; i < m->np; i++) {
        const ParamSpec *p = &m->ps[i];
        const StTensor *t = hfdir_find(&h, p->name);
        DType dt = DT_INVALID;
        if (check_weight(t, hfdir_path_of(&h, t), p->name, p->ndim, p->shape, &dt, e)) { rc = -1; break; }
        if (i == 0) m->dtype = dt;
        convert_floats(m->w[i], DT_F32, t->data, t->dtype, (size_t)param_numel(p));
    }
    hfdir_close(&h);
    return rc;
}

static int load_mcore(Model *m, const char *root, const char *iter, Err *e) {
    if (read_checkpoint_config(root, 1, &m->cfg, e)) return -1;
    ModelMap mm;
    modelmap_init(&mm, &m->cfg);
    Source s;
    int rc = source_open_mcore(&s, &mm, root, iter, e);
    if (!rc) {
        model_alloc(m);
        rc = source_read_fp32(&mm, &s, m->w, &m->dtype, e);
        source_close(&s);
    }
    modelmap_free(&mm);
    return rc;
}

int model_load_iter(Model *m, const char *dir, const char *iter, Err *e) {
    memset(m, 0, sizeof *m);
    int rc = dir_is_mcore(dir) ? load_mcore(m, dir, iter, e) : load_hf(m, dir, e);
    if (rc) model_free(m);
    return rc;
}

int model_load(Model *m, const char *dir, Err *e) { return model_load_iter(m, dir, NULL, e); }

void model_free(Model *m) {
    if (m->w) strmap_free(&m->index);
    if (m->wb_block) m->be->release(m->wb_block);
    free(m->wb);
    free(m->flat);
    free(m->w);
    free(m->ps);
    memset(m, 0, sizeof *m);
}

int model_param_id(const Model *m, const char *name) { return strmap_get(&m->index, name); }

const float *model_weight(const Model *m, const char *name) {
    int i = strmap_get(&m->index, name);
    return i < 0 ? NULL : m->w[i];
}

int model_param_index(const Model *m, const char *fmt, int layer) {
    char name[128];
    snprintf(name, sizeof name, fmt, layer);
    return strmap_get(&m->index, name);
}

const Act *model_weight_fmt(const Model *m, const char *fmt, int layer) {
    int i = model_param_index(m, fmt, layer);
    if (i < 0) die_internal("model: no tensor %s (layer %d)", fmt, layer);
    return m->wb[i];
}

int model_weight_mark(const Model *m, int i) {
    const ParamSpec *p = &m->ps[i];
    int k = p->layer < 0 || p->part == PART_MERGER ? 0 : p->part == PART_VISION ? 1 + p->layer : 1 + m->cfg.vision.depth + p->layer;
    return k < 255 ? k : 255;
}

void model_grads_stale(const Model *m, ModelWork *w, float **grads) {
    if (w->nstale != m->np) {
        free(w->stale);
        free(w->zeroed);
        w->stale = xmalloc((size_t)m->np);
        w->zeroed = xcalloc((size_t)m->np, 1);
        w->nstale = m->np;
    }
    memset(w->stale, 1, (size_t)m->np);
    w->stale_grads = grads;
    w->zero_pending = 1;
    if (w->arena.poisoning) m->be->join();  // (the last step's optimizer may still read them: LLAVA_OVERLAP_OPT)
    for (int i = 0; w->arena.poisoning && grads && i < m->np; i++)
        if (grads[i]) m->be->poison(grads[i], (size_t)param_numel(&m->ps[i]) * sizeof(float));
}

// At the step's first accumulation: what the last step zeroed before accumulating into it (the norm weights and
// biases), zeroed now in one call, no longer stale. (Not in model_grads_stale: with LLAVA_OVERLAP_OPT the last
// optimizer step may still read them there; by the backward the forward has waited for all of it.)
static void zero_accumulated(const Model *m, ModelWork *w, float **grads) {
    w->zero_pending = 0;
    float **p = xmalloc((size_t)m->np * sizeof(float *));
    size_t *n = xmalloc((size_t)m->np * sizeof(size_t));
    int k = 0;
    for (int i = 0; i < m->np; i++)
        if (w->zeroed[i] && w->stale[i] && grads[i]) {
            p[k] = grads[i], n[k++] = (size_t)param_numel(&m->ps[i]);
            w->stale[i] = 0;
        }
    if (k) m->be->zero_floats(p, n, k);
    free(p);
    free(n);
}

// is tensor i's gradient still stale? (and it is not from now on)
static int take_stale(ModelWork *w, int i) {
    if (!w->stale || i < 0 || i >= w->nstale || !w->stale[i]) return 0;
    w->stale[i] = 0;
    return 1;
}

static void zero_grad(const Model *m, float **grads, int i) {
    m->be->zero(grads[i], (size_t)param_numel(&m->ps[i]) * sizeof(float));
}

// zero the stale gradients of tensors first .. np-1 (they are final without having been written)
static void settle_stale(const Model *m, ModelWork *w, float **grads, int first) {
    for (int i = first < 0 ? 0 : first; w->stale && grads && i < w->nstale; i++)
        if (take_stale(w, i) && grads[i]) zero_grad(m, grads, i);
}

void model_grads_final(const Model *m, ModelWork *w, const char *fmt, int layer) {
    int first = model_param_index(m, fmt, layer);
    settle_stale(m, w, w->stale_grads, first);
    if (w->grads_final) w->grads_final(w->grads_final_ctx, first);
}

float *model_grad_acc(const Model *m, ModelWork *w, float **grads, const char *fmt, int layer) {
    int i = model_param_index(m, fmt, layer);
    if (!grads || i < 0 || !grads[i]) return NULL;
    if (w->zero_pending && grads == w->stale_grads) zero_accumulated(m, w, grads);
    if (take_stale(w, i)) {
        zero_grad(m, grads, i);
        w->zeroed[i] = 1;  // (the next step zeroes it with the others at its first accumulation: zero_accumulated)
    }
    return grads[i];
}

void model_matmul_backward(const Model *m, ModelWork *w, float **grads, Act *dinp, int dinp_set, const char *wfmt, const char *bfmt,
                           int layer, const Act *dout, const Act *inp, int N, int K, int M) {
    int wi = model_param_index(m, wfmt, layer), bi = bfmt ? model_param_index(m, bfmt, layer) : -1;
    float *dw = model_grad_fmt(m, grads, wfmt, layer), *db = bfmt ? model_grad_fmt(m, grads, bfmt, layer) : NULL;
    // the tensors whose gradients this product writes: dW [M, K] spans wi and, where their gradients lie
    // back to back in the buffer (the gate and up projections as one product), the tensors after it
    int t[8], nt = 0, set = 0, all = 1, any = 0;
    if (dw) {
        t[nt++] = wi;
        for (int j = wi + 1; nt < 7 && j < m->np && grads[j] > dw && grads[j] < dw + (size_t)M * K; j++) t[nt++] = j;
    }
    if (db) t[nt++] = bi;
    for (int i = 0; i < nt; i++) {
        int s = w->stale && w->stale[t[i]];
        all &= s;
        any |= s;
    }
    if (nt && all) set = MM_SET_DW;  // the usual case: all written here first
    for (int i = 0; i < nt; i++)     // else zero the stale ones (none in this model's graphs), then accumulate
        if (take_stale(w, t[i]) && !set) zero_grad(m, grads, t[i]);
    m->be->matmul_backward(dinp, dw, db, dout, inp, model_weight_fmt(m, wfmt, layer), N, K, M, set | (dinp_set ? MM_SET_DINP : 0));
}

float *model_grad_fmt(const Model *m, float **grads, const char *fmt, int layer) {
    if (!grads) return NULL;
    int i = model_param_index(m, fmt, layer);
    return i < 0 ? NULL : grads[i];
}

void model_work_init(ModelWork *w, const Backend *be) {
    memset(w, 0, sizeof *w);
    if (be == &backend_cpu) arena_init(&w->arena);
    else arena_init_with(&w->arena, be->alloc, be->release, be->zero, be->poison);
    arena_init(&w->host);
}
void model_work_free(ModelWork *w) {
    arena_free(&w->arena);
    arena_free(&w->host);
    free(w->stale);
    free(w->zeroed);
    w->stale = w->zeroed = NULL;
    w->nstale = 0;
}

// Text-side input rules: ids in the vocabulary, one <|image_pad|> per merged embedding, cu_seqlens
// spanning a single row.
int model_forward_check_text(const Model *m, const ModelInput *in, Err *e) {
    int B = in->B ? in->B : 1;
    int64_t pads = 0, n = (int64_t)B * in->T;
    for (int64_t t = 0; t < n; t++) {
        if (in->ids[t] < 0 || in->ids[t] >= m->cfg.text.vocab) {
            err_set(e, "input_ids[%lld] = %d is outside the vocabulary", (long long)t, in->ids[t]);
            return -1;
        }
        pads += m->cfg.vision.present && in->ids[t] == m->cfg.image_token_id;
    }
    if (pads != in->rows / 4) {
        err_set(e, "%lld <|image_pad|> tokens but the images give %lld merged embeddings", (long long)pads, (long long)(in->rows / 4));
        return -1;
    }
    if (in->cu_seqlens) {
        if (B != 1) { err_set(e, "cu_seqlens packs sub-sequences of one row, but input_ids has %d rows", B); return -1; }
        if (in->nseq < 1 || in->cu_seqlens[0] != 0 || in->cu_seqlens[in->nseq] != in->T) {
            err_set(e, "cu_seqlens must run from 0 to the sequence length %d", in->T);
            return -1;
        }
        for (int s = 0; s < in->nseq; s++)
            if (in->cu_seqlens[s + 1] <= in->cu_seqlens[s]) {
                err_set(e, "cu_seqlens must increase (entry %d is %d after %d)", s + 1, in->cu_seqlens[s + 1], in->cu_seqlens[s]);
                return -1;
            }
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

// A forward's start: the outputs, traces and arenas cleared, the input checked.
static int forward_begin(const Model *m, ModelWork *w, const ModelInput *in, ModelOutput *out, VisionTrace *vt,
                         TextTrace *tr, Err *e) {
    memset(out, 0, sizeof *out);
    memset(vt, 0, sizeof *vt);
    memset(tr, 0, sizeof *tr);
    arena_reset(&w->arena);
    arena_reset(&w->host);
    return check_images(m, in, e) || (in->ids && model_forward_check_text(m, in, e)) ? -1 : 0;
}

// The forward of both parts into the work's arena, keeping their activations in vt and tr; the logits of
// the nhead positions head_rows (host; NULL: every position, in order).
static void forward_parts(const Model *m, ModelWork *w, const ModelInput *in, ModelOutput *out, VisionTrace *vt,
                          TextTrace *tr, const int32_t *head_rows, int nhead) {
    m->be->wait_mark(0);  // the tensors outside the blocks and layers, updated (model_weight_mark)
    Arena *A = &w->arena;
    size_t es = m->be->esize;
    if (in->nimg) {
        out->vision_hidden = arena_uninit(A, (size_t)in->rows * m->cfg.vision.hidden * es);
        out->image_embeds = arena_uninit(A, (size_t)(in->rows / 4) * m->cfg.text.hidden * es);
        vision_forward(m, w, in, out->vision_hidden, out->image_embeds, vt);
    }
    if (in->ids) {
        if (!head_rows) nhead = (in->B ? in->B : 1) * in->T;
        out->logits = arena_uninit(A, (size_t)nhead * m->cfg.text.vocab * es);
        text_forward(m, w, in, out->image_embeds, head_rows, nhead, out->logits, tr);
    }
}

int model_run_forward(const Model *m, ModelWork *w, const ModelInput *in, ModelOutput *out, VisionTrace *vt,
                      TextTrace *tr, const int32_t *head_rows, int nhead, Err *e) {
    if (forward_begin(m, w, in, out, vt, tr, e)) return -1;
    forward_parts(m, w, in, out, vt, tr, head_rows, nhead);
    return 0;
}

int model_forward(const Model *m, ModelWork *w, const ModelInput *in, ModelOutput *out, Err *e) {
    VisionTrace vt;
    TextTrace tr;
    return model_run_forward(m, w, in, out, &vt, &tr, NULL, 0, e);
}

// Hugging Face's shift inside each row: position t predicts labels[t+1] of its row (−100 past the row's
// end). Returns how many positions count.
static int64_t shift_labels(const int32_t *labels, int B, int T, int32_t *shifted) {
    int64_t count = 0;
    for (size_t i = 0, n = (size_t)B * T; i < n; i++) {
        shifted[i] = (int)(i % T) + 1 < T ? labels[i + 1] : -100;
        count += shifted[i] >= 0;
    }
    return count;
}

double model_shifted_loss(const float *logits, const int32_t *labels, int B, int T, int V, int64_t *count,
                          float *dlogits, float grad_scale) {
    size_t n = (size_t)B * T;
    int32_t *shifted = xmalloc((n ? n : 1) * sizeof(int32_t));
    shift_labels(labels, B, T, shifted);
    int64_t c;
    double loss = cross_entropy_forward(logits, shifted, (int)n, V, &c);
    if (dlogits) {
        if (c) cross_entropy_backward(dlogits, logits, shifted, (int)n, V, grad_scale / (float)c);
        else memset(dlogits, 0, n * V * sizeof(float));
    }
    if (count) *count = c;
    free(shifted);
    return loss;
}

// Where only the loss is read, the head and the cross-entropy run over the counted positions alone (the prompts
// of a conversation, the image pads: their logits' gradient is zero): the head's product, the logits and their
// pass shrink by the share of ignored positions. Their row count is rounded up to a multiple of q (8 or more,
// n/64 at most: up to 64 sizes per batch length, so that the GPU's per-shape product plans are reused) with
// ignored positions (target -100: no loss, a zero gradient row). The rows go to *rows (from H) and their
// targets to the front of shifted; returns their count, or n (and *rows NULL) where that would save nothing.
static size_t counted_rows(Arena *H, int32_t *shifted, size_t n, int64_t count, int32_t **rows) {
    size_t q = 8;
    while (q < n / 64) q *= 2;
    size_t padded = ((size_t)count + q - 1) / q * q;
    if (count <= 0 || padded >= n) return n;
    int32_t *r = *rows = arena_bytes(H, padded * sizeof(int32_t)), ignored = -1;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (shifted[i] >= 0) {
            r[k] = (int32_t)i;
            shifted[k++] = shifted[i];  // the targets in the same order (k <= i: read before written)
        } else if (ignored < 0) {
            ignored = (int32_t)i;
        }
    for (; k < padded; k++) r[k] = ignored, shifted[k] = -100;  // (count < n: one exists)
    return padded;
}

int model_loss_grads(const Model *m, ModelWork *w, const ModelInput *in, const int32_t *labels, float grad_scale,
                     float **grads, float *loss, ModelOutput *out, Err *e) {
    if (!in->ids) { err_set(e, "a loss needs input_ids"); return -1; }
    VisionTrace vt;
    TextTrace tr;
    if (forward_begin(m, w, in, out, &vt, &tr, e)) return -1;
    const Backend *be = m->be;
    Arena *A = &w->arena;
    int B = in->B ? in->B : 1, V = m->cfg.text.vocab;
    size_t n = (size_t)B * in->T;
    int32_t *shifted = arena_bytes(&w->host, n * sizeof(int32_t));  // the mean over counted positions
    int64_t count = shift_labels(labels, B, in->T, shifted);
    int32_t *head_rows = NULL;  // (where only the loss is read: the counted positions)
    size_t nrows = w->logits_scratch ? counted_rows(&w->host, shifted, n, count, &head_rows) : n;
    forward_parts(m, w, in, out, &vt, &tr, head_rows, (int)nrows);
    int32_t *targets = model_upload(m, A, shifted, nrows * sizeof(int32_t));
    float *rows = arena_floats(A, nrows), *host_rows = arena_floats(&w->host, nrows);
    Act *dlogits = count && w->logits_scratch ? out->logits  // in place: each row is read before it is written
                   : count ? arena_uninit(A, nrows * V * be->esize)  // written whole when any position counts
                           : arena_bytes(A, nrows * V * be->esize);
    // the rows' losses and their gradient in one pass over the logits (when any position counts)
    if (count) be->cross_entropy_fused(rows, dlogits, out->logits, targets, (int)nrows, V, grad_scale / (float)count);
    else be->cross_entropy_rows(rows, out->logits, targets, (int)nrows, V);
    be->download(host_rows, rows, nrows * sizeof(float));
    double total = 0.0;
    for (size_t i = 0; i < nrows; i++) total += host_rows[i];
    *loss = count ? (float)(total / (double)count) : 0.0f;
    // what the frozen set leaves to compute: the tower only when one of its tensors trains, the
    // image embeddings' gradient only when the tower or the merger trains
    int tower = 0, merger = 0;
    for (int i = 0; grads && i < m->np; i++)
        if (grads[i]) {
            tower |= m->ps[i].part == PART_VISION;
            merger |= m->ps[i].part == PART_MERGER;
        }
    Act *demb = in->nimg && (tower || merger) ? arena_bytes(A, (size_t)(in->rows / 4) * m->cfg.text.hidden * be->esize) : NULL;
    if (w->stale_grads && w->stale_grads != grads) die_internal("model_loss_grads: the stale gradients are not these");
    w->text_layers_backward = text_backward(m, w, &tr, dlogits, grads, demb);
    w->vision_blocks_backward = demb ? vision_backward(m, w, &vt, demb, grads, tower) : 0;
    settle_stale(m, w, grads, 0);  // what this backward did not reach holds no gradient: zeros (none stale now:
    w->stale_grads = NULL;         // the step's next backwards accumulate)
    return 0;
}

static int covers(const ParamSpec *p, const char *item) {
    if (!strcmp(item, "all")) return 1;
    if (!strcmp(item, "vision")) return p->part == PART_VISION;
    if (!strcmp(item, "merger") || !strcmp(item, "adapter")) return p->part == PART_MERGER;
    if (!strcmp(item, "llm") || !strcmp(item, "text")) return p->part == PART_TEXT;
    return !strncmp(p->name, item, strlen(item));
}

int model_trainable(const Model *m, const char *spec, int *trainable, Err *e) {
    memset(trainable, 0, (size_t)m->np * sizeof(int));
    char *s = xstrdup(spec), *save = NULL;
    int rc = 0;
    for (char *item = strtok_r(s, ",", &save); item && !rc; item = strtok_r(NULL, ",", &save)) {
        int hit = 0;
        for (int i = 0; i < m->np; i++)
            if (covers(&m->ps[i], item)) trainable[i] = hit = 1;
        if (!hit) {
            err_set(e, "trainable set: '%s' names no tensor of this model (modules: vision, merger, llm, all; or an HF name prefix)", item);
            rc = -1;
        }
    }
    free(s);
    return rc;
}
