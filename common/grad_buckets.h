// grad_buckets.h: the data-parallel gradient reduction overlapped with the backward (Megatron's
// --overlap-grad-reduce, spec/training.md §6). The flat gradient vector of the optimizer is cut at
// tensor starts into buckets of at least `bucket` elements, counted from its end: the table lays the
// tensors out in forward order, so the backward finishes them from the end down. As the backward
// reports that every tensor from some index on is final (ModelWork.grads_final), each bucket lying
// wholly above that point is reduce-scattered (comm_reduce_scatter_start) while the backward goes on;
// grad_buckets_finish starts the rest and waits. Buckets are fixed by the layout and always started
// from the last down, so every rank issues the same collectives in the same order, whatever its batch
// (a rank without images reports no vision milestones and starts those buckets in finish).
#pragma once
#include <stddef.h>

#include "comm.h"
#include "optim.h"

typedef struct {
    Comm *comm;
    const Adam *opt;
    float scale;       // the mean over ranks: 1 / world
    int nb;
    size_t *start;     // [nb + 1]: bucket k is [start[k], start[k+1]) of the flat vector; start[nb] = n
    int next;          // the highest bucket not started yet in this backward (-1: all started)
    int overlapped;    // buckets started during the last backward (before finish)
    int failed;
    Err err;
} GradBuckets;

// Buckets of at least `bucket` elements (0: one bucket, the whole vector).
void grad_buckets_init(GradBuckets *g, Comm *comm, const Adam *opt, size_t bucket, float scale);
void grad_buckets_free(GradBuckets *g);
// Before the backward whose gradients are the step's last (the last micro-batch).
void grad_buckets_begin(GradBuckets *g);
// ModelWork.grads_final: every trainable tensor of table index >= first has its final gradient.
void grad_buckets_final(void *ctx, int first);
// Starts the buckets left and waits for all; afterwards each rank's shard holds the mean gradient.
int grad_buckets_finish(GradBuckets *g, Err *e);
