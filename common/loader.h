// loader.h: the training data loader over packed shards (pack.h). One item = one packed sequence
// (micro-batch 1 with packing, as upstream). The order is a seeded permutation per epoch, dealt
// round-robin to the data-parallel ranks (each rank gets floor(N / world) sequences per epoch); a
// cursor (the rank's position in that endless order) is all a checkpoint needs to resume exactly.
// A pool of worker threads reads, decodes, resizes, normalises and patchifies ahead of the consumer.
#pragma once
#include <stdint.h>

#include "util.h"

typedef struct {
    char key[32];          // ps_XXXXXXXX of the packed sequence
    int64_t position;      // this rank's position in its order (the cursor before it was taken)
    int32_t *ids, *labels; // [n]
    int n;
    int32_t *cu_seqlens;   // [nseq + 1]
    int nseq;
    float *pixels;         // [rows, 588] in 2×2-block order, images concatenated
    int64_t rows;
    int32_t *grid_thw;     // [nimg, 3] = (1, h/14, w/14)
    int nimg;
} Batch;

void batch_free(Batch *b);

typedef struct {
    char **shards;
    int nshards;
    int rank, world;
    uint64_t seed;
    int workers;           // decoding threads
    int prefetch;          // sequences prepared ahead of the consumer
    int64_t start;         // cursor to start from (0, or one saved by loader_cursor)
} LoaderOptions;

typedef struct Loader Loader;

Loader *loader_open(const LoaderOptions *o, Err *e);
// The next sequence in order (blocks until it is ready). Returns -1 when a shard is damaged.
int loader_next(Loader *l, Batch *b, Err *e);
// The position of the next sequence loader_next will return: save it; reopen with start = it.
int64_t loader_cursor(const Loader *l);
int64_t loader_epoch_size(const Loader *l);  // sequences per epoch on this rank
void loader_close(Loader *l);
