// optim.h: AdamW over the trainable tensors of a model (spec/training.md §4): decoupled weight
// decay on tensors with ndim >= 2 only, bias correction, eps added after the square root. The
// trainable tensors are laid out in one flat vector (table order, each starting at a multiple of
// PARAM_ALIGN elements); gradients are held in full, while moments and (off the cpu) fp32 master
// weights exist only for this rank's shard [lo, hi) of that vector (ZeRO-1, Megatron's distributed
// optimizer: 6 + 12/d bytes per parameter). A frozen tensor has no gradient, no moments and no decay.
// After a step each rank holds the updated weights of its shard only; adam_gather_params brings
// every rank's to every rank (on GPUs the bf16 weights, by NCCL).
// Gradients, moments and masters live in the model's backend memory; the host copies m, v, hm and
// the model's fp32 weights are what checkpoints read and write, kept in step by adam_sync_host /
// adam_sync_backend (no-ops on the cpu, where they are the same memory).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "comm.h"
#include "model.h"

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
    float grad_scale;    // the gradients are taken times this (the clipping coefficient; 1: none)
} AdamHyper;

typedef struct {       // consecutive trainable tensors: [lo, hi) of the flat vector, at wb in the backend's weights
    size_t lo, hi;
    Act *wb;
} AdamRun;

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
    float *master;       // [hi - lo] fp32 masters of the shard in backend memory, off the cpu (NULL on the cpu:
                         // the weights are the fp32 masters)
    float *hm;           // [hi - lo] host copy of master (what a checkpoint stores); NULL on the cpu
    AdamRun *runs;
    int nruns;
    int64_t t;           // optimizer steps taken
    int overlap;         // LLAVA_OVERLAP_OPT=1: adam_step on the backend's side stream (below)
    AdamSeg *seg;        // [np] the small tensors' updates gathered into one adamw_segments call (NULL: none; see
                         // adam_step), unless LLAVA_ADAM_SEGMENTS=0
    int *order;          // [np] the tensors in adam_step's order: by model_weight_mark with overlap, else table order
} Adam;

// trainable[i] != 0 for the tensors that train (model_trainable); the shard is [lo, hi) of the flat
// vector (0, n for one rank: call adam_layout_size first to know n).
size_t adam_layout_size(const Model *m, const int *trainable);
void adam_init(Adam *o, const Model *m, const int *trainable, size_t lo, size_t hi);
void adam_free(Adam *o);
// Σ g² over the shard (double accumulation): combine the shards' sums for the global norm.
double adam_shard_sq_norm(const Adam *o);
// One step on the shard's elements of every trainable tensor (the model's weights there are updated).
// With o->overlap (LLAVA_OVERLAP_OPT=1 at adam_init) the updates go to the backend's side stream in the
// order the next forward reads the tensors, each group ending with its mark (model_weight_mark), so that
// the next forward waits only for the group it is about to use: the optimizer's memory-bound pass runs
// under the forward's products. The results are the same; only the timing changes.
void adam_step(Adam *o, Model *m, const AdamHyper *h);
// Every rank's updated shard of the backend's trainable weights to every rank (after adam_step).
int adam_gather_params(const Adam *o, Comm *c, Err *e);
// The model's host fp32 trainable weights to / from the flat layout.
void adam_params_to_flat(const Adam *o, const Model *m, float *flat);
void adam_params_from_flat(const Adam *o, Model *m, const float *flat);
// Before a save: the shard's masters and moments into hm, m, v, and (weights != 0) the backend's
// trainable weights into the model's host fp32 weights (what the model file holds: the weights the
// model computes with, bf16 off the cpu, as Megatron saves them; the fp32 masters go in the optimizer
// shards). After a resume, the other way: masters of the shard and the backend's weights from the
// model's host weights (which ckpt_load_state filled with the fp32 masters), moments from m, v.
void adam_sync_host(Adam *o, Model *m, int weights);
void adam_sync_backend(Adam *o, Model *m);
// The gradients (flat layout) into a host buffer of n floats.
void adam_grads_to_host(const Adam *o, float *host);
