// optim.c: see optim.h.
#include "optim.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops.h"
#include "util.h"

enum { ALIGN = 64 };

static size_t padded(const ParamSpec *p) { return ((size_t)param_numel(p) + ALIGN - 1) / ALIGN * ALIGN; }

size_t adam_layout_size(const Model *m, const int *trainable) {
    size_t n = 0;
    for (int i = 0; i < m->np; i++) if (trainable[i]) n += padded(&m->ps[i]);
    return n;
}

void adam_init(Adam *o, const Model *m, const int *trainable, size_t lo, size_t hi) {
    memset(o, 0, sizeof *o);
    o->np = m->np;
    o->n = adam_layout_size(m, trainable);
    o->lo = lo;
    o->hi = hi;
    o->flat_grad = xcalloc(o->n ? o->n : 1, sizeof(float));
    o->m = xcalloc(hi > lo ? hi - lo : 1, sizeof(float));
    o->v = xcalloc(hi > lo ? hi - lo : 1, sizeof(float));
    o->grad = xcalloc((size_t)m->np, sizeof(float *));
    o->offset = xmalloc((size_t)m->np * sizeof(size_t));
    size_t off = 0;
    for (int i = 0; i < m->np; i++) {
        o->offset[i] = SIZE_MAX;
        if (!trainable[i]) continue;
        o->offset[i] = off;
        o->grad[i] = o->flat_grad + off;
        off += padded(&m->ps[i]);
    }
}

void adam_free(Adam *o) {
    free(o->flat_grad); free(o->m); free(o->v); free(o->grad); free(o->offset);
    memset(o, 0, sizeof *o);
}

void adam_zero_grad(Adam *o) { memset(o->flat_grad, 0, o->n * sizeof(float)); }

double adam_shard_sq_norm(const Adam *o) {
    double s = 0.0;  // padding is zero: the vector's norm is the tensors' norm
    for (size_t i = o->lo; i < o->hi; i++) s += (double)o->flat_grad[i] * o->flat_grad[i];  // fixed order
    return s;
}

void adam_scale_grad(Adam *o, float s) {
    for (size_t i = o->lo; i < o->hi; i++) o->flat_grad[i] *= s;
}

// The part [a, b) of tensor i that lies in the shard, as offsets into the tensor; 0 when none.
static int in_shard(const Adam *o, const Model *m, int i, size_t *a, size_t *b) {
    if (o->offset[i] == SIZE_MAX) return 0;
    size_t start = o->offset[i], end = start + (size_t)param_numel(&m->ps[i]);
    size_t lo = start > o->lo ? start : o->lo, hi = end < o->hi ? end : o->hi;
    if (lo >= hi) return 0;
    *a = lo - start;
    *b = hi - start;
    return 1;
}

void adam_step(Adam *o, Model *m, const AdamHyper *h) {
    o->t++;
    for (int i = 0; i < m->np; i++) {
        size_t a, b;
        if (!in_shard(o, m, i, &a, &b)) continue;
        float wd = m->ps[i].ndim >= 2 ? h->weight_decay : 0.0f;  // no decay on biases and norm weights
        size_t s = o->offset[i] + a - o->lo;                       // position in the shard's moments
        adamw_step(m->w[i] + a, o->grad[i] + a, o->m + s, o->v + s, b - a, h->lr, h->beta1, h->beta2, h->eps, wd, o->t);
    }
}

void adam_params_to_flat(const Adam *o, const Model *m, float *flat) {
    for (int i = 0; i < m->np; i++)
        if (o->offset[i] != SIZE_MAX) memcpy(flat + o->offset[i], m->w[i], (size_t)param_numel(&m->ps[i]) * sizeof(float));
}

void adam_params_from_flat(const Adam *o, Model *m, const float *flat) {
    for (int i = 0; i < m->np; i++)
        if (o->offset[i] != SIZE_MAX) memcpy(m->w[i], flat + o->offset[i], (size_t)param_numel(&m->ps[i]) * sizeof(float));
}
