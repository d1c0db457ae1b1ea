// runtime.cu: device, stream, memory and the cuBLASLt handle of the CUDA backend (ops_cuda.h).
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common_cuda.cuh"
#include "ops_cuda.h"

cudaStream_t g_stream;  // where ops go: the main stream, or the side stream between cuda_side(1) and cuda_side(0)
static cudaStream_t g_main, g_side;
cublasLtHandle_t g_lt;
void *g_lt_workspace;
const size_t g_lt_workspace_bytes = 32u << 20;
static char g_first_error[512];

// A program's run ends at its first CUDA, cuBLAS or kernel error, naming it (exit status 1): until the next
// cuda_sync, which only ops_check and the collectives call, the error would otherwise go unreported and the run
// carry on with wrong tensors (a training step's loss read back from a dead context). ops_check turns this off
// (cuda_set_errors_fatal(0)) to report each case's error and go on to the next.
static int g_errors_fatal = 1;
extern "C" void cuda_set_errors_fatal(int on) { g_errors_fatal = on; }
void cuda_note_error(const char *what, const char *detail) {
    if (!g_first_error[0]) snprintf(g_first_error, sizeof g_first_error, "%s: %s", what, detail);
    if (g_errors_fatal) {
        g_errors_fatal = 0;  // (exit's handlers -- the profile's -- may note more)
        fprintf(stderr, "cuda: %s\n", g_first_error);
        exit(1);
    }
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

static cudaError_t g_alloc_error;  // (why the last cuda_try_alloc failed)

// device memory, or NULL where the device has not that much free (the error cleared, so that the next
// cudaGetLastError does not report it): for callers with another way, as cuDNN's buffers (our kernels then serve)
extern "C" void *cuda_try_alloc(size_t bytes) {
    void *p = NULL;
    if ((g_alloc_error = cudaMalloc(&p, bytes ? bytes : 1)) != cudaSuccess) {
        cudaGetLastError();
        return NULL;
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

extern "C" void *cuda_alloc(size_t bytes) {
    void *p = cuda_try_alloc(bytes);
    if (!p) {
        fprintf(stderr, "cuda: cannot allocate %zu bytes of device memory (%zu in use): %s\n", bytes, g_in_use,
                cudaGetErrorString(g_alloc_error));
        exit(1);
    }
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
extern "C" const char *cuda_device_tag(void) {
    static char tag[256];
    if (!tag[0]) {
        int dev = 0;
        cudaDeviceProp p;
        if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&p, dev) != cudaSuccess) return "unknown-gpu";
        snprintf(tag, sizeof tag, "%s", p.name);
        for (char *c = tag; *c; c++) if (*c == ' ' || *c == '=') *c = '_';
    }
    return tag;
}
// Uploads go through a ring of pinned host memory. From pageable memory cudaMemcpyAsync may return only once
// the copy is done (CUDA's "API synchronization behavior"), that is once the stream has reached it: the host
// then waits for all the device's earlier work, and the device idles while the host stages the copy and
// launches what follows -- each step's first uploads (its tables, the pixels: 6 MB a 1008x1008 image) came
// after the last step's work. From pinned memory the copy is queued and the call returns at once; the
// caller's source is copied into the ring first, so it may be reused or freed on return. A region of the
// ring is written again only after the copy that last read it has run (an event per copy; in a ring of
// STAGE_BYTES that is a step or more ago, so the wait is nearly always over). Larger copies go directly.
enum { STAGE_BYTES = 64 << 20, STAGE_COPIES = 256 };
static char *g_stage;  // pinned, STAGE_BYTES
static size_t g_stage_head;
static struct { size_t lo, hi; } g_copies[STAGE_COPIES];  // in flight, oldest at g_copy_first
static cudaEvent_t g_copy_done[STAGE_COPIES];           // recorded after copy slot i's
static int g_copy_first, g_ncopies;

// whether a copy still in flight reads some of [lo, hi) of the ring
static bool stage_busy(size_t lo, size_t hi) {
    for (int n = 0; n < g_ncopies; n++) {
        int j = (g_copy_first + n) % STAGE_COPIES;
        if (g_copies[j].lo < hi && lo < g_copies[j].hi) return true;
    }
    return false;
}
// room for bytes in the ring (NULL: too large, or no pinned memory), once the copies that read it are done
extern "C" void *cuda_stage(size_t bytes) {
    static bool unpinned;  // no pinned memory to be had: every copy goes directly (as with LLAVA_SAFE_KERNELS=1)
    if (bytes > STAGE_BYTES || unpinned || cuda_safe_kernels()) return NULL;
    if (!g_stage) {
        if (cudaHostAlloc((void **)&g_stage, STAGE_BYTES, cudaHostAllocDefault) != cudaSuccess) {
            g_stage = NULL, unpinned = true;
            (void)cudaGetLastError();  // (not an error of the run)
            return NULL;
        }
        for (int i = 0; i < STAGE_COPIES; i++) g_copy_done[i] = make_event();
    }
    size_t lo = (g_stage_head + 255) / 256 * 256;
    if (lo + bytes > STAGE_BYTES) lo = 0;  // wrap
    size_t hi = lo + bytes;
    // wait for the oldest copy, then the next, until none still listed reads the region (and one slot is free);
    // a copy listed later may have finished first (g_stream may be either stream), so waiting in order can only
    // wait longer than needed, never too little
    while (g_ncopies > 0 && (g_ncopies == STAGE_COPIES || stage_busy(lo, hi))) {
        CUDA_CHECK(cudaEventSynchronize(g_copy_done[g_copy_first]));
        g_copy_first = (g_copy_first + 1) % STAGE_COPIES;
        g_ncopies--;
    }
    g_stage_head = hi;
    return g_stage + lo;
}
// the copy of bytes at p (from cuda_stage, just filled) to dst, queued on the stream
extern "C" void cuda_stage_upload(void *dst, const void *p, size_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, p, bytes, cudaMemcpyHostToDevice, g_stream));
    int i = (g_copy_first + g_ncopies) % STAGE_COPIES;
    size_t lo = (size_t)((const char *)p - g_stage);
    g_copies[i].lo = lo, g_copies[i].hi = lo + bytes;
    CUDA_CHECK(cudaEventRecord(g_copy_done[i], g_stream));
    g_ncopies++;
}
extern "C" void cuda_upload(void *dst, const void *src, size_t bytes) {
    void *p = cuda_stage(bytes);
    if (!p) {
        CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g_stream));
        return;
    }
    memcpy(p, src, bytes);
    cuda_stage_upload(dst, p, bytes);
}
extern "C" void cuda_download(void *dst, const void *src, size_t bytes) {
    cuda_join();  // (what the host reads may come from the side stream)
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g_stream));
    CUDA_CHECK(cudaStreamSynchronize(g_stream));
    // flash v8's outputs are wrong where one of its waits gave up (its kernels end rather than hang): an error
    // like any other, but the kernels can only raise a flag; read where the host reads results anyway
    if (g_errors_fatal && cuda_flash_ws_unread() && cuda_flash_ws_timed_out())
        cuda_note_error("flash attention v8", "an mbarrier wait gave up (a schedule fault): its outputs are wrong");
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

int cuda_compute_capability(void) {
    static int cc = -1;
    if (cc < 0) {
        int dev = 0, major = 0, minor = 0;
        if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
            cudaGetLastError();
            major = minor = 0;
        }
        cc = 10 * major + minor;
    }
    return cc;
}

bool cuda_safe_kernels(void) {
    static int v = ENV_UNREAD;
    return cuda_env_setting(&v, "LLAVA_SAFE_KERNELS", 0) == 1;
}

static bool g_defer_frees;
static void **g_deferred;  // [g_ndeferred] given up, not yet freed
static size_t g_ndeferred, g_deferred_cap;

void cuda_defer_frees(int on) {
    g_defer_frees = on;
    if (!on) cuda_free_deferred();
}

void cuda_release(void *p) {
    if (!p) return;
    if (!g_defer_frees) {
        CUDA_CHECK(cudaStreamSynchronize(g_stream));  // (the last use of p is over)
        cuda_free(p);
        return;
    }
    if (g_ndeferred == g_deferred_cap) {
        g_deferred_cap = g_deferred_cap ? 2 * g_deferred_cap : 16;
        g_deferred = (void **)xrealloc(g_deferred, g_deferred_cap * sizeof *g_deferred);
    }
    g_deferred[g_ndeferred++] = p;
}

void cuda_free_deferred(void) {
    for (size_t i = 0; i < g_ndeferred; i++) cuda_free(g_deferred[i]);
    g_ndeferred = 0;
}

// Scratch for deterministic reductions: grown, never shrunk (the step loop stops allocating once
// the largest shape has run).
void *cuda_scratch(size_t bytes) {
    static void *p;
    static size_t cap;
    if (bytes > cap) {
        cuda_release(p);
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
