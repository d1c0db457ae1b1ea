// common_cuda.cuh: what the CUDA backend's files share: the stream, the cuBLASLt handle, error
// recording (the first error is kept and reported by cuda_sync), bf16 helpers and warp reductions.
#pragma once
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

extern cudaStream_t g_stream;
extern cublasLtHandle_t g_lt;
extern void *g_lt_workspace;
extern const size_t g_lt_workspace_bytes;

void cuda_note_error(const char *what, const char *detail);
void *cuda_scratch(size_t bytes);
// A buffer given up while the step runs (a scratch or table outgrown): freed at once on one rank, but with NCCL
// collectives (cuda_defer_frees(1), nccl.cu) kept until cuda_free_deferred, which the collectives' polled wait calls
// once the stream has drained. cudaFree waits for the whole device, the bucket reductions queued on NCCL's stream
// included, and outside that poll: a rank that died would hold this one there for ever, past --comm-timeout.
void cuda_release(void *p);
void cuda_defer_frees(int on);
void cuda_free_deferred(void);

// Sums over rows without atomics: blocks write partial sums of ROWS_PER_PART rows each, part[p, c], and
// reduce_parts adds them to out[c] in part order (elementwise.cu), so a run repeats bit for bit.
enum { ROWS_PER_PART = 64 };
void reduce_parts(float *out, const float *part, int nparts, int C);
// An integer setting from the environment (LLAVA_FLASH_EXP2, LLAVA_NORM_RPW, ...), read once: *cache starts at
// ENV_UNREAD and keeps the value (atoi of it), or `unset` where the variable is absent or empty; a setter that
// stores ENV_UNREAD makes the next call read the environment again.
enum { ENV_UNREAD = -1000000 };
int cuda_env_setting(int *cache, const char *name, int unset);
// LLAVA_SAFE_KERNELS=1: the kernels of session 15 not yet run on a GPU (the one-pass norm backwards, the QK-norm +
// RoPE backward kernel, the 16-byte copy/gather/scatter) give way to the earlier ones, and so do session 19's (not
// yet run either): uploads go directly instead of through the pinned staging ring, the bias gradient is summed apart
// from the weight gradient's product, and the norm gradients' fills are one memset each (tests/gpu/run.sh sets it
// when ops_check finds any of them wrong)
bool cuda_safe_kernels(void);
// the current device's compute capability as major·10 + minor (90: Hopper), read once; 0 where it cannot be read
int cuda_compute_capability(void);
// host memory, or the run ends naming the size (common/util.c)
extern "C" void *xmalloc(size_t n);
extern "C" void *xrealloc(void *p, size_t n);

#define CUDA_CHECK(x)                                                  \
    do {                                                               \
        cudaError_t e_ = (x);                                          \
        if (e_ != cudaSuccess) cuda_note_error(#x, cudaGetErrorString(e_)); \
    } while (0)
#define LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

typedef __nv_bfloat16 bf16_t;
#define B16(p) ((bf16_t *)(p))
#define CB16(p) ((const bf16_t *)(p))

__device__ __forceinline__ float ld(const bf16_t *p, size_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void st(bf16_t *p, size_t i, float x) { p[i] = __float2bfloat16_rn(x); }

__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
__device__ __forceinline__ float warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

// Eight bf16 in one 16-byte access (the element-wise kernels are bandwidth-bound: one 2-byte load per
// thread leaves most of the card's bandwidth unused). p must be 16-byte aligned; aligned16 says so.
struct __align__(16) bf16x8 { __nv_bfloat162 h[4]; };
__device__ __forceinline__ void load8(float *f, const bf16_t *p) {
    bf16x8 v = *(const bf16x8 *)p;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float2 t = __bfloat1622float2(v.h[k]);
        f[2 * k] = t.x, f[2 * k + 1] = t.y;
    }
}
__device__ __forceinline__ void store8(bf16_t *p, const float *f) {
    bf16x8 v;
#pragma unroll
    for (int k = 0; k < 4; k++) v.h[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
    *(bf16x8 *)p = v;
}
__host__ __device__ __forceinline__ bool aligned16(const void *p) { return ((size_t)p & 15) == 0; }

// The same accesses on fp32 rows (the fp32 residual stream: kernels templated on the row type R take either),
// and what a row of each type keeps of a value it stores: the bf16 rounding, or the value.
__device__ __forceinline__ float ld(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ void st(float *p, size_t i, float x) { p[i] = x; }
__device__ __forceinline__ void load8(float *f, const float *p) {
    float4 a = ((const float4 *)p)[0], b = ((const float4 *)p)[1];
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}
__device__ __forceinline__ void store8(float *p, const float *f) {
    ((float4 *)p)[0] = make_float4(f[0], f[1], f[2], f[3]);
    ((float4 *)p)[1] = make_float4(f[4], f[5], f[6], f[7]);
}
__device__ __forceinline__ float kept(float x, const bf16_t *) { return __bfloat162float(__float2bfloat16_rn(x)); }
__device__ __forceinline__ float kept(float x, const float *) { return x; }

// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024); every thread gets it.
__device__ __forceinline__ float block_sum(float x) {
    __shared__ float part[32];
    __syncthreads();  // part may still be read by a previous call
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    x = warp_sum(x);
    if (lane == 0) part[warp] = x;
    __syncthreads();
    x = lane < nw ? part[lane] : 0.0f;
    return warp_sum(x);
}
__device__ __forceinline__ float block_max(float x) {
    __shared__ float part[32];
    __syncthreads();
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    x = warp_max(x);
    if (lane == 0) part[warp] = x;
    __syncthreads();
    x = lane < nw ? part[lane] : -INFINITY;
    return warp_max(x);
}

// LLAVA_PROFILE=FILE: device time per Backend op (profile.cu). prof_begin returns -1 when profiling is
// off; PROF wraps one call with a printf-style label (the op and its shape).
int prof_begin(const char *fmt, ...);
void prof_end(int pair);
#define PROF(call, ...)                       \
    do {                                      \
        int prof_pair_ = prof_begin(__VA_ARGS__); \
        call;                                 \
        prof_end(prof_pair_);                 \
    } while (0)
