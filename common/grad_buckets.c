// grad_buckets.c: see grad_buckets.h.
#include "grad_buckets.h"

#include <stdint.h>
#include <stdlib.h>

#include "util.h"

void grad_buckets_init(GradBuckets *g, Comm *comm, const Adam *opt, size_t bucket, float scale) {
    *g = (GradBuckets){.comm = comm, .opt = opt, .scale = scale};
    // boundaries from the end down: close a bucket at the first tensor start that makes it big enough
    size_t *cut = xmalloc(((size_t)opt->np + 2) * sizeof(size_t));
    int nc = 0;
    size_t hi = opt->n;
    cut[nc++] = hi;
    for (int i = opt->np - 1; i >= 0; i--) {
        size_t off = opt->offset[i];
        if (off == SIZE_MAX || off == 0) continue;  // frozen, or the first tensor (the last bucket ends at 0)
        if (bucket && hi - off >= bucket) cut[nc++] = hi = off;
    }
    cut[nc++] = 0;
    g->nb = nc - 1;
    g->start = xmalloc((size_t)nc * sizeof(size_t));
    for (int k = 0; k < nc; k++) g->start[k] = cut[nc - 1 - k];  // ascending
    free(cut);
    g->next = -1;
}

void grad_buckets_free(GradBuckets *g) {
    free(g->start);
    g->start = NULL;
}

void grad_buckets_begin(GradBuckets *g) {
    g->next = g->nb - 1;
    g->overlapped = 0;
    g->failed = 0;
}

static void start_bucket(GradBuckets *g) {
    int k = g->next--;
    if (g->failed) return;
    if (comm_reduce_scatter_start(g->comm, g->opt->flat_grad, g->opt->n, g->start[k], g->start[k + 1], g->scale, &g->err))
        g->failed = 1;
}

void grad_buckets_final(void *ctx, int first) {
    GradBuckets *g = ctx;
    if (g->next < 0) return;
    // the lowest final element: where the first trainable tensor at or above `first` starts
    size_t frontier = g->opt->n;
    for (int i = first; i < g->opt->np; i++)
        if (g->opt->offset[i] != SIZE_MAX) { frontier = g->opt->offset[i]; break; }
    while (g->next >= 0 && g->start[g->next] >= frontier) {
        start_bucket(g);
        g->overlapped++;
    }
}

int grad_buckets_finish(GradBuckets *g, Err *e) {
    while (g->next >= 0) start_bucket(g);
    if (g->failed) { *e = g->err; return -1; }
    return comm_reduce_scatter_wait(g->comm, e);
}
