// elementwise.cu: norms, activations, RoPE, embedding, cross-entropy and AdamW on the GPU (ops_cuda.h).
// Row-wise ops give a row to a block; statistics and sums are fp32. Weight gradients that sum over rows
// go through per-block partial sums added in a fixed order, never atomics, so a run repeats bit for bit.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common_cuda.cuh"
#include "ops_cuda.h"

#define B16(p) ((bf16_t *)(p))
#define CB16(p) ((const bf16_t *)(p))

// out[c] += Σ_parts part[p, c] in a fixed order: a block takes 32 columns; lane y of 32 sums the parts
// p ≡ y (mod 32) in order, then the 32 lane sums are added in lane order. (One thread per column summing
// every part in turn was latency-bound: the per-head QK-norm weights have 128 columns and 4096 parts.)
enum { RP_LANES = 32 };
__global__ static void reduce_parts_kernel(float *out, const float *part, int nparts, int C) {
    __shared__ float lane_sum[RP_LANES][33];
    int c = blockIdx.x * 32 + threadIdx.x, y = threadIdx.y;
    float s = 0.0f;
    if (c < C)
        for (int p = y; p < nparts; p += RP_LANES) s += part[(size_t)p * C + c];
    lane_sum[y][threadIdx.x] = s;
    __syncthreads();
    if (y == 0 && c < C) {
        float t = 0.0f;
        for (int l = 0; l < RP_LANES; l++) t += lane_sum[l][threadIdx.x];
        out[c] += t;
    }
}

void reduce_parts(float *out, const float *part, int nparts, int C) {
    reduce_parts_kernel<<<(C + 31) / 32, dim3(32, RP_LANES), 0, g_stream>>>(out, part, nparts, C);
    LAUNCH_CHECK();
}

// With b: the row is first sum = x + b (rounded to bf16, written), and the norm is taken of it; the later
// passes read it back from sum (the thread's own elements: no barrier needed).
__device__ __forceinline__ const bf16_t *row_with_residual(const bf16_t *xr, const bf16_t *br, bf16_t *sr, int C) {
    if (!br) return xr;
    for (int c = threadIdx.x; c < C; c += blockDim.x) sr[c] = __float2bfloat16_rn(ld(xr, c) + ld(br, c));
    return sr;
}

// ---- RMSNorm ----
__global__ static void rmsnorm_fwd(bf16_t *out, float *rstd, const bf16_t *x, const bf16_t *w, int C, float eps, const bf16_t *b,
                                   bf16_t *sum) {
    size_t row = blockIdx.x;
    const bf16_t *xr = row_with_residual(x + row * C, b ? b + row * C : NULL, sum ? sum + row * C : NULL, C);
    float ss = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) { float v = ld(xr, c); ss += v * v; }
    float r = rsqrtf(block_sum(ss) / C + eps);
    if (threadIdx.x == 0) rstd[row] = r;
    for (int c = threadIdx.x; c < C; c += blockDim.x) st(out, row * C + c, ld(xr, c) * r * ld(w, c));
}

// dx = r·w·dy − x·r³·mean(w·dy·x)
__global__ static void rmsnorm_bwd_dx(bf16_t *dinp, const bf16_t *dy, const bf16_t *x, const bf16_t *w, const float *rstd, int C) {
    size_t row = blockIdx.x;
    float r = rstd[row], dot = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dot += ld(w, c) * ld(dy, row * C + c) * ld(x, row * C + c);
    dot = block_sum(dot) / C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        size_t i = row * C + c;
        st(dinp, i, ld(dinp, i) + r * ld(w, c) * ld(dy, i) - ld(x, i) * r * r * r * dot);
    }
}

// part[p, c] = Σ over the part's rows of dy·x·r
__global__ static void rmsnorm_bwd_dw(float *part, const bf16_t *dy, const bf16_t *x, const float *rstd, int N, int C) {
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
__global__ static void rmsnorm_bwd_dx8(bf16_t *dinp, const bf16_t *dy, const bf16_t *x, const bf16_t *w, const float *rstd, int N,
                                       int C) {
    size_t row = warp_row();
    int lane = threadIdx.x % 32;
    if (row >= (size_t)N) return;
    const bf16_t *dyr = dy + row * C, *xr = x + row * C;
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
    }
}

// part_w[p, c..c+7] = Σ over the part's rows of dy·(x − mean)·rstd (mean NULL: 0, RMSNorm) and, unless
// part_b is NULL, part_b[p, c..c+7] = Σ dy; 8 columns per thread, each column in the scalar kernels' order
__global__ static void norm_bwd_dw8(float *part_w, float *part_b, const bf16_t *dy, const bf16_t *x, const float *mean,
                                    const float *rstd, int N, int C) {
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
template <int CH, bool LN>
__global__ static void __launch_bounds__(256) norm_bwd_fused8(bf16_t *dinp, float *part_w, float *part_b, const bf16_t *dy,
                                                                const bf16_t *x, const bf16_t *w, const float *mean, const float *rstd,
                                                                int N, int rpw) {
    constexpr int C = 256 * CH;
    __shared__ float acc_w[C], acc_b[LN ? C : 1];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float sw[CH][8] = {}, sb[LN ? CH : 1][8] = {};
    for (int i = 0; i < rpw; i++) {
        size_t row = ((size_t)blockIdx.x * 8 + warp) * rpw + i;
        if (row >= (size_t)N) break;  // (the warp's other rows are past N too)
        const bf16_t *dyr = dy + row * C, *xr = x + row * C;
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
extern "C" void cuda_norm_set_rows_per_warp(int n) { rpw_setting = n == -2 ? (int)ENV_UNREAD : n; }
// warps of norm_bwd_fused8<CH, LN> resident at once on this card (asked once per kernel)
template <int CH, bool LN> static long fused8_warp_slots(void) {
    static long slots;
    if (!slots) {
        int dev = 0, sms = 0, per_sm = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
        CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, norm_bwd_fused8<CH, LN>, 256, 0));
        slots = (long)(sms > 0 ? sms : 1) * (per_sm > 0 ? per_sm : 1) * 8;
    }
    return slots;
}
template <int CH, bool LN>
static void launch_fused8_k(bf16 *dinp, float *dw, float *db, const bf16 *dout, const bf16 *inp, const bf16 *w, const float *mean,
                            const float *rstd, int N) {
    constexpr int C = 256 * CH;
    int setting = cuda_env_setting(&rpw_setting, "LLAVA_NORM_RPW", -1);
    int rpw = setting > 0 ? setting : 2;
    if (setting == 0) {
        long slots = fused8_warp_slots<CH, LN>();
        rpw = (int)((N + slots - 1) / slots);
    }
    unsigned parts = (unsigned)((N + 8 * rpw - 1) / (8 * rpw));
    float *part = (float *)cuda_scratch((size_t)(db ? 2 : 1) * parts * C * sizeof(float)), *part_b = db ? part + (size_t)parts * C : NULL;
    norm_bwd_fused8<CH, LN><<<parts, 256, 0, g_stream>>>(B16(dinp), part, part_b, CB16(dout), CB16(inp), CB16(w), mean, rstd, N, rpw);
    LAUNCH_CHECK();
    reduce_parts(dw, part, (int)parts, C);
    if (db) reduce_parts(db, part_b, (int)parts, C);
}
template <int CH>
static void launch_fused8(bf16 *dinp, float *dw, float *db, const bf16 *dout, const bf16 *inp, const bf16 *w, const float *mean,
                          const float *rstd, int N) {
    if (mean) launch_fused8_k<CH, true>(dinp, dw, db, dout, inp, w, mean, rstd, N);
    else launch_fused8_k<CH, false>(dinp, dw, NULL, dout, inp, w, NULL, rstd, N);
}
// norm_bwd_fused8 where it applies (dx and dw wanted, C = 256·CH with CH ≤ 10, the 8-wide kernels' alignment):
// false otherwise, and nothing launched
static bool norm_bwd_fused(bf16 *dinp, float *dw, float *db, const bf16 *dout, const bf16 *inp, const bf16 *w, const float *mean,
                           const float *rstd, int N, int C, bool vec) {
    if (!dinp || !dw || !vec || C % 256 || C > 2560 || (db && !mean) || cuda_safe_kernels()) return false;
    switch (C / 256) {
    case 1: launch_fused8<1>(dinp, dw, db, dout, inp, w, mean, rstd, N); break;
    case 2: launch_fused8<2>(dinp, dw, db, dout, inp, w, mean, rstd, N); break;
    case 3: launch_fused8<3>(dinp, dw, db, dout, inp, w, mean, rstd, N); break;
    case 4: launch_fused8<4>(dinp, dw, db, dout, inp, w, mean, rstd, N); break;
    case 5: launch_fused8<5>(dinp, dw, db, dout, inp, w, mean, rstd, N); break;
    case 6: launch_fused8<6>(dinp, dw, db, dout, inp, w, mean, rstd, N); break;
    case 7: launch_fused8<7>(dinp, dw, db, dout, inp, w, mean, rstd, N); break;
    case 8: launch_fused8<8>(dinp, dw, db, dout, inp, w, mean, rstd, N); break;
    case 9: launch_fused8<9>(dinp, dw, db, dout, inp, w, mean, rstd, N); break;
    default: launch_fused8<10>(dinp, dw, db, dout, inp, w, mean, rstd, N); break;
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

// 8 elements of a row at i: x, or with a residual b the sum x + b rounded to bf16 (and stored in sum)
__device__ __forceinline__ void row_piece8(float *v, const bf16_t *x, const bf16_t *b, bf16_t *sum, size_t i) {
    load8(v, x + i);
    if (!b) return;
    float u[8];
    load8(u, b + i);
#pragma unroll
    for (int k = 0; k < 8; k++) v[k] = __bfloat162float(__float2bfloat16_rn(v[k] + u[k]));
    store8(sum + i, v);
}

// rmsnorm_fwd with a warp per row and 8 elements per access (see rmsnorm_bwd_dx8)
__global__ static void rmsnorm_fwd8(bf16_t *out, float *rstd, const bf16_t *x, const bf16_t *w, int N, int C, float eps,
                                    const bf16_t *b, bf16_t *sum) {
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
    const bf16_t *src = (b ? sum : x) + row * C;  // this lane's own stores of the sum: visible to it
    for (int c = lane * 8; c < C; c += 256) {
        load8(v, src + c), load8(u, w + c);
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] = v[k] * r * u[k];
        store8(out + row * C + c, v);
    }
}

static void rmsnorm_launch(bf16 *out, float *rstd, const bf16 *x, const bf16 *w, int N, int C, float eps, const bf16 *b, bf16 *sum) {
    if (rows8(C, out, x, w, b ? (const void *)b : (const void *)x) && (!sum || aligned16(sum)))
        rmsnorm_fwd8<<<blocks_of_warps(N), 256, 0, g_stream>>>(B16(out), rstd, CB16(x), CB16(w), N, C, eps, CB16(b), B16(sum));
    else
        rmsnorm_fwd<<<N, threads_for(C), 0, g_stream>>>(B16(out), rstd, CB16(x), CB16(w), C, eps, CB16(b), B16(sum));
    LAUNCH_CHECK();
}

extern "C" void cuda_rmsnorm_forward(bf16 *out, float *rstd, const bf16 *inp, const bf16 *w, int N, int C, float eps) {
    rmsnorm_launch(out, rstd, inp, w, N, C, eps, NULL, NULL);
}

extern "C" void cuda_add_rmsnorm_forward(bf16 *sum, bf16 *out, float *rstd, const bf16 *a, const bf16 *b, const bf16 *w, int N,
                                         int C, float eps) {
    rmsnorm_launch(out, rstd, a, w, N, C, eps, b, sum);
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

extern "C" void cuda_rmsnorm_backward(bf16 *dinp, float *dw, const bf16 *dout, const bf16 *inp, const bf16 *w, const float *rstd,
                                      int N, int C) {
    bool vec = rows8(C, dout, inp, w, dinp ? (const void *)dinp : (const void *)inp);
    if (norm_bwd_fused(dinp, dw, NULL, dout, inp, w, NULL, rstd, N, C, vec)) return;
    if (dinp && vec) rmsnorm_bwd_dx8<<<blocks_of_warps(N), 256, 0, g_stream>>>(B16(dinp), CB16(dout), CB16(inp), CB16(w), rstd, N, C);
    else if (dinp) rmsnorm_bwd_dx<<<N, threads_for(C), 0, g_stream>>>(B16(dinp), CB16(dout), CB16(inp), CB16(w), rstd, C);
    if (dinp) LAUNCH_CHECK();
    if (dw) {
        int parts = (N + ROWS_PER_PART - 1) / ROWS_PER_PART, threads;
        float *part = (float *)cuda_scratch((size_t)parts * C * sizeof(float));
        if (vec) {
            dim3 grid = grid8(C, parts, &threads);
            norm_bwd_dw8<<<grid, threads, 0, g_stream>>>(part, NULL, CB16(dout), CB16(inp), NULL, rstd, N, C);
        } else {
            rmsnorm_bwd_dw<<<dim3((C + 127) / 128, parts), 128, 0, g_stream>>>(part, CB16(dout), CB16(inp), rstd, N, C);
        }
        LAUNCH_CHECK();
        reduce_parts(dw, part, parts, C);
    }
}

// ---- LayerNorm ----
__global__ static void layernorm_fwd(bf16_t *out, float *mean, float *rstd, const bf16_t *x, const bf16_t *w, const bf16_t *b, int C,
                                     float eps, const bf16_t *res, bf16_t *sum) {
    size_t row = blockIdx.x;
    const bf16_t *xr = row_with_residual(x + row * C, res ? res + row * C : NULL, sum ? sum + row * C : NULL, C);
    float s = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) s += ld(xr, c);
    float mu = block_sum(s) / C, v = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) { float d = ld(xr, c) - mu; v += d * d; }
    float r = rsqrtf(block_sum(v) / C + eps);  // biased variance, as torch
    if (threadIdx.x == 0) { mean[row] = mu; rstd[row] = r; }
    for (int c = threadIdx.x; c < C; c += blockDim.x) st(out, row * C + c, (ld(xr, c) - mu) * r * ld(w, c) + ld(b, c));
}

// dx = r·(g − mean(g) − xhat·mean(g·xhat)), g = w·dy
__global__ static void layernorm_bwd_dx(bf16_t *dinp, const bf16_t *dy, const bf16_t *x, const bf16_t *w, const float *mean, const float *rstd, int C) {
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
        st(dinp, i, ld(dinp, i) + r * (g - sg - xh * sgx));
    }
}

__global__ static void layernorm_bwd_dwdb(float *part_w, float *part_b, const bf16_t *dy, const bf16_t *x, const float *mean, const float *rstd, int N, int C) {
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
__global__ static void layernorm_bwd_dx8(bf16_t *dinp, const bf16_t *dy, const bf16_t *x, const bf16_t *w, const float *mean,
                                         const float *rstd, int N, int C) {
    size_t row = warp_row();
    int lane = threadIdx.x % 32;
    if (row >= (size_t)N) return;
    const bf16_t *dyr = dy + row * C, *xr = x + row * C;
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
    }
}

// layernorm_fwd with a warp per row and 8 elements per access: mean, then the centred variance, then the output
__global__ static void layernorm_fwd8(bf16_t *out, float *mean, float *rstd, const bf16_t *x, const bf16_t *w, const bf16_t *bias, int N,
                                      int C, float eps, const bf16_t *res, bf16_t *sum) {
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
    const bf16_t *src = (res ? sum : x) + row * C;
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

static void layernorm_launch(bf16 *out, float *mean, float *rstd, const bf16 *x, const bf16 *w, const bf16 *bias, int N, int C,
                             float eps, const bf16 *res, bf16 *sum) {
    if (rows8(C, out, x, w, bias) && (!res || (aligned16(res) && aligned16(sum))))
        layernorm_fwd8<<<blocks_of_warps(N), 256, 0, g_stream>>>(B16(out), mean, rstd, CB16(x), CB16(w), CB16(bias), N, C, eps,
                                                                 CB16(res), B16(sum));
    else
        layernorm_fwd<<<N, threads_for(C), 0, g_stream>>>(B16(out), mean, rstd, CB16(x), CB16(w), CB16(bias), C, eps, CB16(res),
                                                          B16(sum));
    LAUNCH_CHECK();
}

extern "C" void cuda_layernorm_forward(bf16 *out, float *mean, float *rstd, const bf16 *inp, const bf16 *w, const bf16 *b, int N,
                                       int C, float eps) {
    layernorm_launch(out, mean, rstd, inp, w, b, N, C, eps, NULL, NULL);
}

extern "C" void cuda_add_layernorm_forward(bf16 *sum, bf16 *out, float *mean, float *rstd, const bf16 *a, const bf16 *b,
                                           const bf16 *w, const bf16 *bias, int N, int C, float eps) {
    layernorm_launch(out, mean, rstd, a, w, bias, N, C, eps, b, sum);
}

extern "C" void cuda_layernorm_backward(bf16 *dinp, float *dw, float *db, const bf16 *dout, const bf16 *inp, const bf16 *w,
                                        const float *mean, const float *rstd, int N, int C) {
    bool vec = rows8(C, dout, inp, w, dinp ? (const void *)dinp : (const void *)inp);
    if (norm_bwd_fused(dinp, dw, db, dout, inp, w, mean, rstd, N, C, vec)) return;
    if (dinp && vec)
        layernorm_bwd_dx8<<<blocks_of_warps(N), 256, 0, g_stream>>>(B16(dinp), CB16(dout), CB16(inp), CB16(w), mean, rstd, N, C);
    else if (dinp)
        layernorm_bwd_dx<<<N, threads_for(C), 0, g_stream>>>(B16(dinp), CB16(dout), CB16(inp), CB16(w), mean, rstd, C);
    if (dinp) LAUNCH_CHECK();
    if (dw || db) {
        int parts = (N + ROWS_PER_PART - 1) / ROWS_PER_PART, threads;
        float *part = (float *)cuda_scratch((size_t)2 * parts * C * sizeof(float));
        if (vec) {
            dim3 grid = grid8(C, parts, &threads);
            norm_bwd_dw8<<<grid, threads, 0, g_stream>>>(part, part + (size_t)parts * C, CB16(dout), CB16(inp), mean, rstd, N, C);
        } else {
            layernorm_bwd_dwdb<<<dim3((C + 127) / 128, parts), 128, 0, g_stream>>>(part, part + (size_t)parts * C, CB16(dout), CB16(inp),
                                                                                    mean, rstd, N, C);
        }
        LAUNCH_CHECK();
        if (dw) reduce_parts(dw, part, parts, C);
        if (db) reduce_parts(db, part + (size_t)parts * C, parts, C);
    }
}

// ---- activations ----
// Each has a scalar kernel (any size) and one over 8 elements per thread, taken when the sizes are
// multiples of 8 and the pointers 16-byte aligned; both compute the same float expressions.
__device__ __forceinline__ float gelu_f(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }
__device__ __forceinline__ float gelu_d(float v) {  // d gelu / dv
    float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f)), pdf = expf(-0.5f * v * v) * 0.3989422804014327f;
    return cdf + v * pdf;
}
__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }
// d out/d gate and d out/d up of out = silu(g)·u, times the incoming gradient d, into dg and du
__device__ __forceinline__ void swiglu_grad(float g, float u, float d, float *dg, float *du) {
    float s = 1.0f / (1.0f + expf(-g));
    *dg = d * u * s * (1.0f + g * (1.0f - s));
    *du = d * g * s;
}

__global__ static void gelu_fwd(bf16_t *out, const bf16_t *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) st(out, i, gelu_f(ld(x, i)));
}
__global__ static void gelu_bwd(bf16_t *dinp, const bf16_t *dy, const bf16_t *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) st(dinp, i, ld(dy, i) * gelu_d(ld(x, i)));
}
__global__ static void gelu_fwd8(bf16_t *out, const bf16_t *x, size_t n8) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n8) return;
    float v[8];
    load8(v, x + 8 * i);
#pragma unroll
    for (int k = 0; k < 8; k++) v[k] = gelu_f(v[k]);
    store8(out + 8 * i, v);
}
__global__ static void gelu_bwd8(bf16_t *dinp, const bf16_t *dy, const bf16_t *x, size_t n8) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n8) return;
    float v[8], d[8];
    load8(v, x + 8 * i), load8(d, dy + 8 * i);
#pragma unroll
    for (int k = 0; k < 8; k++) d[k] = d[k] * gelu_d(v[k]);
    store8(dinp + 8 * i, d);
}
__global__ static void swiglu_fwd(bf16_t *out, const bf16_t *gu, int N, int F) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)N * F) return;
    size_t n = i / F, f = i % F;
    float g = ld(gu, n * 2 * F + f), u = ld(gu, n * 2 * F + F + f);
    st(out, i, silu(g) * u);
}
__global__ static void swiglu_bwd(bf16_t *dgu, const bf16_t *dy, const bf16_t *gu, int N, int F) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)N * F) return;
    size_t n = i / F, f = i % F, ig = n * 2 * F + f, iu = ig + F;
    float dg, du;
    swiglu_grad(ld(gu, ig), ld(gu, iu), ld(dy, i), &dg, &du);
    st(dgu, ig, dg);
    st(dgu, iu, du);
}
// 8 columns per thread, rows on grid.y (strided past 65535): no 64-bit division per element
__global__ static void swiglu_fwd8(bf16_t *out, const bf16_t *gu, int N, int F) {
    int f = 8 * (blockIdx.x * blockDim.x + threadIdx.x);
    if (f >= F) return;
    for (size_t n = blockIdx.y; n < (size_t)N; n += gridDim.y) {
        float g[8], u[8];
        load8(g, gu + n * 2 * F + f), load8(u, gu + n * 2 * F + F + f);
#pragma unroll
        for (int k = 0; k < 8; k++) g[k] = silu(g[k]) * u[k];
        store8(out + n * F + f, g);
    }
}
__global__ static void swiglu_bwd8(bf16_t *dgu, const bf16_t *dy, const bf16_t *gu, int N, int F) {
    int f = 8 * (blockIdx.x * blockDim.x + threadIdx.x);
    if (f >= F) return;
    for (size_t n = blockIdx.y; n < (size_t)N; n += gridDim.y) {
        size_t ig = n * 2 * F + f, iu = ig + F;
        float g[8], u[8], d[8], dg[8], du[8];
        load8(g, gu + ig), load8(u, gu + iu), load8(d, dy + n * F + f);
#pragma unroll
        for (int k = 0; k < 8; k++) swiglu_grad(g[k], u[k], d[k], &dg[k], &du[k]);
        store8(dgu + ig, dg), store8(dgu + iu, du);
    }
}

static unsigned blocks(size_t n) { return (unsigned)((n + 255) / 256); }

static bool by8(size_t n, const void *a, const void *b, const void *c) {
    return n % 8 == 0 && aligned16(a) && aligned16(b) && (!c || aligned16(c));
}
static dim3 rows_grid(int N, int F) { return dim3((unsigned)((F / 8 + 255) / 256), (unsigned)(N < 65535 ? N : 65535)); }

extern "C" void cuda_gelu_forward(bf16 *out, const bf16 *inp, size_t n) {
    if (!n) return;
    if (by8(n, out, inp, NULL)) gelu_fwd8<<<blocks(n / 8), 256, 0, g_stream>>>(B16(out), CB16(inp), n / 8);
    else gelu_fwd<<<blocks(n), 256, 0, g_stream>>>(B16(out), CB16(inp), n);
    LAUNCH_CHECK();
}
extern "C" void cuda_gelu_backward(bf16 *dinp, const bf16 *dout, const bf16 *inp, size_t n) {
    if (!n) return;
    if (by8(n, dinp, dout, inp)) gelu_bwd8<<<blocks(n / 8), 256, 0, g_stream>>>(B16(dinp), CB16(dout), CB16(inp), n / 8);
    else gelu_bwd<<<blocks(n), 256, 0, g_stream>>>(B16(dinp), CB16(dout), CB16(inp), n);
    LAUNCH_CHECK();
}
extern "C" void cuda_swiglu_forward(bf16 *out, const bf16 *gu, int N, int F) {
    if (!N || !F) return;
    if (by8((size_t)F, out, gu, NULL)) swiglu_fwd8<<<rows_grid(N, F), 256, 0, g_stream>>>(B16(out), CB16(gu), N, F);
    else swiglu_fwd<<<blocks((size_t)N * F), 256, 0, g_stream>>>(B16(out), CB16(gu), N, F);
    LAUNCH_CHECK();
}
extern "C" void cuda_swiglu_backward(bf16 *dgu, const bf16 *dout, const bf16 *gu, int N, int F) {
    if (!N || !F) return;
    if (by8((size_t)F, dgu, dout, gu)) swiglu_bwd8<<<rows_grid(N, F), 256, 0, g_stream>>>(B16(dgu), CB16(dout), CB16(gu), N, F);
    else swiglu_bwd<<<blocks((size_t)N * F), 256, 0, g_stream>>>(B16(dgu), CB16(dout), CB16(gu), N, F);
    LAUNCH_CHECK();
}

// ---- RoPE (rotate_half pairs (j, j + D/2)), in place ----
__global__ static void rope_kernel(bf16_t *x, const float *ang, int T, int H, int D, float sign) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    int half = D / 2;
    if (i >= (size_t)T * H * half) return;
    int j = i % half;
    size_t th = i / half, t = th / H;
    float a = ang[t * half + j], c = cosf(a), s = sign * sinf(a);
    size_t base = th * D;
    float x0 = ld(x, base + j), x1 = ld(x, base + j + half);
    st(x, base + j, x0 * c - x1 * s);
    st(x, base + j + half, x1 * c + x0 * s);
}
// the same over 8 consecutive pairs per thread (16-byte accesses), for D/2 a multiple of 8
__global__ static void rope_kernel8(bf16_t *x, const float *ang, int T, int H, int D, float sign) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    int half = D / 2, per = half / 8;
    if (i >= (size_t)T * H * per) return;
    int j = (int)(i % per) * 8;
    size_t th = i / per, t = th / H;
    bf16_t *x0p = x + th * D + j, *x1p = x0p + half;
    float x0[8], x1[8], a[8];
    load8(x0, x0p), load8(x1, x1p);
    *reinterpret_cast<float4 *>(a) = *reinterpret_cast<const float4 *>(ang + t * half + j);
    *reinterpret_cast<float4 *>(a + 4) = *reinterpret_cast<const float4 *>(ang + t * half + j + 4);
#pragma unroll
    for (int k = 0; k < 8; k++) {
        float c = cosf(a[k]), s = sign * sinf(a[k]), y0 = x0[k] * c - x1[k] * s, y1 = x1[k] * c + x0[k] * s;
        x0[k] = y0, x1[k] = y1;
    }
    store8(x0p, x0), store8(x1p, x1);
}

static void rope_launch(bf16 *x, const float *angles, int T, int H, int D, float sign) {
    if (D % 16 == 0 && aligned16(x) && aligned16(angles))
        rope_kernel8<<<blocks((size_t)T * H * D / 16), 256, 0, g_stream>>>(B16(x), angles, T, H, D, sign);
    else
        rope_kernel<<<blocks((size_t)T * H * D / 2), 256, 0, g_stream>>>(B16(x), angles, T, H, D, sign);
    LAUNCH_CHECK();
}
extern "C" void cuda_rope_forward(bf16 *x, const float *angles, int T, int H, int D) { rope_launch(x, angles, T, H, D, 1.0f); }
extern "C" void cuda_rope_backward(bf16 *dx, const float *angles, int T, int H, int D) { rope_launch(dx, angles, T, H, D, -1.0f); }

// ---- the vision tower's QKV split with RoPE, and its backward ----
// wide: the fused product's rows [Q | K | V] (3·H·D); q, k, v: [T, H, D]. A thread takes W consecutive pairs
// (j .. j + W, and the same + D/2) of one (token, head) in each of Q, K and V: Q's and K's rotated, V's copied.
// MERGE: the backward, from q, k, v (their gradients) into wide with the inverse rotation. One pass instead of
// three strided copies and two in-place rotations (together 5% of the tower's step).
template <int W> __device__ __forceinline__ void load_w(float *x, const bf16_t *p) {
    if constexpr (W == 8) load8(x, p);
    else x[0] = ld(p, 0);
}
template <int W> __device__ __forceinline__ void store_w(bf16_t *p, const float *x) {
    if constexpr (W == 8) store8(p, x);
    else st(p, 0, x[0]);
}
template <int W, bool MERGE>
__global__ static void qkv_rope_kernel(bf16_t *wide, bf16_t *q, bf16_t *k, bf16_t *v, const float *ang, int T, int H, int D) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    int half = D / 2, per = half / W;
    if (i >= (size_t)T * H * per) return;
    int j = (int)(i % per) * W;
    size_t th = i / per, t = th / H, C = (size_t)H * D;
    float c[W], s[W];
#pragma unroll
    for (int e = 0; e < W; e++) {
        sincosf(ang[t * half + j + e], &s[e], &c[e]);  // (one range reduction for both)
        if (MERGE) s[e] = -s[e];
    }
    bf16_t *narrow[3] = {q, k, v}, *src[3], *dst[3];
    float x0[3][W], x1[3][W];
#pragma unroll
    for (int part = 0; part < 3; part++) {  // every load first (the stores might alias them as far as the compiler knows)
        bf16_t *w0 = wide + t * 3 * C + part * C + (th % H) * D + j, *n0 = narrow[part] + th * D + j;
        src[part] = MERGE ? n0 : w0, dst[part] = MERGE ? w0 : n0;
        load_w<W>(x0[part], src[part]), load_w<W>(x1[part], src[part] + half);
    }
#pragma unroll
    for (int part = 0; part < 3; part++) {
#pragma unroll
        for (int e = 0; part < 2 && e < W; e++) {
            float y0 = x0[part][e] * c[e] - x1[part][e] * s[e], y1 = x1[part][e] * c[e] + x0[part][e] * s[e];
            x0[part][e] = y0, x1[part][e] = y1;
        }
        store_w<W>(dst[part], x0[part]), store_w<W>(dst[part] + half, x1[part]);
    }
}
template <bool MERGE> static void qkv_rope_launch(bf16 *wide, bf16 *q, bf16 *k, bf16 *v, const float *angles, int T, int H, int D) {
    size_t pairs = (size_t)T * H * (D / 2);
    if (D % 16 == 0 && aligned16(wide) && aligned16(q) && aligned16(k) && aligned16(v) && !cuda_safe_kernels())
        qkv_rope_kernel<8, MERGE><<<blocks(pairs / 8), 256, 0, g_stream>>>(B16(wide), B16(q), B16(k), B16(v), angles, T, H, D);
    else
        qkv_rope_kernel<1, MERGE><<<blocks(pairs), 256, 0, g_stream>>>(B16(wide), B16(q), B16(k), B16(v), angles, T, H, D);
    LAUNCH_CHECK();
}
extern "C" void cuda_qkv_split_rope(bf16 *q, bf16 *k, bf16 *v, const bf16 *qkv, const float *angles, int T, int H, int D) {
    qkv_rope_launch<false>((bf16 *)qkv, q, k, v, angles, T, H, D);
}
extern "C" void cuda_qkv_merge_rope_backward(bf16 *dqkv, const bf16 *dq, const bf16 *dk, const bf16 *dv, const float *angles, int T, int H,
                                             int D) {
    qkv_rope_launch<true>(dqkv, (bf16 *)dq, (bf16 *)dk, (bf16 *)dv, angles, T, H, D);
}

// ---- embedding ----
__global__ static void embed_fwd(bf16_t *out, const int32_t *ids, const bf16_t *table, int T, int C) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (size_t)T * C) out[i] = table[(size_t)ids[i / C] * C + i % C];
}
// A block per distinct id adds that id's token rows in token order (deterministic; no atomics): the
// tokens grouped by id (order[off[u] .. off[u+1]) for id uniq[u]) are built on the host.
__global__ static void embed_bwd(float *dtable, const bf16_t *dy, const int32_t *uniq, const int32_t *off, const int32_t *order,
                                 int C) {
    int u = blockIdx.x;
    float *row = dtable + (size_t)uniq[u] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float s = row[c];
        for (int i = off[u]; i < off[u + 1]; i++) s += ld(dy, (size_t)order[i] * C + c);
        row[c] = s;
    }
}
static int cmp_id_then_pos(const void *a, const void *b) {  // (id, position) pairs
    const int32_t *x = (const int32_t *)a, *y = (const int32_t *)b;
    return x[0] != y[0] ? (x[0] < y[0] ? -1 : 1) : (x[1] < y[1] ? -1 : x[1] > y[1]);
}
extern "C" void cuda_embedding_forward(bf16 *out, const int32_t *ids, const bf16 *table, int T, int C) { embed_fwd<<<blocks((size_t)T * C), 256, 0, g_stream>>>(B16(out), ids, CB16(table), T, C); LAUNCH_CHECK(); }
extern "C" void cuda_embedding_backward(float *dtable, const bf16 *dout, const int32_t *ids_host, int T, int C) {
    if (T <= 0) return;
    // the tokens grouped by id on the host: [uniq | off | order] go up together. The host buffers grow with
    // the largest T seen and are kept (the step loop does not allocate).
    static int32_t *pairs, *host;
    static int cap;
    if (T > cap) {
        free(pairs);
        free(host);
        pairs = (int32_t *)malloc((size_t)T * 2 * sizeof(int32_t));
        host = (int32_t *)malloc((size_t)(3 * T + 1) * sizeof(int32_t));
        cap = pairs && host ? T : 0;
        if (!cap) { cuda_note_error("cuda_embedding_backward", "out of host memory"); return; }
    }
    for (int t = 0; t < T; t++) { pairs[2 * t] = ids_host[t]; pairs[2 * t + 1] = t; }
    qsort(pairs, (size_t)T, 2 * sizeof(int32_t), cmp_id_then_pos);
    int nu = 0;
    int32_t *uniq = host, *off = host + T, *order = host + 2 * T + 1;
    for (int t = 0; t < T; t++) {
        if (t == 0 || pairs[2 * t] != pairs[2 * t - 2]) { uniq[nu] = pairs[2 * t]; off[nu++] = t; }
        order[t] = pairs[2 * t + 1];
    }
    off[nu] = T;
    // packed as uniq[nu] | off[nu + 1] | order[T] in one upload
    int32_t *dev = (int32_t *)cuda_scratch((size_t)(3 * T + 1) * sizeof(int32_t));
    memmove(host + nu, off, (size_t)(nu + 1) * sizeof(int32_t));
    memmove(host + 2 * nu + 1, order, (size_t)T * sizeof(int32_t));
    cuda_upload(dev, host, (size_t)(2 * nu + 1 + T) * sizeof(int32_t));
    embed_bwd<<<nu, C >= 1024 ? 256 : 128, 0, g_stream>>>(dtable, CB16(dout), dev, dev + nu, dev + 2 * nu + 1, C);
    LAUNCH_CHECK();
}

// ---- cross-entropy: a block per row, max and Σexp in fp32, no probabilities stored ----
// One pass for the statistics: each thread keeps a running maximum m and Σ exp(x − m), rescaled when m
// grows (the online softmax), reading 8 logits per 16-byte load where the row is aligned; then the block
// combines its threads' pairs. Every thread of the block gets the row's maximum and Σ exp(x − max).
__device__ __forceinline__ void online_add(float *m, float *s, float x) {
    if (x > *m) { *s = *s * expf(*m - x) + 1.0f; *m = x; }  // exp(−inf) = 0 for the first element
    else if (x > -INFINITY) *s += expf(x - *m);             // a −inf logit adds nothing (and no NaN)
}
__device__ static void row_max_sumexp(const bf16_t *x, int V, float *mx_out, float *sum_out) {
    float m = -INFINITY, s = 0.0f;
    if (V % 8 == 0 && aligned16(x)) {
        for (int i = 8 * threadIdx.x; i < V; i += 8 * blockDim.x) {
            float v[8];
            load8(v, x + i);
#pragma unroll
            for (int k = 0; k < 8; k++) online_add(&m, &s, v[k]);
        }
    } else {
        for (int i = threadIdx.x; i < V; i += blockDim.x) online_add(&m, &s, ld(x, i));
    }
    float mx = block_max(m);
    *mx_out = mx;
    *sum_out = block_sum(s > 0.0f ? s * expf(m - mx) : 0.0f);  // a thread without elements adds 0
}
__global__ static void ce_fwd(float *losses, const bf16_t *logits, const int32_t *targets, int V) {
    size_t row = blockIdx.x;
    if (targets[row] < 0) { if (threadIdx.x == 0) losses[row] = 0.0f; return; }
    const bf16_t *x = logits + row * V;
    float mx, s;
    row_max_sumexp(x, V, &mx, &s);
    if (threadIdx.x == 0) losses[row] = logf(s) + mx - ld(x, targets[row]);
}
// softmax(x)·scale, less scale at the target
__device__ __forceinline__ float ce_grad(float x, float mx, float inv, bool target, float scale) {
    return (expf(x - mx) * inv - (target ? 1.0f : 0.0f)) * scale;
}
// dlogits may be logits: each thread reads its elements before it writes them. losses (optional): the row's
// loss as ce_fwd computes it, its target logit read before the statistics' block barriers, so before any
// thread overwrites it.
__global__ static void ce_bwd(float *losses, bf16_t *dlogits, const bf16_t *logits, const int32_t *targets, int V, float scale) {
    size_t row = blockIdx.x;
    bf16_t *d = dlogits + row * V;
    const bf16_t *x = logits + row * V;
    int tgt = targets[row];
    bool vec = V % 8 == 0 && aligned16(x) && aligned16(d);
    if (tgt < 0) {
        float z[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (losses && threadIdx.x == 0) losses[row] = 0.0f;
        if (vec) for (int i = 8 * threadIdx.x; i < V; i += 8 * blockDim.x) store8(d + i, z);
        else for (int i = threadIdx.x; i < V; i += blockDim.x) st(d, i, 0.0f);
        return;
    }
    float xt = losses && threadIdx.x == 0 ? ld(x, tgt) : 0.0f;
    float mx, s;
    row_max_sumexp(x, V, &mx, &s);
    if (losses && threadIdx.x == 0) losses[row] = logf(s) + mx - xt;
    float inv = 1.0f / s;
    if (vec) {
        for (int i = 8 * threadIdx.x; i < V; i += 8 * blockDim.x) {
            float v[8];
            load8(v, x + i);
#pragma unroll
            for (int k = 0; k < 8; k++) v[k] = ce_grad(v[k], mx, inv, i + k == tgt, scale);
            store8(d + i, v);
        }
    } else {
        for (int i = threadIdx.x; i < V; i += blockDim.x) st(d, i, ce_grad(ld(x, i), mx, inv, i == tgt, scale));
    }
}
extern "C" void cuda_cross_entropy_forward(float *losses, const bf16 *logits, const int32_t *targets, int T, int V) { ce_fwd<<<T, 1024, 0, g_stream>>>(losses, CB16(logits), targets, V); LAUNCH_CHECK(); }
extern "C" void cuda_cross_entropy_backward(bf16 *dlogits, const bf16 *logits, const int32_t *targets, int T, int V, float scale) { ce_bwd<<<T, 1024, 0, g_stream>>>(NULL, B16(dlogits), CB16(logits), targets, V, scale); LAUNCH_CHECK(); }
extern "C" void cuda_cross_entropy_fused(float *losses, bf16 *dlogits, const bf16 *logits, const int32_t *targets, int T, int V, float scale) {
    ce_bwd<<<T, 1024, 0, g_stream>>>(losses, B16(dlogits), CB16(logits), targets, V, scale);
    LAUNCH_CHECK();
}

// ---- AdamW in PyTorch's order, fp32 state; the bf16 copy rounded to nearest even ----
__global__ static void adamw_kernel(float *master, bf16_t *param, const float *grad, float *m, float *v, size_t n, float lr, float b1,
                                    float b2, float eps, float wd, float gs, float step, float bc2_sqrt) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = __fmul_rn(grad[i], gs), p = master[i] * (1.0f - lr * wd);
    float mi = m[i] + (1.0f - b1) * (g - m[i]), vi = b2 * v[i] + (1.0f - b2) * g * g;
    p -= step * mi / (sqrtf(vi) / bc2_sqrt + eps);
    m[i] = mi;
    v[i] = vi;
    master[i] = p;
    if (param) param[i] = __float2bfloat16_rn(p);
}
extern "C" void cuda_adamw_step(float *master, bf16 *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1,
                                float beta2, float eps, float weight_decay, float grad_scale, int64_t t) {
    float bc1 = 1.0f - powf(beta1, (float)t), bc2 = 1.0f - powf(beta2, (float)t);
    if (n)
        adamw_kernel<<<blocks(n), 256, 0, g_stream>>>(master, B16(param), grad, m, v, n, lr, beta1, beta2, eps, weight_decay, grad_scale,
                                                      lr / bc1, sqrtf(bc2));
    LAUNCH_CHECK();
}
