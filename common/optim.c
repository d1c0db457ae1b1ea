// optim.c: see optim.h.
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops.h"
#include "util.h"

enum { ALIGN = 64 };

static size_t padded(const ParamSpec *p) { return ((size_t)param_numel(p) + ALIGN - 1) / ALIGN * ALIGN; }

void adam_init(Adam *o, const Model *m, const int *trainable) {
    memset(o, 0, sizeof *o);
    o->np = m->np;
    for (int i = 0; i < m->np; i++) if (trainable[i]) o->n += padded(&m->ps[i]);
    size_t n = o->n ? o->n : 1;
    o->flat_grad = xcalloc(n, sizeof(float));
    o->flat_m = xcalloc(n, sizeof(float));
    o->flat_v = xcalloc(n, sizeof(float));
    o->grad = xcalloc((size_t)m->np, sizeof(float *));
    o->m = xcalloc((size_t)m->np, sizeof(float *));
    o->v = xcalloc((size_t)m->np, sizeof(float *));
    size_t off = 0;
    for (int i = 0; i < m->np; i++)
        if (trainable[i]) {
            o->grad[i] = o->flat_grad + off;
            o->m[i] = o->flat_m + off;
            o->v[i] = o->flat_v + off;
            off += padded(&m->ps[i]);
        }
}

void adam_free(Adam *o) {
    free(o->flat_grad); free(o->flat_m); free(o->flat_v);
    free(o->grad); free(o->m); free(o->v);
    memset(o, 0, sizeof *o);
}

void adam_zero_grad(Adam *o) { memset(o->flat_grad, 0, o->n * sizeof(float)); }

double adam_grad_norm(const Adam *o, const Model *m) {
    (void)m;
    double s = 0.0;  // padding is zero: the flat buffer's norm is the tensors' norm
#pragma omp parallel for reduction(+ : s) schedule(static)
    for (size_t i = 0; i < o->n; i++) s += (double)o->flat_grad[i] * o->flat_grad[i];
    return sqrt(s);
}

void adam_step(Adam *o, Model *m, const AdamHyper *h) {
    o->t++;
    for (int i = 0; i < m->np; i++) {
        if (!o->grad[i]) continue;
        float wd = m->ps[i].ndim >= 2 ? h->weight_decay : 0.0f;  // no decay on biases and norm weights
        adamw_step(m->w[i], o->grad[i], o->m[i], o->v[i], (size_t)param_numel(&m->ps[i]), h->lr, h->beta1, h->beta2,
                   h->eps, wd, o->t);
    }
}
