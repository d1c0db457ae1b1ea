// comm.h: ranks and collectives for data parallelism (spec/distributed.md). Under `srun --mpi=pmi2`
// (PMI_FD or PMI_PORT set) rank and world size come from Slurm's libpmi2, loaded at run time so that a
// build without it still runs one rank; otherwise this process is rank 0 of 1. The ranks of each node
// share one POSIX shared-memory segment whose name travels through the PMI2 key-value store: on the
// cpu every collective runs there (so the ranks must share one node); on GPUs (comm_use_nccl) every
// collective is NCCL, and the ranks may span nodes.
//
// Every collective is deterministic: sums run over ranks in rank order (NCCL: in its fixed order for a
// fixed topology), so a run repeats bit for bit. A rank of the node that dies (its pid disappears), an
// error NCCL reports (a rank elsewhere gone), or a wait longer than the timeout makes every other rank
// fail with a clear error instead of hanging.
#pragma once
#include <stddef.h>

#include "util.h"

typedef struct Comm Comm;

// Rank, world size, and (world > 1) the shared segment for vectors of up to max_floats floats.
Comm *comm_init(size_t max_floats, double timeout_s, Err *e);
int comm_rank(const Comm *c);
int comm_world(const Comm *c);
// The shard [lo, hi) of a vector of n floats that this rank owns (n split in equal contiguous parts;
// the last part may be shorter).
void comm_shard(const Comm *c, size_t n, size_t *lo, size_t *hi);
// The same split for any rank of any world size (to read other ranks' shards from a checkpoint).
void comm_shard_of(size_t n, int world, int rank, size_t *lo, size_t *hi);
// From now on the vectors given to comm_reduce_scatter and comm_gather_pieces are device buffers of the
// CUDA backend with room for world·⌈n/world⌉ floats, and the two go through NCCL (the id from rank 0
// through the PMI2 key-value store), as do the barrier and the f64 all-reduce. Also works for one rank
// (to exercise the path on one GPU). The dead-rank watch of the node stays on the shared segment.
int comm_use_nccl(Comm *c, Err *e);
// ZeRO-1 gradient reduction: afterwards x[lo, hi) of this rank's shard holds Σ_ranks x · scale (the
// rest of x is left as it was).
int comm_reduce_scatter(Comm *c, float *x, size_t n, float scale, Err *e);
// The same for the part x[a, b) of the vector (0 <= a <= b <= n), started now and finished by
// comm_reduce_scatter_wait: afterwards x[max(a, lo), min(b, hi)) holds Σ_ranks x · scale. On NCCL it runs
// on a stream of its own after the work already queued on the backend's stream (which goes on
// meanwhile: the backward of the layers below); on the shared segment it is done on return. Every
// rank must start the same parts in the same order. On the shared segment sums run in rank order per
// element, so any split into parts gives the bits of one comm_reduce_scatter (NCCL's order depends on
// the collective: parts repeat run to run, but need not equal the whole vector's bits).
int comm_reduce_scatter_start(Comm *c, float *x, size_t n, size_t a, size_t b, float scale, Err *e);
int comm_reduce_scatter_wait(Comm *c, Err *e);
// A piece of a vector that one rank (root) holds and every rank needs: count elements at ptr, which
// sit at [flat, flat + count) of the vector's flat layout (of n elements).
typedef struct {
    void *ptr;
    size_t count, flat;
    int root;
} CommPiece;
// Every piece from its root to every rank, in place: on NCCL bf16 elements in device memory (one
// broadcast each, grouped), on the shared segment floats in host memory.
int comm_gather_pieces(Comm *c, const CommPiece *p, int np, size_t n, Err *e);
// v[0..k) summed over ranks (k <= 16), in place.
int comm_allreduce_f64(Comm *c, double *v, int k, Err *e);
int comm_barrier(Comm *c, Err *e);
void comm_free(Comm *c);
