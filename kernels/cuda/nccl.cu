// nccl.cu: the data-parallel collectives of comm.c for ranks on the CUDA backend: NCCL over device
// buffers on the backend's stream. libnccl.so.2 is opened at run time, so a program runs without it
// as long as it trains on one GPU (the GPU machines keep it in /lib/x86_64-linux-gnu; the header
// comes from the CUDA root at build time).
//
// The gradient vector is split in `world` equal chunks of `per` floats (per = ⌈n / world⌉, the same
// split as comm_shard_of); it has room for world·per floats (optim.c pads it), so rank r's chunk
// [r·per, (r+1)·per) is one contiguous piece for ncclReduceScatter in place. The updated bf16 weights
// go from each shard's owner to all by ncclBroadcast, piece by piece (optim.c: adam_gather_params).
// Overlapped with the backward (comm_reduce_scatter_start), a part x[a, b) of the gradients is instead
// reduced with one ncclReduce per rank owning some of it, to that rank, grouped, on a stream of the
// NCCL calls' own that first waits for an event recorded on the backend's stream (so the part's
// gradients are complete) — the flat shard layout stays what the optimizer and checkpoints know.
// NCCL's ring sums in a fixed order for a fixed topology: runs repeat bit for bit on the same machine.
// A collective is waited for by polling (pitfalls.md #14: a dead rank would leave the others blocked in
// NCCL for ever): between polls the caller's watch (comm.c: the other ranks' pids and the timeout) may
// give up, and then the communicator is aborted and the error returned.
#include <dlfcn.h>
#include <nccl.h>
#include <stdio.h>
#include <time.h>

#include "common_cuda.cuh"
#include "ops_cuda.h"

static struct {
    void *lib;
    ncclComm_t comm;
    int rank, world;
    ncclResult_t (*get_id)(ncclUniqueId *);
    ncclResult_t (*init_rank)(ncclComm_t *, int, ncclUniqueId, int);
    ncclResult_t (*reduce_scatter)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t);
    ncclResult_t (*broadcast)(const void *, void *, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
    ncclResult_t (*all_reduce)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t);
    ncclResult_t (*reduce)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t, int, ncclComm_t, cudaStream_t);
    ncclResult_t (*group_start)(void);
    ncclResult_t (*group_end)(void);
    ncclResult_t (*destroy)(ncclComm_t);
    ncclResult_t (*abort)(ncclComm_t);
    ncclResult_t (*async_error)(ncclComm_t, ncclResult_t *);
    const char *(*error)(ncclResult_t);
    cudaStream_t stream;      // the overlapped reductions
    cudaEvent_t ready, done;  // backend stream -> NCCL stream, and back
    int parts;                // started since the last wait
    double *f64;              // [16] device: the small all-reduces (loss, norm, flags, cursors) and the barrier
} nc;

static int nccl_open(char *err, size_t errlen) {
    if (nc.lib) return 0;
    nc.lib = dlopen("libnccl.so.2", RTLD_NOW);
    if (!nc.lib) { snprintf(err, errlen, "data parallel on the GPU needs NCCL: %s", dlerror()); return -1; }
    nc.get_id = (decltype(nc.get_id))dlsym(nc.lib, "ncclGetUniqueId");
    nc.init_rank = (decltype(nc.init_rank))dlsym(nc.lib, "ncclCommInitRank");
    nc.reduce_scatter = (decltype(nc.reduce_scatter))dlsym(nc.lib, "ncclReduceScatter");
    nc.broadcast = (decltype(nc.broadcast))dlsym(nc.lib, "ncclBroadcast");
    nc.all_reduce = (decltype(nc.all_reduce))dlsym(nc.lib, "ncclAllReduce");
    nc.reduce = (decltype(nc.reduce))dlsym(nc.lib, "ncclReduce");
    nc.group_start = (decltype(nc.group_start))dlsym(nc.lib, "ncclGroupStart");
    nc.group_end = (decltype(nc.group_end))dlsym(nc.lib, "ncclGroupEnd");
    nc.destroy = (decltype(nc.destroy))dlsym(nc.lib, "ncclCommDestroy");
    nc.error = (decltype(nc.error))dlsym(nc.lib, "ncclGetErrorString");
    nc.abort = (decltype(nc.abort))dlsym(nc.lib, "ncclCommAbort");
    nc.async_error = (decltype(nc.async_error))dlsym(nc.lib, "ncclCommGetAsyncError");
    if (!nc.get_id || !nc.init_rank || !nc.reduce_scatter || !nc.broadcast || !nc.reduce || !nc.all_reduce || !nc.group_start ||
        !nc.group_end || !nc.destroy || !nc.error || !nc.abort || !nc.async_error) {
        snprintf(err, errlen, "libnccl.so.2 lacks the NCCL functions");
        return -1;
    }
    return 0;
}

static int nccl_failed(ncclResult_t r, const char *what, char *err, size_t errlen) {
    if (r == ncclSuccess) return 0;
    snprintf(err, errlen, "%s: %s", what, nc.error(r));
    return -1;
}

extern "C" int cuda_nccl_unique_id(char *hex, size_t hexlen, char *err, size_t errlen) {
    if (hexlen < 2 * NCCL_UNIQUE_ID_BYTES + 1) { snprintf(err, errlen, "cuda_nccl_unique_id: buffer too small"); return -1; }
    ncclUniqueId id;
    if (nccl_open(err, errlen) || nccl_failed(nc.get_id(&id), "ncclGetUniqueId", err, errlen)) return -1;
    for (int i = 0; i < NCCL_UNIQUE_ID_BYTES; i++) snprintf(hex + 2 * i, 3, "%02x", (unsigned char)id.internal[i]);
    return 0;
}

extern "C" int cuda_nccl_init(int rank, int world, const char *hex, char *err, size_t errlen) {
    ncclUniqueId id;
    if (nccl_open(err, errlen)) return -1;
    for (int i = 0; i < NCCL_UNIQUE_ID_BYTES; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) { snprintf(err, errlen, "malformed NCCL id from rank 0"); return -1; }
        id.internal[i] = (char)v;
    }
    nc.rank = rank;
    nc.world = world;
    // the collectives' stream at the main stream's (the greatest) priority, as Megatron's and PyTorch's are: at the
    // default (the least) the bucket reductions' blocks would wait behind the backward's and overlap little
    int least = 0, greatest = 0;
    cudaError_t ce = cudaDeviceGetStreamPriorityRange(&least, &greatest);
    if (ce == cudaSuccess) ce = cudaStreamCreateWithPriority(&nc.stream, cudaStreamNonBlocking, greatest);
    if (ce == cudaSuccess) ce = cudaEventCreateWithFlags(&nc.ready, cudaEventDisableTiming);
    if (ce == cudaSuccess) ce = cudaEventCreateWithFlags(&nc.done, cudaEventDisableTiming);
    if (ce == cudaSuccess) ce = cudaMalloc(&nc.f64, 16 * sizeof(double));
    if (ce != cudaSuccess) { snprintf(err, errlen, "NCCL stream: %s", cudaGetErrorString(ce)); return -1; }
    cuda_defer_frees(1);
    return nccl_failed(nc.init_rank(&nc.comm, world, id, rank), "ncclCommInitRank", err, errlen);
}

// Until the stream has drained: polls the stream, NCCL's asynchronous error and the caller's watch.
static int wait_collective(CudaNcclWatch watch, void *ctx, char *err, size_t errlen) {
    for (;;) {
        cudaError_t q = cudaStreamQuery(g_stream);
        if (q != cudaErrorNotReady) {  // done, or a CUDA error to report
            int rc = cuda_sync(err, errlen);
            // the device is idle (the NCCL stream's parts were waited for through nc.done), so the buffers given
            // up in the step free without waiting
            if (rc == 0) cuda_free_deferred();
            return rc;
        }
        ncclResult_t async = ncclSuccess;
        nc.async_error(nc.comm, &async);
        int give_up = async != ncclSuccess && async != ncclInProgress;
        if (give_up) snprintf(err, errlen, "NCCL: %s", nc.error(async));
        else give_up = watch && watch(ctx, err, errlen);
        if (give_up) {
            nc.abort(nc.comm);
            nc.comm = NULL;
            return -1;
        }
        struct timespec ts = {0, 100000};  // 0.1 ms
        nanosleep(&ts, NULL);
    }
}

__global__ static void scale_f32(float *x, size_t n, float s) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= s;
}

// x[r·per, (r+1)·per) of this rank r becomes Σ_ranks x[...] · scale
extern "C" int cuda_nccl_reduce_scatter(float *x, size_t per, float scale, CudaNcclWatch watch, void *ctx, char *err,
                                        size_t errlen) {
    if (!nc.comm) { snprintf(err, errlen, "NCCL communicator is gone (aborted earlier)"); return -1; }
    float *mine = x + (size_t)nc.rank * per;
    if (nccl_failed(nc.reduce_scatter(x, mine, per, ncclFloat32, ncclSum, nc.comm, g_stream), "ncclReduceScatter", err, errlen))
        return -1;
    if (scale != 1.0f && per) {
        scale_f32<<<(unsigned)((per + 255) / 256), 256, 0, g_stream>>>(mine, per, scale);
        LAUNCH_CHECK();
    }
    return wait_collective(watch, ctx, err, errlen);
}

extern "C" int cuda_nccl_reduce_part_start(float *x, size_t a, size_t b, size_t per, float scale, char *err, size_t errlen) {
    if (!nc.comm) { snprintf(err, errlen, "NCCL communicator is gone (aborted earlier)"); return -1; }
    if (a >= b) return 0;
    CUDA_CHECK(cudaEventRecord(nc.ready, g_stream));  // the part's gradients are written by then
    CUDA_CHECK(cudaStreamWaitEvent(nc.stream, nc.ready, 0));
    if (nccl_failed(nc.group_start(), "ncclGroupStart", err, errlen)) return -1;
    for (size_t r = a / per; r < (size_t)nc.world && r * per < b; r++) {  // the owners of x[a, b)
        size_t s0 = r * per > a ? r * per : a, s1 = (r + 1) * per < b ? (r + 1) * per : b;
        if (nccl_failed(nc.reduce(x + s0, x + s0, s1 - s0, ncclFloat32, ncclSum, (int)r, nc.comm, nc.stream), "ncclReduce", err,
                        errlen)) {
            nc.group_end();
            return -1;
        }
    }
    if (nccl_failed(nc.group_end(), "ncclGroupEnd", err, errlen)) return -1;
    size_t m0 = (size_t)nc.rank * per, m1 = m0 + per;  // this rank's share of the part
    if (m0 < a) m0 = a;
    if (m1 > b) m1 = b;
    if (scale != 1.0f && m0 < m1) {
        scale_f32<<<(unsigned)((m1 - m0 + 255) / 256), 256, 0, nc.stream>>>(x + m0, m1 - m0, scale);
        LAUNCH_CHECK();
    }
    nc.parts++;
    return 0;
}

extern "C" int cuda_nccl_reduce_part_wait(CudaNcclWatch watch, void *ctx, char *err, size_t errlen) {
    if (!nc.comm) { snprintf(err, errlen, "NCCL communicator is gone (aborted earlier)"); return -1; }
    if (nc.parts) {
        CUDA_CHECK(cudaEventRecord(nc.done, nc.stream));
        CUDA_CHECK(cudaStreamWaitEvent(g_stream, nc.done, 0));
        nc.parts = 0;
    }
    return wait_collective(watch, ctx, err, errlen);
}

extern "C" int cuda_nccl_allreduce_f64(double *v, int k, CudaNcclWatch watch, void *ctx, char *err, size_t errlen) {
    if (!nc.comm) { snprintf(err, errlen, "NCCL communicator is gone (aborted earlier)"); return -1; }
    if (k < 1 || k > 16) { snprintf(err, errlen, "cuda_nccl_allreduce_f64: %d values (1 to 16)", k); return -1; }
    CUDA_CHECK(cudaMemcpyAsync(nc.f64, v, (size_t)k * sizeof(double), cudaMemcpyHostToDevice, g_stream));
    if (nccl_failed(nc.all_reduce(nc.f64, nc.f64, (size_t)k, ncclFloat64, ncclSum, nc.comm, g_stream), "ncclAllReduce", err, errlen))
        return -1;
    // polled first: a copy into pageable memory would block until the all-reduce ends, which a dead
    // rank would make never
    if (wait_collective(watch, ctx, err, errlen)) return -1;
    cudaError_t ce = cudaMemcpy(v, nc.f64, (size_t)k * sizeof(double), cudaMemcpyDeviceToHost);
    if (ce != cudaSuccess) { snprintf(err, errlen, "NCCL all-reduce result: %s", cudaGetErrorString(ce)); return -1; }
    return 0;
}

extern "C" int cuda_nccl_broadcast(void *const *ptr, const size_t *count, const int *root, int n, CudaNcclWatch watch, void *ctx,
                                   char *err, size_t errlen) {
    if (!nc.comm) { snprintf(err, errlen, "NCCL communicator is gone (aborted earlier)"); return -1; }
    if (nccl_failed(nc.group_start(), "ncclGroupStart", err, errlen)) return -1;
    for (int i = 0; i < n; i++)
        if (nccl_failed(nc.broadcast(ptr[i], ptr[i], count[i], ncclBfloat16, root[i], nc.comm, g_stream), "ncclBroadcast", err, errlen)) {
            nc.group_end();
            return -1;
        }
    if (nccl_failed(nc.group_end(), "ncclGroupEnd", err, errlen)) return -1;
    return wait_collective(watch, ctx, err, errlen);
}

extern "C" void cuda_nccl_free(void) {
    if (nc.comm) nc.destroy(nc.comm);
    cuda_defer_frees(0);
    if (nc.stream) cudaStreamDestroy(nc.stream);
    if (nc.ready) cudaEventDestroy(nc.ready);
    if (nc.done) cudaEventDestroy(nc.done);
    if (nc.f64) cudaFree(nc.f64);
    nc.f64 = NULL;
    nc.stream = NULL;
    nc.ready = nc.done = NULL;
    nc.comm = NULL;
}
