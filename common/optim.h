// optim.h: AdamW over the trainable tensors of a model (spec/training.md §4): decoupled weight
// decay on tensors with ndim >= 2 only, bias correction, eps added after the square root. The
// trainable tensors are laid out in one flat vector (table order, each starting at a multiple of 64
// floats); gradients are held in full, while moments exist only for this rank's shard [lo, hi) of
// that vector (ZeRO-1). A frozen tensor has no gradient, no moments and no decay.
// Gradients, moments and (off the cpu) fp32 master weights live in the model's backend memory; the
// host copies m, v and the model's fp32 weights are what checkpoints read and write, kept in step by
// adam_sync_host / adam_sync_backend (no-ops on the cpu, where they are the same memory).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
    float grad_scale;    // the gradients are taken times this (the clipping coefficient; 1: none)
} AdamHyper;

typedef struct {
    const Backend *be;
    int np;
    size_t *offset;      // [np]: start of tensor i in the flat vector, SIZE_MAX when frozen
    float **grad;        // [np]: gradient of tensor i (a view of flat_grad), NULL when frozen
    float *flat_grad;    // [n] backend memory (and zeroed slack past n for the collectives)
    size_t n;            // flat length, padding included
    size_t lo, hi;       // this rank's shard
    float *m, *v;        // [hi - lo] host
    float *dm, *dv;      // [hi - lo] backend memory (m, v on the cpu)
    float *master;       // [n] fp32 masters in backend memory, off the cpu (NULL on the cpu: the weights are fp32)
    int64_t t;           // optimizer steps taken
} Adam;

// trainable[i] != 0 for the tensors that train (model_trainable); the shard is [lo, hi) of the flat
// vector (0, n for one rank: call adam_layout_size first to know n).
size_t adam_layout_size(const Model *m, const int *trainable);
void adam_init(Adam *o, const Model *m, const int *trainable, size_t lo, size_t hi);
void adam_free(Adam *o);
void adam_zero_grad(Adam *o);
// Σ g² over the shard (double accumulation): combine the shards' sums for the global norm.
double adam_shard_sq_norm(const Adam *o);
// One step on the shard's elements of every trainable tensor (the model's weights there are updated).
void adam_step(Adam *o, Model *m, const AdamHyper *h);
// The trainable weights to / from the flat layout (host, for gathering the shards' updates).
void adam_params_to_flat(const Adam *o, const Model *m, float *flat);
void adam_params_from_flat(const Adam *o, Model *m, const float *flat);
// The backend's weights rewritten from the fp32 masters (after the masters were all-gathered on the
// device); nothing on the cpu.
void adam_refresh_params(const Adam *o, Model *m);
// Masters into the model's host fp32 weights and moments into m, v (before a save) / the other way,
// rewriting the backend's copy of the weights too (after a resume).
void adam_sync_host(Adam *o, Model *m);
void adam_sync_backend(Adam *o, Model *m);
// The gradients (flat layout) into a host buffer of n floats.
void adam_grads_to_host(const Adam *o, float *host);
