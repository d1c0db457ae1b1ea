// norms.cu: RMSNorm and LayerNorm on the GPU (ops_cuda.h), forward and backward, with the residual add fused
// into the forward (add + norm) and the QK-norm fused with RoPE (the LLM's per-head q/k norms). A row per block
// or per warp; statistics fp32; the weight (and bias) gradients go through per-block partial sums that
// reduce_parts adds in a fixed order, never atomics, so a run repeats bit for bit. The residual rows -- the input,
// the fused sum and its input a, and dinp -- are of type R: bf16, or fp32 for the fp32 residual stream (the _r32
// entry points); outputs, dout, the branch input b and the weights are bf16 either way. The fp32 backwards also
// write dinp rounded to bf16 into dinp16 when it is not NULL: the copy the next products read, in the same pass.
#include <math.h>

#include "common_cuda.cuh"
#include "ops_cuda.h"

// With b: the row is first sum = x + b (rounded to R, written), and the norm is taken of it; the later
// passes read it back from sum (the thread's own elements: no barrier needed).
template <typename R>
__device__ __forceinline__ const R *row_with_residual(const R *xr, const bf16_t *br, R *sr, int C) {
    if (!br) return xr;
    for (int c = threadIdx.x; c < C; c += blockDim.x) st(sr, c, ld(xr, c) + ld(br, c));
    return sr;
}

// ---- RMSNorm ----
template <typename R>
__global__ static void rmsnorm_fwd(bf16_t *out, float *rstd, const R *x, const bf16_t *w, int C, float eps, const bf16_t *b, R *sum) {
    size_t row = blockIdx.x;
    const R *xr = row_with_residual(x + row * C, b ? b + row * C : NULL, sum ? sum + row * C : NULL, C);
    float ss = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) { float v = ld(xr, c); ss += v * v; }
    float r = rsqrtf(block_sum(ss) / C + eps);
    if (threadIdx.x == 0) rstd[row] = r;
    for (int c = threadIdx.x; c < C; c += blockDim.x) st(out, row * C + c, ld(xr, c) * r * ld(w, c));
}

// dx = r·w·dy − x·r³·mean(w·dy·x)
template <typename R>
__global__ static void rmsnorm_bwd_dx(R *dinp, bf16_t *dinp16, const bf16_t *dy, const R *x, const bf16_t *w, const float *rstd, int C) {
    size_t row = blockIdx.x;
    float r = rstd[row], dot = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dot += ld(w, c) * ld(dy, row * C + c) * ld(x, row * C + c);
    dot = block_sum(dot) / C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        size_t i = row * C + c;
        float v = ld(dinp, i) + r * ld(w, c) * ld(dy, i) - ld(x, i) * r * r * r * dot;
        st(dinp, i, v);
        if (sizeof(R) == 4 && dinp16) st(dinp16, i, v);
    }
}

// part[p, c] = Σ over the part's rows of dy·x·r
template <typename R>
__global__ static void rmsnorm_bwd_dw(float *part, const bf16_t *dy, const R *x, const float *rstd, int N, int C) {
    int p = blockIdx.y, c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0.0f;
    for (int n = p * ROWS_PER_PART; n < N && n < (p + 1) * ROWS_PER_PART; n++) s += ld(dy, (size_t)n * C + c) * ld(x, (size_t)n * C + c) * rstd[n];
    part[(size_t)p * C + c] = s;
}

// the row of the warp-per-row kernels below (blocks of 8 warps, blocks_of_warps)
__device__ __forceinline__ size_t warp_row() { return (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; }

// The same two backward passes with a warp per row and 8 elements per lane and access (rows of C a
// multiple of 8, 16-byte aligned): a block per row synchronises its warps twice per row, which at
// C = 128 (the QK norms, 262,144 rows) or 2560 left the kernels at under 1 TB/s. The second pass reads
// the row again (from L1/L2) instead of holding C/32 values per lane in registers.
template <typename R>
__global__ static void rmsnorm_bwd_dx8(R *dinp, bf16_t *dinp16, const bf16_t *dy, const R *x, const bf16_t *w, const float *rstd, int N,
                                       int C) {
    size_t row = warp_row();
    int lane = threadIdx.x % 32;
    if (row >= (size_t)N) return;
    const bf16_t *dyr = dy + row * C;
    const R *xr = x + row * C;
    float r = rstd[row], dot = 0.0f, wv[8], dv[8], xv[8], o[8];
    for (int c = lane * 8; c < C; c += 256) {
        load8(wv, w + c), load8(dv, dyr + c), load8(xv, xr + c);
#pragma unroll
        for (int k = 0; k < 8; k++) dot += wv[k] * dv[k] * xv[k];
    }
    dot = warp_sum(dot) / C;
    for (int c = lane * 8; c < C; c += 256) {
        load8(wv, w + c), load8(dv, dyr + c), load8(xv, xr + c), load8(o, dinp + row * C + c);
#pragma unroll
        for (int k = 0; k < 8; k++) o[k] = o[k] + r * wv[k] * dv[k] - xv[k] * r * r * r * dot;
        store8(dinp + row * C + c, o);
        if (sizeof(R) == 4 && dinp16) store8(dinp16 + row * C + c, o);
    }
}

// part_w[p, c..c+7] = Σ over the part's rows of dy·(x − mean)·rstd (mean NULL: 0, RMSNorm) and, unless
// part_b is NULL, part_b[p, c..c+7] = Σ dy; 8 columns per thread, each column in the scalar kernels' order
template <typename R>
__global__ static void norm_bwd_dw8(float *part_w, float *part_b, const bf16_t *dy, const R *x, const float *mean, const float *rstd,
                                    int N, int C) {
    int p = blockIdx.y, c = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (c >= C) return;
    float sw[8] = {0}, sb[8] = {0}, dv[8], xv[8];
    for (int n = p * ROWS_PER_PART; n < N && n < (p + 1) * ROWS_PER_PART; n++) {
        load8(dv, dy + (size_t)n * C + c), load8(xv, x + (size_t)n * C + c);
        float mu = mean ? mean[n] : 0.0f, r = rstd[n];
#pragma unroll
        for (int k = 0; k < 8; k++) {
            sw[k] += dv[k] * (xv[k] - mu) * r;
            sb[k] += dv[k];
        }
    }
#pragma unroll
    for (int k = 0; k < 8; k++) {
        part_w[(size_t)p * C + c + k] = sw[k];
        if (part_b) part_b[(size_t)p * C + c + k] = sb[k];
    }
}

// dx and the weight (and bias) gradients in one pass over the rows, for C = 256·CH (the 4B's 2560, RICE-L's
// 1024): dx8's two passes over a row (the second from L1), the partial sums of dw (and db) kept per lane
// meanwhile, so that dy and x are not read from memory again by norm_bwd_dw8. A block's 8 warps take
// rpw rows each (launch_fused8_k); their sums are added in warp order in shared memory (deterministic) and written as the
// block's part for reduce_parts. LN: LayerNorm (x̂ = (x − mean)·rstd), with part_b = Σ dy unless NULL; else
// RMSNorm (x̂ = x·rstd). dx accumulates, as in the separate kernels.
template <int CH, bool LN, typename R>
__global__ static void __launch_bounds__(256) norm_bwd_fused8(R *dinp, bf16_t *dinp16, float *part_w, float *part_b, const bf16_t *dy,
                                                                const R *x, const bf16_t *w, const float *mean, const float *rstd, int N,
                                                                int rpw) {
    constexpr int C = 256 * CH;
    __shared__ float acc_w[C], acc_b[LN ? C : 1];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float sw[CH][8] = {}, sb[LN ? CH : 1][8] = {};
    for (int i = 0; i < rpw; i++) {
        size_t row = ((size_t)blockIdx.x * 8 + warp) * rpw + i;
        if (row >= (size_t)N) break;  // (the warp's other rows are past N too)
        const bf16_t *dyr = dy + row * C;
        const R *xr = x + row * C;
        float mu = LN ? mean[row] : 0.0f, r = rstd[row], sg = 0.0f, sgx = 0.0f, wv[8], dv[8], xv[8], o[8];
#pragma unroll
        for (int ch = 0; ch < CH; ch++) {
            int c = ch * 256 + lane * 8;
            load8(wv, w + c), load8(dv, dyr + c), load8(xv, xr + c);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                float g = wv[k] * dv[k], xh = (xv[k] - mu) * r;
                sg += g;
                sgx += g * xh;
                sw[ch][k] += dv[k] * xh;
                if (LN) sb[LN ? ch : 0][k] += dv[k];
            }
        }
        sg = warp_sum(sg) / C;
        sgx = warp_sum(sgx) / C;
#pragma unroll
        for (int ch = 0; ch < CH; ch++) {
            int c = ch * 256 + lane * 8;
            load8(wv, w + c), load8(dv, dyr + c), load8(xv, xr + c), load8(o, dinp + row * C + c);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                float xh = (xv[k] - mu) * r;
                // LayerNorm: r·(w·dy − mean(w·dy) − x̂·mean(w·dy·x̂)); RMSNorm: r·(w·dy − x̂·mean(w·dy·x̂))
                o[k] = o[k] + r * (wv[k] * dv[k] - (LN ? sg : 0.0f) - xh * sgx);
            }
            store8(dinp + row * C + c, o);
            if (sizeof(R) == 4 && dinp16) store8(dinp16 + row * C + c, o);
        }
    }
    for (int k = 0; k < 8; k++) {  // the warps' sums into shared memory, in warp order
        if (warp == k)
#pragma unroll
            for (int ch = 0; ch < CH; ch++)
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    int c = ch * 256 + lane * 8 + e;
                    acc_w[c] = (k ? acc_w[c] : 0.0f) + sw[ch][e];
                    if (LN) acc_b[LN ? c : 0] = (k ? acc_b[LN ? c : 0] : 0.0f) + sb[LN ? ch : 0][e];
                }
        __syncthreads();
    }
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        part_w[(size_t)blockIdx.x * C + c] = acc_w[c];
        if (LN && part_b) part_b[(size_t)blockIdx.x * C + c] = acc_b[LN ? c : 0];
    }
}

// Rows per warp of norm_bwd_fused8: 2 (measured in session 16: 16 rows a block, e.g. 325 blocks for the tower's
// 5185 rows, 1.2 waves of two blocks per SM), or with LLAVA_NORM_RPW=0 (cuda_norm_set_rows_per_warp(0)) as few
// as fill the card once (at least one), or LLAVA_NORM_RPW=n; not yet measured against 2. The row partition
// decides the order of the dw sums: bit-reproducible on the same card and setting.
static int rpw_setting = ENV_UNREAD;  // -1: 2; 0: fill the card once; n: n
// LLAVA_NORM_FUSED=0 (cuda_norm_set_fused(0)): the two-pass form instead (dx8 with no dw sums, so more warps a SM;
// then norm_bwd_dw8 over the rows again), to time against the one-pass kernel (ops_check's memory timings)
static int fused_setting = ENV_UNREAD;
static bool norm_fused(void) { return cuda_env_setting(&fused_setting, "LLAVA_NORM_FUSED", 1) == 1; }
extern "C" void cuda_norm_set_fused(int on) { fused_setting = on < 0 ? (int)ENV_UNREAD : on != 0; }
extern "C" void cuda_norm_set_rows_per_warp(int n) { rpw_setting = n == -2 ? (int)ENV_UNREAD : n; }
// warps of norm_bwd_fused8<CH, LN> resident at once on this card (asked once per kernel)
template <int CH, bool LN, typename R> static long fused8_warp_slots(void) {
    static long slots;
    if (!slots) {
        int dev = 0, sms = 0, per_sm = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
        CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, norm_bwd_fused8<CH, LN, R>, 256, 0));
        slots = (long)(sms > 0 ? sms : 1) * (per_sm > 0 ? per_sm : 1) * 8;
    }
    return slots;
}
template <int CH, bool LN, typename R>
static void launch_fused8_k(void *dinp, bf16 *dinp16, float *dw, float *db, const bf16 *dout, const void *inp, const bf16 *w, const float *mean,
                            const float *rstd, int N) {
    constexpr int C = 256 * CH;
    int setting = cuda_env_setting(&rpw_setting, "LLAVA_NORM_RPW", -1);
    int rpw = setting > 0 ? setting : 2;
    if (setting == 0) {
        long slots = fused8_warp_slots<CH, LN, R>();
        rpw = (int)((N + slots - 1) / slots);
    }
    unsigned parts = (unsigned)((N + 8 * rpw - 1) / (8 * rpw));
    float *part = (float *)cuda_scratch((size_t)(db ? 2 : 1) * parts * C * sizeof(float)), *part_b = db ? part + (size_t)parts * C : NULL;
    norm_bwd_fused8<CH, LN, R><<<parts, 256, 0, g_stream>>>((R *)dinp, B16(dinp16), part, part_b, CB16(dout), (const R *)inp, CB16(w), mean, rstd, N,
                                                           rpw);
    LAUNCH_CHECK();
    reduce_parts(dw, part, (int)parts, C);
    if (db) reduce_parts(db, part_b, (int)parts, C);
}
template <int CH, typename R>
static void launch_fused8(void *dinp, bf16 *dinp16, float *dw, float *db, const bf16 *dout, const void *inp, const bf16 *w,
                          const float *mean, const float *rstd, int N) {
    if (mean) launch_fused8_k<CH, true, R>(dinp, dinp16, dw, db, dout, inp, w, mean, rstd, N);
    else launch_fused8_k<CH, false, R>(dinp, dinp16, dw, NULL, dout, inp, w, NULL, rstd, N);
}
// norm_bwd_fused8 where it applies (dx and dw wanted, C = 256·CH with CH ≤ 10, the 8-wide kernels' alignment):
// false otherwise, and nothing launched
template <typename R>
static bool norm_bwd_fused(void *dinp, bf16 *dinp16, float *dw, float *db, const bf16 *dout, const void *inp, const bf16 *w, const float *mean,
                           const float *rstd, int N, int C, bool vec) {
    if (!dinp || !dw || !vec || C % 256 || C > 2560 || (db && !mean) || cuda_safe_kernels() || !norm_fused()) return false;
    switch (C / 256) {
    case 1: launch_fused8<1, R>(dinp, dinp16, dw, db, dout, inp, w, mean, rstd, N); break;
    case 2: launch_fused8<2, R>(dinp, dinp16, dw, db, dout, inp, w, mean, rstd, N); break;
    case 3: launch_fused8<3, R>(dinp, dinp16, dw, db, dout, inp, w, mean, rstd, N); break;
    case 4: launch_fused8<4, R>(dinp, dinp16, dw, db, dout, inp, w, mean, rstd, N); break;
    case 5: launch_fused8<5, R>(dinp, dinp16, dw, db, dout, inp, w, mean, rstd, N); break;
    case 6: launch_fused8<6, R>(dinp, dinp16, dw, db, dout, inp, w, mean, rstd, N); break;
    case 7: launch_fused8<7, R>(dinp, dinp16, dw, db, dout, inp, w, mean, rstd, N); break;
    case 8: launch_fused8<8, R>(dinp, dinp16, dw, db, dout, inp, w, mean, rstd, N); break;
    case 9: launch_fused8<9, R>(dinp, dinp16, dw, db, dout, inp, w, mean, rstd, N); break;
    default: launch_fused8<10, R>(dinp, dinp16, dw, db, dout, inp, w, mean, rstd, N); break;
    }
    return true;
}

static int threads_for(int C) { return C >= 1024 ? 1024 : C >= 256 ? 256 : 128; }
// rows of C elements at these pointers go through the 8-wide kernels
static bool rows8(int C, const void *a, const void *b, const void *c, const void *d) {
    return C % 8 == 0 && aligned16(a) && aligned16(b) && aligned16(c) && aligned16(d);
}
static unsigned blocks_of_warps(int rows) { return (unsigned)((rows + 7) / 8); }  // 8 warps (rows) per block of 256
static dim3 grid8(int C, int parts, int *threads) {  // 8 columns per thread, up to 128 threads per block
    int t = (C / 8 + 31) / 32 * 32;
    *threads = t < 128 ? t : 128;
    return dim3((unsigned)((C / 8 + *threads - 1) / *threads), (unsigned)parts);
}

// 8 elements of a row at i: x, or with a residual b the sum x + b as R keeps it (and stored in sum)
template <typename R>
__device__ __forceinline__ void row_piece8(float *v, const R *x, const bf16_t *b, R *sum, size_t i) {
    load8(v, x + i);
    if (!b) return;
    float u[8];
    load8(u, b + i);
#pragma unroll
    for (int k = 0; k < 8; k++) v[k] = kept(v[k] + u[k], sum);
    store8(sum + i, v);
}

// rmsnorm_fwd with a warp per row and 8 elements per access (see rmsnorm_bwd_dx8)
template <typename R>
__global__ static void rmsnorm_fwd8(bf16_t *out, float *rstd, const R *x, const bf16_t *w, int N, int C, float eps, const bf16_t *b,
                                    R *sum) {
    size_t row = warp_row();
    int lane = threadIdx.x % 32;
    if (row >= (size_t)N) return;
    float ss = 0.0f, v[8], u[8];
    for (int c = lane * 8; c < C; c += 256) {
        row_piece8(v, x, b, sum, row * C + c);
#pragma unroll
        for (int k = 0; k < 8; k++) ss += v[k] * v[k];
    }
    float r = rsqrtf(warp_sum(ss) / C + eps);
    if (lane == 0) rstd[row] = r;
    const R *src = (b ? sum : x) + row * C;  // this lane's own stores of the sum: visible to it
    for (int c = lane * 8; c < C; c += 256) {
        load8(v, src + c), load8(u, w + c);
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] = v[k] * r * u[k];
        store8(out + row * C + c, v);
    }
}

template <typename R>
static void rmsnorm_launch(bf16 *out, float *rstd, const void *x, const bf16 *w, int N, int C, float eps, const bf16 *b, void *sum) {
    if (rows8(C, out, x, w, b ? (const void *)b : (const void *)x) && (!sum || aligned16(sum)))
        rmsnorm_fwd8<R><<<blocks_of_warps(N), 256, 0, g_stream>>>(B16(out), rstd, (const R *)x, CB16(w), N, C, eps, CB16(b), (R *)sum);
    else
        rmsnorm_fwd<R><<<N, threads_for(C), 0, g_stream>>>(B16(out), rstd, (const R *)x, CB16(w), C, eps, CB16(b), (R *)sum);
    LAUNCH_CHECK();
}

extern "C" void cuda_rmsnorm_forward(bf16 *out, float *rstd, const bf16 *inp, const bf16 *w, int N, int C, float eps) {
    rmsnorm_launch<bf16_t>(out, rstd, inp, w, N, C, eps, NULL, NULL);
}
extern "C" void cuda_rmsnorm_forward_r32(bf16 *out, float *rstd, const float *inp, const bf16 *w, int N, int C, float eps) {
    rmsnorm_launch<float>(out, rstd, inp, w, N, C, eps, NULL, NULL);
}

extern "C" void cuda_add_rmsnorm_forward(bf16 *sum, bf16 *out, float *rstd, const bf16 *a, const bf16 *b, const bf16 *w, int N,
                                         int C, float eps) {
    rmsnorm_launch<bf16_t>(out, rstd, a, w, N, C, eps, b, sum);
}
extern "C" void cuda_add_rmsnorm_forward_r32(float *sum, bf16 *out, float *rstd, const float *a, const bf16 *b, const bf16 *w, int N,
                                             int C, float eps) {
    rmsnorm_launch<float>(out, rstd, a, w, N, C, eps, b, sum);
}

// QK-norm and RoPE in one pass: a block per (token, head) row, thread j owns the pair (j, j + D/2)
__global__ static void rmsnorm_rope_fwd(bf16_t *out, float *rstd, const bf16_t *x, const bf16_t *w, const float *ang, int H, int D,
                                        float eps) {
    size_t row = blockIdx.x, t = row / H;
    int half = D / 2, j = threadIdx.x;
    const bf16_t *xr = x + row * D;
    float x0 = j < half ? ld(xr, j) : 0.0f, x1 = j < half ? ld(xr, j + half) : 0.0f;
    float r = rsqrtf(block_sum(x0 * x0 + x1 * x1) / D + eps);
    if (j == 0) rstd[row] = r;
    if (j >= half) return;
    float y0 = x0 * r * ld(w, j), y1 = x1 * r * ld(w, j + half), a = ang[t * half + j], c = cosf(a), s = sinf(a);
    st(out, row * D + j, y0 * c - y1 * s);
    st(out, row * D + j + half, y1 * c + y0 * s);
}

// the same with a warp per (token, head) row, lane l owning the pairs (j, j + D/2) for j = 2l, 2l + 1 (+ 64...):
// a block of D/2 threads per 128-element row left the kernel at under 1 TB/s
__global__ static void rmsnorm_rope_fwd_warp(bf16_t *out, float *rstd, const bf16_t *x, const bf16_t *w, const float *ang, int N,
                                             int H, int D, float eps) {
    size_t row = warp_row();
    int lane = threadIdx.x % 32, half = D / 2;
    if (row >= (size_t)N) return;
    const __nv_bfloat162 *xr = reinterpret_cast<const __nv_bfloat162 *>(x + row * D);
    float ss = 0.0f;
    for (int j = 2 * lane; j < half; j += 64) {
        float2 a = __bfloat1622float2(xr[j / 2]), b = __bfloat1622float2(xr[(j + half) / 2]);
        ss += a.x * a.x + a.y * a.y + b.x * b.x + b.y * b.y;
    }
    float r = rsqrtf(warp_sum(ss) / D + eps);
    if (lane == 0) rstd[row] = r;
    const __nv_bfloat162 *w2 = reinterpret_cast<const __nv_bfloat162 *>(w);
    __nv_bfloat162 *o2 = reinterpret_cast<__nv_bfloat162 *>(out + row * D);
    const float2 *ang2 = reinterpret_cast<const float2 *>(ang + (row / H) * half);
    for (int j = 2 * lane; j < half; j += 64) {
        float2 a = __bfloat1622float2(xr[j / 2]), b = __bfloat1622float2(xr[(j + half) / 2]);
        float2 wa = __bfloat1622float2(w2[j / 2]), wb = __bfloat1622float2(w2[(j + half) / 2]), t = ang2[j / 2];
        float y0 = a.x * r * wa.x, y1 = b.x * r * wb.x, z0 = a.y * r * wa.y, z1 = b.y * r * wb.y;
        float c0 = cosf(t.x), s0 = sinf(t.x), c1 = cosf(t.y), s1 = sinf(t.y);
        o2[j / 2] = __floats2bfloat162_rn(y0 * c0 - y1 * s0, z0 * c1 - z1 * s1);
        o2[(j + half) / 2] = __floats2bfloat162_rn(y1 * c0 + y0 * s0, z1 * c1 + z0 * s1);
    }
}

extern "C" void cuda_rmsnorm_rope_forward(bf16 *out, float *rstd, const bf16 *inp, const bf16 *w, const float *angles, int T, int H,
                                          int D, float eps) {
    size_t rows = (size_t)T * H;
    if (D % 4 == 0 && ((size_t)inp | (size_t)out | (size_t)w) % 4 == 0 && (size_t)angles % 8 == 0) {
        rmsnorm_rope_fwd_warp<<<blocks_of_warps((int)rows), 256, 0, g_stream>>>(B16(out), rstd, CB16(inp), CB16(w), angles, (int)rows,
                                                                                H, D, eps);
    } else {
        int threads = (D / 2 + 31) / 32 * 32;  // block_sum wants whole warps
        rmsnorm_rope_fwd<<<(unsigned)rows, threads, 0, g_stream>>>(B16(out), rstd, CB16(inp), CB16(w), angles, H, D, eps);
    }
    LAUNCH_CHECK();
}

// Its backward in one pass (the QK norms: before, RoPE's backward, a zero fill, RMSNorm's dx and then its dw
// each went over the [T·H, D] rows: ~6 passes, now 3). A warp per row, lane l owning the pairs (j, j + D/2)
// for j = 2l, 2l + 1 (D ≤ 128); a block's 8 warps take 8 rows each (ROWS_PER_PART = 64 rows a block), so
// block b writes dw's partial sums part[b, :] (its warps' in order: deterministic) for reduce_parts. With
// g = dn·w, dn = R(θ)ᵀ·dy and x̂ = x·rstd: dx = (g − x̂·mean(g·x̂))·rstd, dw += Σ dn·x̂.
enum { RR_WARPS = 8, RR_ROWS = ROWS_PER_PART / RR_WARPS };
// the block's row of dw partials: its warps' column sums wsum[warp][col] added in warp order (deterministic)
__device__ __forceinline__ void rr_write_part(float (*wsum)[128], float *part, int D) {
    __syncthreads();
    for (int col = threadIdx.x; col < D; col += blockDim.x) {
        float t = 0.0f;
        for (int k = 0; k < RR_WARPS; k++) t += wsum[k][col];
        part[(size_t)blockIdx.x * D + col] = t;
    }
}
__global__ static void rmsnorm_rope_bwd_warp(bf16_t *dx, float *part, const bf16_t *dy, const bf16_t *x, const bf16_t *w,
                                             const float *rstd, const float *ang, int N, int H, int D) {
    __shared__ float wsum[RR_WARPS][128];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, half = D / 2, j = 2 * lane;
    bool mine = j < half;  // (D = 128: every lane)
    float s00 = 0.0f, s01 = 0.0f, s10 = 0.0f, s11 = 0.0f;  // dw partials of columns j, j + 1, j + half, j + half + 1
    float2 wa = mine ? __bfloat1622float2(reinterpret_cast<const __nv_bfloat162 *>(w)[j / 2]) : make_float2(0.0f, 0.0f);
    float2 wb = mine ? __bfloat1622float2(reinterpret_cast<const __nv_bfloat162 *>(w)[(j + half) / 2]) : make_float2(0.0f, 0.0f);
    for (int i = 0; i < RR_ROWS; i++) {
        size_t row = (size_t)blockIdx.x * ROWS_PER_PART + warp * RR_ROWS + i;
        if (row >= (size_t)N) break;
        float r = rstd[row];
        float2 da = make_float2(0.0f, 0.0f), db = da, xa = da, xb = da, t = da;
        if (mine) {
            const __nv_bfloat162 *dyr = reinterpret_cast<const __nv_bfloat162 *>(dy + row * D), *xr = reinterpret_cast<const __nv_bfloat162 *>(x + row * D);
            da = __bfloat1622float2(dyr[j / 2]), db = __bfloat1622float2(dyr[(j + half) / 2]);
            xa = __bfloat1622float2(xr[j / 2]), xb = __bfloat1622float2(xr[(j + half) / 2]);
            t = reinterpret_cast<const float2 *>(ang + (row / H) * half)[j / 2];
        }
        // dn = R(θ)ᵀ·dy: (dy0·c + dy1·s, dy1·c − dy0·s) per pair
        float c0 = cosf(t.x), s0 = sinf(t.x), c1 = cosf(t.y), s1 = sinf(t.y);
        float n0 = da.x * c0 + db.x * s0, m0 = db.x * c0 - da.x * s0;  // columns j, j + half
        float n1 = da.y * c1 + db.y * s1, m1 = db.y * c1 - da.y * s1;  // columns j + 1, j + half + 1
        float h0 = xa.x * r, h1 = xa.y * r, k0 = xb.x * r, k1 = xb.y * r;  // x̂
        float dot = warp_sum(n0 * wa.x * h0 + n1 * wa.y * h1 + m0 * wb.x * k0 + m1 * wb.y * k1) / D;
        s00 += n0 * h0, s01 += n1 * h1, s10 += m0 * k0, s11 += m1 * k1;
        if (mine) {
            __nv_bfloat162 *o = reinterpret_cast<__nv_bfloat162 *>(dx + row * D);
            o[j / 2] = __floats2bfloat162_rn((n0 * wa.x - h0 * dot) * r, (n1 * wa.y - h1 * dot) * r);
            o[(j + half) / 2] = __floats2bfloat162_rn((m0 * wb.x - k0 * dot) * r, (m1 * wb.y - k1 * dot) * r);
        }
    }
    if (mine) {
        wsum[warp][j] = s00, wsum[warp][j + 1] = s01, wsum[warp][j + half] = s10, wsum[warp][j + half + 1] = s11;
    }
    rr_write_part(wsum, part, D);
}

// the same for any even D ≤ 128 (D = 2 mod 4: the tiny presets' odd half), a pair (p, p + D/2) per lane and
// step, scalar loads: its dw sums RoPE's backward in fp32 as the kernel above does (the separate ops would
// round R(θ)ᵀ·dy to bf16 first, 1e-3 off fp32's dw at D = 18)
__global__ static void rmsnorm_rope_bwd_pairs(bf16_t *dx, float *part, const bf16_t *dy, const bf16_t *x, const bf16_t *w,
                                              const float *rstd, const float *ang, int N, int H, int D) {
    __shared__ float wsum[RR_WARPS][128];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, half = D / 2;
    float sa[2] = {0.0f, 0.0f}, sb[2] = {0.0f, 0.0f};  // dw partials of columns p, p + half for p = lane, lane + 32
    for (int i = 0; i < RR_ROWS; i++) {
        size_t row = (size_t)blockIdx.x * ROWS_PER_PART + warp * RR_ROWS + i;
        if (row >= (size_t)N) break;
        float r = rstd[row], n[2] = {0.0f, 0.0f}, m[2] = {0.0f, 0.0f}, h[2] = {0.0f, 0.0f}, k[2] = {0.0f, 0.0f}, g = 0.0f;
        for (int e = 0; e < 2; e++) {
            int p = lane + 32 * e;
            if (p >= half) break;
            float a = ang[(row / H) * half + p], c = cosf(a), s = sinf(a), d0 = ld(dy, row * D + p), d1 = ld(dy, row * D + p + half);
            n[e] = d0 * c + d1 * s, m[e] = d1 * c - d0 * s;  // dn = R(θ)ᵀ·dy
            h[e] = ld(x, row * D + p) * r, k[e] = ld(x, row * D + p + half) * r;  // x̂
            g += n[e] * ld(w, p) * h[e] + m[e] * ld(w, p + half) * k[e];
        }
        float dot = warp_sum(g) / D;
        for (int e = 0; e < 2; e++) {
            int p = lane + 32 * e;
            if (p >= half) break;
            sa[e] += n[e] * h[e], sb[e] += m[e] * k[e];
            st(dx, row * D + p, (n[e] * ld(w, p) - h[e] * dot) * r);
            st(dx, row * D + p + half, (m[e] * ld(w, p + half) - k[e] * dot) * r);
        }
    }
    for (int e = 0; e < 2; e++) {
        int p = lane + 32 * e;
        if (p < half) wsum[warp][p] = sa[e], wsum[warp][p + half] = sb[e];
    }
    rr_write_part(wsum, part, D);
}

extern "C" void cuda_rmsnorm_rope_backward(bf16 *dinp, float *dw, bf16 *dout, const bf16 *inp, const bf16 *w, const float *rstd,
                                           const float *angles, int T, int H, int D) {
    size_t rows = (size_t)T * H;
    if (D <= 128 && D % 2 == 0 && !cuda_safe_kernels()) {
        unsigned parts = (unsigned)((rows + ROWS_PER_PART - 1) / ROWS_PER_PART);
        float *part = (float *)cuda_scratch((size_t)parts * D * sizeof(float));  // (written even without dw)
        if (D % 4 == 0 && ((size_t)inp | (size_t)dout | (size_t)dinp | (size_t)w) % 4 == 0 && (size_t)angles % 8 == 0)
            rmsnorm_rope_bwd_warp<<<parts, RR_WARPS * 32, 0, g_stream>>>(B16(dinp), part, CB16(dout), CB16(inp), CB16(w), rstd, angles,
                                                                        (int)rows, H, D);
        else
            rmsnorm_rope_bwd_pairs<<<parts, RR_WARPS * 32, 0, g_stream>>>(B16(dinp), part, CB16(dout), CB16(inp), CB16(w), rstd, angles,
                                                                         (int)rows, H, D);
        LAUNCH_CHECK();
        if (dw) reduce_parts(dw, part, (int)parts, D);
        return;
    }
    // other shapes: the separate ops (dout is scratch)
    cuda_rope_backward(dout, angles, T, H, D);
    CUDA_CHECK(cudaMemsetAsync(dinp, 0, rows * D * sizeof(bf16_t), g_stream));
    cuda_rmsnorm_backward(dinp, dw, dout, inp, w, rstd, (int)rows, D);
}

template <typename R>
static void rmsnorm_backward(void *dinp, bf16 *dinp16, float *dw, const bf16 *dout, const void *inp, const bf16 *w, const float *rstd,
                             int N, int C) {
    bool vec = rows8(C, dout, inp, w, dinp ? (const void *)dinp : (const void *)inp) && (!dinp16 || aligned16(dinp16));
    if (norm_bwd_fused<R>(dinp, dinp16, dw, NULL, dout, inp, w, NULL, rstd, N, C, vec)) return;
    if (dinp && vec)
        rmsnorm_bwd_dx8<R><<<blocks_of_warps(N), 256, 0, g_stream>>>((R *)dinp, B16(dinp16), CB16(dout), (const R *)inp, CB16(w), rstd, N,
                                                                     C);
    else if (dinp)
        rmsnorm_bwd_dx<R><<<N, threads_for(C), 0, g_stream>>>((R *)dinp, B16(dinp16), CB16(dout), (const R *)inp, CB16(w), rstd, C);
    if (dinp) LAUNCH_CHECK();
    if (dw) {
        int parts = (N + ROWS_PER_PART - 1) / ROWS_PER_PART, threads;
        float *part = (float *)cuda_scratch((size_t)parts * C * sizeof(float));
        if (vec) {
            dim3 grid = grid8(C, parts, &threads);
            norm_bwd_dw8<R><<<grid, threads, 0, g_stream>>>(part, NULL, CB16(dout), (const R *)inp, NULL, rstd, N, C);
        } else {
            rmsnorm_bwd_dw<R><<<dim3((C + 127) / 128, parts), 128, 0, g_stream>>>(part, CB16(dout), (const R *)inp, rstd, N, C);
        }
        LAUNCH_CHECK();
        reduce_parts(dw, part, parts, C);
    }
}
extern "C" void cuda_rmsnorm_backward(bf16 *dinp, float *dw, const bf16 *dout, const bf16 *inp, const bf16 *w, const float *rstd,
                                      int N, int C) {
    rmsnorm_backward<bf16_t>(dinp, NULL, dw, dout, inp, w, rstd, N, C);
}
extern "C" void cuda_rmsnorm_backward_r32(float *dinp, bf16 *dinp16, float *dw, const bf16 *dout, const float *inp, const bf16 *w,
                                          const float *rstd, int N, int C) {
    rmsnorm_backward<float>(dinp, dinp16, dw, dout, inp, w, rstd, N, C);
}

// ---- LayerNorm ----
template <typename R>
__global__ static void layernorm_fwd(bf16_t *out, float *mean, float *rstd, const R *x, const bf16_t *w, const bf16_t *b, int C,
                                     float eps, const bf16_t *res, R *sum) {
    size_t row = blockIdx.x;
    const R *xr = row_with_residual(x + row * C, res ? res + row * C : NULL, sum ? sum + row * C : NULL, C);
    float s = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) s += ld(xr, c);
    float mu = block_sum(s) / C, v = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) { float d = ld(xr, c) - mu; v += d * d; }
    float r = rsqrtf(block_sum(v) / C + eps);  // biased variance, as torch
    if (threadIdx.x == 0) { mean[row] = mu; rstd[row] = r; }
    for (int c = threadIdx.x; c < C; c += blockDim.x) st(out, row * C + c, (ld(xr, c) - mu) * r * ld(w, c) + ld(b, c));
}

// dx = r·(g − mean(g) − xhat·mean(g·xhat)), g = w·dy
template <typename R>
__global__ static void layernorm_bwd_dx(R *dinp, bf16_t *dinp16, const bf16_t *dy, const R *x, const bf16_t *w, const float *mean, const float *rstd, int C) {
    size_t row = blockIdx.x;
    float mu = mean[row], r = rstd[row], sg = 0.0f, sgx = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float g = ld(w, c) * ld(dy, row * C + c), xh = (ld(x, row * C + c) - mu) * r;
        sg += g;
        sgx += g * xh;
    }
    sg = block_sum(sg) / C;
    sgx = block_sum(sgx) / C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        size_t i = row * C + c;
        float g = ld(w, c) * ld(dy, i), xh = (ld(x, i) - mu) * r;
        float v = ld(dinp, i) + r * (g - sg - xh * sgx);
        st(dinp, i, v);
        if (sizeof(R) == 4 && dinp16) st(dinp16, i, v);
    }
}

template <typename R>
__global__ static void layernorm_bwd_dwdb(float *part_w, float *part_b, const bf16_t *dy, const R *x, const float *mean, const float *rstd, int N, int C) {
    int p = blockIdx.y, c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float sw = 0.0f, sb = 0.0f;
    for (int n = p * ROWS_PER_PART; n < N && n < (p + 1) * ROWS_PER_PART; n++) {
        float d = ld(dy, (size_t)n * C + c);
        sw += d * (ld(x, (size_t)n * C + c) - mean[n]) * rstd[n];
        sb += d;
    }
    part_w[(size_t)p * C + c] = sw;
    part_b[(size_t)p * C + c] = sb;
}

// the 8-wide, warp-per-row form of layernorm_bwd_dx (see rmsnorm_bwd_dx8; the weight and bias partials: norm_bwd_dw8)
template <typename R>
__global__ static void layernorm_bwd_dx8(R *dinp, bf16_t *dinp16, const bf16_t *dy, const R *x, const bf16_t *w, const float *mean,
                                         const float *rstd, int N, int C) {
    size_t row = warp_row();
    int lane = threadIdx.x % 32;
    if (row >= (size_t)N) return;
    const bf16_t *dyr = dy + row * C;
    const R *xr = x + row * C;
    float mu = mean[row], r = rstd[row], sg = 0.0f, sgx = 0.0f, wv[8], dv[8], xv[8], o[8];
    for (int c = lane * 8; c < C; c += 256) {
        load8(wv, w + c), load8(dv, dyr + c), load8(xv, xr + c);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float g = wv[k] * dv[k];
            sg += g;
            sgx += g * ((xv[k] - mu) * r);
        }
    }
    sg = warp_sum(sg) / C;
    sgx = warp_sum(sgx) / C;
    for (int c = lane * 8; c < C; c += 256) {
        load8(wv, w + c), load8(dv, dyr + c), load8(xv, xr + c), load8(o, dinp + row * C + c);
#pragma unroll
        for (int k = 0; k < 8; k++) o[k] = o[k] + r * (wv[k] * dv[k] - sg - (xv[k] - mu) * r * sgx);
        store8(dinp + row * C + c, o);
        if (sizeof(R) == 4 && dinp16) store8(dinp16 + row * C + c, o);
    }
}

// layernorm_fwd with a warp per row and 8 elements per access: mean, then the centred variance, then the output
template <typename R>
__global__ static void layernorm_fwd8(bf16_t *out, float *mean, float *rstd, const R *x, const bf16_t *w, const bf16_t *bias, int N,
                                      int C, float eps, const bf16_t *res, R *sum) {
    size_t row = warp_row();
    int lane = threadIdx.x % 32;
    if (row >= (size_t)N) return;
    float s = 0.0f, var = 0.0f, v[8], u[8], bb[8];
    for (int c = lane * 8; c < C; c += 256) {
        row_piece8(v, x, res, sum, row * C + c);
#pragma unroll
        for (int k = 0; k < 8; k++) s += v[k];
    }
    float mu = warp_sum(s) / C;
    const R *src = (res ? sum : x) + row * C;
    for (int c = lane * 8; c < C; c += 256) {
        load8(v, src + c);
#pragma unroll
        for (int k = 0; k < 8; k++) var += (v[k] - mu) * (v[k] - mu);
    }
    float r = rsqrtf(warp_sum(var) / C + eps);  // biased variance, as torch
    if (lane == 0) { mean[row] = mu; rstd[row] = r; }
    for (int c = lane * 8; c < C; c += 256) {
        load8(v, src + c), load8(u, w + c), load8(bb, bias + c);
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] = (v[k] - mu) * r * u[k] + bb[k];
        store8(out + row * C + c, v);
    }
}

template <typename R>
static void layernorm_launch(bf16 *out, float *mean, float *rstd, const void *x, const bf16 *w, const bf16 *bias, int N, int C,
                             float eps, const bf16 *res, void *sum) {
    if (rows8(C, out, x, w, bias) && (!res || (aligned16(res) && aligned16(sum))))
        layernorm_fwd8<R><<<blocks_of_warps(N), 256, 0, g_stream>>>(B16(out), mean, rstd, (const R *)x, CB16(w), CB16(bias), N, C, eps,
                                                                    CB16(res), (R *)sum);
    else
        layernorm_fwd<R><<<N, threads_for(C), 0, g_stream>>>(B16(out), mean, rstd, (const R *)x, CB16(w), CB16(bias), C, eps, CB16(res),
                                                             (R *)sum);
    LAUNCH_CHECK();
}

extern "C" void cuda_layernorm_forward(bf16 *out, float *mean, float *rstd, const bf16 *inp, const bf16 *w, const bf16 *b, int N,
                                       int C, float eps) {
    layernorm_launch<bf16_t>(out, mean, rstd, inp, w, b, N, C, eps, NULL, NULL);
}
extern "C" void cuda_layernorm_forward_r32(bf16 *out, float *mean, float *rstd, const float *inp, const bf16 *w, const bf16 *b, int N,
                                           int C, float eps) {
    layernorm_launch<float>(out, mean, rstd, inp, w, b, N, C, eps, NULL, NULL);
}

extern "C" void cuda_add_layernorm_forward(bf16 *sum, bf16 *out, float *mean, float *rstd, const bf16 *a, const bf16 *b,
                                           const bf16 *w, const bf16 *bias, int N, int C, float eps) {
    layernorm_launch<bf16_t>(out, mean, rstd, a, w, bias, N, C, eps, b, sum);
}
extern "C" void cuda_add_layernorm_forward_r32(float *sum, bf16 *out, float *mean, float *rstd, const float *a, const bf16 *b,
                                               const bf16 *w, const bf16 *bias, int N, int C, float eps) {
    layernorm_launch<float>(out, mean, rstd, a, w, bias, N, C, eps, b, sum);
}

template <typename R>
static void layernorm_backward(void *dinp, bf16 *dinp16, float *dw, float *db, const bf16 *dout, const void *inp, const bf16 *w,
                               const float *mean, const float *rstd, int N, int C) {
    bool vec = rows8(C, dout, inp, w, dinp ? (const void *)dinp : (const void *)inp) && (!dinp16 || aligned16(dinp16));
    if (norm_bwd_fused<R>(dinp, dinp16, dw, db, dout, inp, w, mean, rstd, N, C, vec)) return;
    if (dinp && vec)
        layernorm_bwd_dx8<R><<<blocks_of_warps(N), 256, 0, g_stream>>>((R *)dinp, B16(dinp16), CB16(dout), (const R *)inp, CB16(w), mean,
                                                                       rstd, N, C);
    else if (dinp)
        layernorm_bwd_dx<R><<<N, threads_for(C), 0, g_stream>>>((R *)dinp, B16(dinp16), CB16(dout), (const R *)inp, CB16(w), mean, rstd,
                                                                C);
    if (dinp) LAUNCH_CHECK();
    if (dw || db) {
        int parts = (N + ROWS_PER_PART - 1) / ROWS_PER_PART, threads;
        float *part = (float *)cuda_scratch((size_t)2 * parts * C * sizeof(float));
        if (vec) {
            dim3 grid = grid8(C, parts, &threads);
            norm_bwd_dw8<R><<<grid, threads, 0, g_stream>>>(part, part + (size_t)parts * C, CB16(dout), (const R *)inp, mean, rstd, N, C);
        } else {
            layernorm_bwd_dwdb<R><<<dim3((C + 127) / 128, parts), 128, 0, g_stream>>>(part, part + (size_t)parts * C, CB16(dout),
                                                                                       (const R *)inp, mean, rstd, N, C);
        }
        LAUNCH_CHECK();
        if (dw) reduce_parts(dw, part, parts, C);
        if (db) reduce_parts(db, part + (size_t)parts * C, parts, C);
    }
}
extern "C" void cuda_layernorm_backward(bf16 *dinp, float *dw, float *db, const bf16 *dout, const bf16 *inp, const bf16 *w,
                                        const float *mean, const float *rstd, int N, int C) {
    layernorm_backward<bf16_t>(dinp, NULL, dw, db, dout, inp, w, mean, rstd, N, C);
}
extern "C" void cuda_layernorm_backward_r32(float *dinp, bf16 *dinp16, float *dw, float *db, const bf16 *dout, const float *inp,
                                            const bf16 *w, const float *mean, const float *rstd, int N, int C) {
    layernorm_backward<float>(dinp, dinp16, dw, db, dout, inp, w, mean, rstd, N, C);
}
