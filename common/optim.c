// optim.c: see optim.h.
#include "optim.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops.h"
#include "comm.h"
#include "util.h"

// SLACK: zeroed floats past the end of the gradient vector, room for the collectives' equal chunks of
// ⌈n / world⌉ (comm.h, up to 256 ranks).
enum { SLACK = 256 };

size_t adam_layout_size(const Model *m, const int *trainable) {
    size_t n = 0;
    for (int i = 0; i < m->np; i++) if (trainable[i]) n += param_padded(&m->ps[i]);
    return n;
}

void adam_init(Adam *o, const Model *m, const int *trainable, size_t lo, size_t hi) {
    memset(o, 0, sizeof *o);
    o->be = m->be;
    o->np = m->np;
    o->n = adam_layout_size(m, trainable);
    o->lo = lo;
    o->hi = hi;
    const char *ov = getenv("LLAVA_OVERLAP_OPT");
    o->overlap = ov && ov[0] && strcmp(ov, "0");
    o->order = xmalloc((size_t)m->np * sizeof(int));  // (overlap: a counting sort by mark, table order within one)
    int n = 0;
    for (int k = 0; k < (o->overlap ? 256 : 1); k++)
        for (int i = 0; i < m->np; i++)
            if (!o->overlap || model_weight_mark(m, i) == k) o->order[n++] = i;
    size_t shard = (hi > lo ? hi - lo : 1) * sizeof(float);
    o->flat_grad = o->be->alloc((o->n + SLACK) * sizeof(float));
    o->m = xcalloc(1, shard);
    o->v = xcalloc(1, shard);
    int on_cpu = o->be == &backend_cpu;
    o->dm = on_cpu ? o->m : o->be->alloc(shard);
    o->dv = on_cpu ? o->v : o->be->alloc(shard);
    o->grad = xcalloc((size_t)m->np, sizeof(float *));
    o->offset = xmalloc((size_t)m->np * sizeof(size_t));
    o->runs = xcalloc((size_t)m->np, sizeof(AdamRun));
    size_t off = 0;
    for (int i = 0; i < m->np; i++) {
        o->offset[i] = SIZE_MAX;
        if (!trainable[i]) continue;
        o->offset[i] = off;
        o->grad[i] = o->flat_grad + off;
        // a run goes on while the backend's copies follow each other as the flat vector does
        AdamRun *r = o->nruns ? &o->runs[o->nruns - 1] : NULL;
        if (r && r->hi == off && AT(o->be, r->wb, off - r->lo) == m->wb[i]) r->hi += param_padded(&m->ps[i]);
        else o->runs[o->nruns++] = (AdamRun){off, off + param_padded(&m->ps[i]), m->wb[i]};
        off += param_padded(&m->ps[i]);
    }
    if (!on_cpu) {
        o->master = o->be->alloc(shard);
        o->hm = xcalloc(1, shard);
        const char *sg = getenv("LLAVA_ADAM_SEGMENTS");  // (the segments index the flat masters: off the cpu only)
        if (!o->overlap && o->be->adamw_segments && !(sg && !strcmp(sg, "0"))) o->seg = xmalloc((size_t)m->np * sizeof(AdamSeg));
        adam_sync_backend(o, (Model *)m);
    }
}

void adam_free(Adam *o) {
    if (o->dm != o->m) o->be->release(o->dm);
    if (o->dv != o->v) o->be->release(o->dv);
    if (o->master) o->be->release(o->master);
    o->be->release(o->flat_grad);
    free(o->m); free(o->v); free(o->hm); free(o->grad); free(o->offset); free(o->runs); free(o->order); free(o->seg);
    memset(o, 0, sizeof *o);
}

// padding is zero: the vector's norm is the tensors' norm
double adam_shard_sq_norm(const Adam *o) { return o->be->sum_squares(o->flat_grad + o->lo, o->hi - o->lo); }

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

// Tensors of fewer elements than this go into one adamw_segments call (o->seg): a launch each took a few
// microseconds for a few thousand elements (the norm weights and biases: ~170 calls a step of the 4B slice).
// Larger ones keep a launch of their own, which spreads them over the whole GPU (the segments' blocks take
// a few thousand elements each).
enum { SMALL_TENSOR = 1 << 16 };

void adam_step(Adam *o, Model *m, const AdamHyper *h) {
    o->t++;
    if (o->overlap) o->be->side(1);
    int nseg = 0;
    for (int j = 0; j < m->np; j++) {
        int i = o->order[j];
        size_t a, b;
        if (in_shard(o, m, i, &a, &b)) {
            float wd = m->ps[i].ndim >= 2 ? h->weight_decay : 0.0f;  // no decay on biases and norm weights
            size_t s = o->offset[i] + a - o->lo;                       // position in the shard's moments
            float *master = o->master ? o->master + s : m->w[i] + a;
            Act *param = o->master ? AT(o->be, m->wb[i], a) : NULL;
            if (o->seg && b - a < SMALL_TENSOR) o->seg[nseg++] = (AdamSeg){s, b - a, param, wd};
            else
                o->be->adamw(master, param, o->grad[i] + a, o->dm + s, o->dv + s, b - a, h->lr, h->beta1, h->beta2, h->eps, wd,
                             h->grad_scale, o->t);
        }
        int k = model_weight_mark(m, i);  // (overlap: a mark where the group of tensors ends)
        if (o->overlap && (j + 1 == m->np || model_weight_mark(m, o->order[j + 1]) != k)) o->be->mark(k);
    }
    if (nseg)  // (the gradients' flat vector is indexed from 0, the shard's vectors from lo)
        o->be->adamw_segments(o->master, o->flat_grad + o->lo, o->dm, o->dv, o->seg, nseg, h->lr, h->beta1, h->beta2, h->eps, h->grad_scale,
                              o->t);
    if (o->overlap) o->be->side(0);
}

void adam_params_to_flat(const Adam *o, const Model *m, float *flat) {
    for (int i = 0; i < m->np; i++)
        if (o->offset[i] != SIZE_MAX) memcpy(flat + o->offset[i], m->w[i], (size_t)param_numel(&m->ps[i]) * sizeof(float));
}

void adam_params_from_flat(const Adam *o, Model *m, const float *flat) {
    for (int i = 0; i < m->np; i++)
        if (o->offset[i] != SIZE_MAX) memcpy(m->w[i], flat + o->offset[i], (size_t)param_numel(&m->ps[i]) * sizeof(float));
}

int adam_gather_params(const Adam *o, Comm *c, Err *e) {
    o->be->join();  // (the collectives run on the main stream; the step may have run on the side one)
    int world = comm_world(c);  // (one rank: nothing moves, but a one-rank NCCL run still takes the path)
    CommPiece *p = xmalloc(((size_t)o->nruns * (size_t)world + 1) * sizeof(CommPiece));
    int np = 0;
    for (int k = 0; k < o->nruns; k++)  // each run cut where the shards of the ranks meet
        for (int r = 0; r < world; r++) {
            size_t lo, hi;
            comm_shard_of(o->n, world, r, &lo, &hi);
            if (lo < o->runs[k].lo) lo = o->runs[k].lo;
            if (hi > o->runs[k].hi) hi = o->runs[k].hi;
            if (lo < hi) p[np++] = (CommPiece){AT(o->be, o->runs[k].wb, lo - o->runs[k].lo), hi - lo, lo, r};
        }
    int rc = comm_gather_pieces(c, p, np, o->n, e);
    free(p);
    return rc;
}

void adam_sync_host(Adam *o, Model *m, int weights) {
    if (!o->master) return;
    size_t shard = (o->hi - o->lo) * sizeof(float);
    o->be->download(o->hm, o->master, shard);
    o->be->download(o->m, o->dm, shard);
    o->be->download(o->v, o->dv, shard);
    for (int i = 0; weights && i < m->np; i++)
        if (o->offset[i] != SIZE_MAX) o->be->to_f32(m->w[i], m->wb[i], (size_t)param_numel(&m->ps[i]));
}

void adam_sync_backend(Adam *o, Model *m) {
    if (!o->master) return;
    size_t shard = (o->hi - o->lo) * sizeof(float);
    for (int i = 0; i < m->np; i++) {  // the shard's part of each tensor: its masters
        size_t a, b;
        if (in_shard(o, m, i, &a, &b)) o->be->upload(o->master + o->offset[i] + a - o->lo, m->w[i] + a, (b - a) * sizeof(float));
    }
    for (int i = 0; i < m->np; i++)  // the weights rounded from the masters, as a step leaves them
        if (o->offset[i] != SIZE_MAX) o->be->from_f32(m->wb[i], m->w[i], (size_t)param_numel(&m->ps[i]));
    o->be->upload(o->dm, o->m, shard);
    o->be->upload(o->dv, o->v, shard);
}

void adam_grads_to_host(const Adam *o, float *host) { o->be->download(host, o->flat_grad, o->n * sizeof(float)); }
