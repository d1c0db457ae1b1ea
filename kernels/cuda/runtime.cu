// runtime.cu: device, stream, memory and the cuBLASLt handle of the CUDA backend (ops_cuda.h).
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#include "common_cuda.cuh"
#include "ops_cuda.h"

cudaStream_t g_stream;  // where ops go: the main stream, or the side stream between cuda_side(1) and cuda_side(0)
static cudaStream_t g_main, g_side;
cublasLtHandle_t g_lt;
void *g_lt_workspace;
const size_t g_lt_workspace_bytes = 32u << 20;
static char g_first_error[512];

void cuda_note_error(const char *what, const char *detail) {
    if (!g_first_error[0]) snprintf(g_first_error, sizeof g_first_error, "%s: %s", what, detail);
}

extern "C" int cuda_init(int device, char *err, size_t errlen) {
    int least = 0, greatest = 0;
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess) e = cudaDeviceGetStreamPriorityRange(&least, &greatest);
    // the main stream first where the side stream's work (the optimizer's, cuda_side) competes for the SMs
    if (e == cudaSuccess) e = cudaStreamCreateWithPriority(&g_main, cudaStreamNonBlocking, greatest);
    if (e == cudaSuccess) e = cudaStreamCreateWithPriority(&g_side, cudaStreamNonBlocking, least);
    if (e != cudaSuccess) { snprintf(err, errlen, "CUDA device %d: %s", device, cudaGetErrorString(e)); return -1; }
    g_stream = g_main;
    if (cublasLtCreate(&g_lt) != CUBLAS_STATUS_SUCCESS) { snprintf(err, errlen, "cublasLtCreate failed"); return -1; }
    g_lt_workspace = cuda_alloc(g_lt_workspace_bytes);
    return 0;
}

// Two streams: the side stream takes work that may overlap the main stream's (the optimizer's updates during
// the next forward); marks (CUDA events) order the two where the results meet.
enum { MARKS = 256 };
static cudaEvent_t g_marks[MARKS], g_fork, g_joinev;
static cudaEvent_t make_event(void) {
    cudaEvent_t ev;
    CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    return ev;
}
extern "C" void cuda_side(int on) {
    if (on && g_stream == g_main) {  // the side stream starts where the main stream is now
        if (!g_fork) g_fork = make_event();
        CUDA_CHECK(cudaEventRecord(g_fork, g_main));
        CUDA_CHECK(cudaStreamWaitEvent(g_side, g_fork, 0));
        g_stream = g_side;
    } else if (!on) {
        g_stream = g_main;
    }
}
extern "C" void cuda_mark(int k) {
    if (k < 0 || k >= MARKS) { cuda_note_error("cuda_mark", "mark out of range"); return; }
    if (!g_marks[k]) g_marks[k] = make_event();
    CUDA_CHECK(cudaEventRecord(g_marks[k], g_stream));
}
extern "C" void cuda_wait_mark(int k) {  // (a mark never recorded: nothing to wait for)
    if (k >= 0 && k < MARKS && g_marks[k]) CUDA_CHECK(cudaStreamWaitEvent(g_stream, g_marks[k], 0));
}
// the main stream waits for everything issued to the side stream so far
extern "C" void cuda_join(void) {
    if (!g_joinev) g_joinev = make_event();
    CUDA_CHECK(cudaEventRecord(g_joinev, g_side));
    CUDA_CHECK(cudaStreamWaitEvent(g_main, g_joinev, 0));
}

extern "C" int cuda_sync(char *err, size_t errlen) {
    cuda_join();
    cudaError_t e = cudaStreamSynchronize(g_stream);
    if (e == cudaSuccess) e = cudaGetLastError();
    if (e != cudaSuccess) cuda_note_error("CUDA", cudaGetErrorString(e));
    if (g_first_error[0]) { snprintf(err, errlen, "%s", g_first_error); return -1; }
    return 0;
}

// Every live allocation and its size, for the in-use and peak figures (a handful of blocks: weights,
// optimizer buffers, arena blocks, scratch), so a linear table is enough.
static struct { void *p; size_t bytes; } *g_allocs;
static size_t g_nallocs, g_allocs_cap, g_in_use, g_peak;

extern "C" void *cuda_alloc(size_t bytes) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        fprintf(stderr, "cuda: cannot allocate %zu bytes of device memory (%zu in use): %s\n", bytes, g_in_use,
                cudaGetErrorString(e));
        exit(1);
    }
    if (g_nallocs == g_allocs_cap) {
        g_allocs_cap = g_allocs_cap ? 2 * g_allocs_cap : 64;
        g_allocs = (decltype(g_allocs))realloc(g_allocs, g_allocs_cap * sizeof *g_allocs);
        if (!g_allocs) { fprintf(stderr, "cuda: out of host memory\n"); exit(1); }
    }
    g_allocs[g_nallocs].p = p;
    g_allocs[g_nallocs++].bytes = bytes;
    g_in_use += bytes;
    if (g_in_use > g_peak) g_peak = g_in_use;
    return p;
}

extern "C" void cuda_free(void *p) {
    if (!p) return;
    for (size_t i = 0; i < g_nallocs; i++)
        if (g_allocs[i].p == p) {
            g_in_use -= g_allocs[i].bytes;
            g_allocs[i] = g_allocs[--g_nallocs];
            break;
        }
    cudaFree(p);
}
extern "C" size_t cuda_memory_peak(void) { return g_peak; }
// No stream synchronisation: every host source here is pageable memory, which cudaMemcpyAsync stages
// before it returns (CUDA's "API synchronization behavior"), so the caller may reuse or free it at once,
// and the copy runs in stream order. The host may then prepare the next step's tables and pixels while
// the device still works through the last one (a sync here left the GPU idle for that time).
extern "C" void cuda_upload(void *dst, const void *src, size_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g_stream));
}
extern "C" void cuda_download(void *dst, const void *src, size_t bytes) {
    cuda_join();  // (what the host reads may come from the side stream)
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g_stream));
    CUDA_CHECK(cudaStreamSynchronize(g_stream));
}
extern "C" void cuda_memset0(void *p, size_t bytes) { CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, g_stream)); }
extern "C" void cuda_memset_ff(void *p, size_t bytes) { CUDA_CHECK(cudaMemsetAsync(p, 0xFF, bytes, g_stream)); }

int cuda_env_setting(int *cache, const char *name, int unset) {
    if (*cache == ENV_UNREAD) {
        const char *e = getenv(name);
        *cache = e && *e ? atoi(e) : unset;
    }
    return *cache;
}

bool cuda_safe_kernels(void) {
    static int v = ENV_UNREAD;
    return cuda_env_setting(&v, "LLAVA_SAFE_KERNELS", 0) == 1;
}

// Scratch for deterministic reductions: grown, never shrunk (the step loop stops allocating once
// the largest shape has run).
void *cuda_scratch(size_t bytes) {
    static void *p;
    static size_t cap;
    if (bytes > cap) {
        CUDA_CHECK(cudaStreamSynchronize(g_stream));
        cuda_free(p);
        p = cuda_alloc(bytes);
        cap = bytes;
    }
    return p;
}

__global__ static void f32_to_bf16_kernel(__nv_bfloat16 *dst, const float *src, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = __float2bfloat16_rn(src[i]);
}
__global__ static void bf16_to_f32_kernel(float *dst, const __nv_bfloat16 *src, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = __bfloat162float(src[i]);
}

extern "C" void cuda_f32_to_bf16(bf16 *dst, const float *src, size_t n) {
    if (n) f32_to_bf16_kernel<<<(unsigned)((n + 255) / 256), 256, 0, g_stream>>>((__nv_bfloat16 *)dst, src, n);
    LAUNCH_CHECK();
}
extern "C" void cuda_bf16_to_f32(float *dst, const bf16 *src, size_t n) {
    if (n) bf16_to_f32_kernel<<<(unsigned)((n + 255) / 256), 256, 0, g_stream>>>(dst, (const __nv_bfloat16 *)src, n);
    LAUNCH_CHECK();
}
