// flash_fwd.cu: tensor-core attention forward (FlashAttention-2 scheme) for head_dim 64 and 128.
// A block of 4 warps owns 64 query rows of one head of one packed sub-sequence; each warp owns 16 of
// them and keeps everything of its rows in registers: its Q fragments, the score tile S (16 × 64 keys),
// the row maximum m and sum l, and the output accumulator O (16 × D, fp32). Per key tile of 64 rows
// (K and V staged in shared memory; causal: up to the diagonal):
//   S = Q·Kᵀ·scale;  m' = max(m, rowmax S);  P = exp(S − m');  l = l·e^(m−m') + rowsum P
//   O = O·e^(m−m') + P·V        (P goes from S's accumulator layout straight into the A operand)
// with mma.sync m16n8k16 (bf16 in, fp32 accumulate). No T×T matrix exists anywhere.
// (Fragment layouts in flash_mma.cuh.)
#include <math.h>

#include "flash_mma.cuh"
#include "ops_cuda.h"

enum { BR = 64, BC = 64, WARPS = 4 };

template <int D>
struct FwdSmem {
    bf16_t q[BR][D + 8], k[BC][D + 8], v[BC][D + 8];  // +8: 16 bytes of padding per row against bank conflicts
};

template <int D>
__global__ static void __launch_bounds__(WARPS * 32)
flash_fwd(bf16_t *out, float *lse, const bf16_t *q, const bf16_t *k, const bf16_t *v, const int32_t *cu, int Hq, int Hkv,
          int causal, float scale) {
    extern __shared__ __align__(128) unsigned char raw[];
    FwdSmem<D> &sm = *reinterpret_cast<FwdSmem<D> *>(raw);
    int s = blockIdx.x, tile = blockIdx.y, h = blockIdx.z, hk = h / (Hq / Hkv);
    int start = cu[s], end = cu[s + 1], q0 = start + tile * BR;
    if (q0 >= end) return;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    int row0 = warp * 16, t_lo = q0 + row0 + g, t_hi = t_lo + 8;  // this thread's two query rows
    flash_load_tile<D>(sm.q, q, q0, end, Hq, h);
    __syncthreads();
    uint32_t qa[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        qa[kk][0] = *(const uint32_t *)&sm.q[row0 + g][kk * 16 + 2 * c];
        qa[kk][1] = *(const uint32_t *)&sm.q[row0 + g + 8][kk * 16 + 2 * c];
        qa[kk][2] = *(const uint32_t *)&sm.q[row0 + g][kk * 16 + 2 * c + 8];
        qa[kk][3] = *(const uint32_t *)&sm.q[row0 + g + 8][kk * 16 + 2 * c + 8];
    }
    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.0f, l_hi = 0.0f;
    int kend = causal ? min(end, q0 + BR) : end;
    for (int k0 = start; k0 < kend; k0 += BC) {
        __syncthreads();  // everyone is done with the previous K and V
        flash_load_tile<D>(sm.k, k, k0, end, Hkv, hk);
        flash_load_tile<D>(sm.v, v, k0, end, Hkv, hk);
        __syncthreads();
        float sc[BC / 8][4];
#pragma unroll
        for (int n = 0; n < BC / 8; n++) {
            sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {  // B[k][n] = K[key n][k]: two consecutive elements of a K row
                uint32_t b0 = *(const uint32_t *)&sm.k[n * 8 + g][kk * 16 + 2 * c];
                uint32_t b1 = *(const uint32_t *)&sm.k[n * 8 + g][kk * 16 + 2 * c + 8];
                mma16816(sc[n], qa[kk], b0, b1);
            }
        }
        // scale, mask, row maxima (a row's 64 scores are spread over the 4 lanes of a quad)
        float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
        for (int n = 0; n < BC / 8; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int j = k0 + n * 8 + 2 * c + e;
                sc[n][e] = (j < end && (!causal || j <= t_lo)) ? sc[n][e] * scale : -INFINITY;
                sc[n][2 + e] = (j < end && (!causal || j <= t_hi)) ? sc[n][2 + e] * scale : -INFINITY;
                mx_lo = fmaxf(mx_lo, sc[n][e]);
                mx_hi = fmaxf(mx_hi, sc[n][2 + e]);
            }
        float mn_lo = fmaxf(m_lo, quad_max(mx_lo)), mn_hi = fmaxf(m_hi, quad_max(mx_hi));
        float corr_lo = mn_lo == -INFINITY ? 1.0f : __expf(m_lo - mn_lo), corr_hi = mn_hi == -INFINITY ? 1.0f : __expf(m_hi - mn_hi);
        float sum_lo = 0.0f, sum_hi = 0.0f;
        uint32_t pa[BC / 16][4];  // P in the A-operand layout of the P·V products
#pragma unroll
        for (int n = 0; n < BC / 8; n++) {
            float p0 = mn_lo == -INFINITY ? 0.0f : __expf(sc[n][0] - mn_lo), p1 = mn_lo == -INFINITY ? 0.0f : __expf(sc[n][1] - mn_lo);
            float p2 = mn_hi == -INFINITY ? 0.0f : __expf(sc[n][2] - mn_hi), p3 = mn_hi == -INFINITY ? 0.0f : __expf(sc[n][3] - mn_hi);
            sum_lo += p0 + p1;
            sum_hi += p2 + p3;
            pa[n / 2][(n % 2) * 2 + 0] = pack_bf16(p0, p1);  // rows g:   keys 2c.. (n even) or 2c+8.. (n odd)
            pa[n / 2][(n % 2) * 2 + 1] = pack_bf16(p2, p3);  // rows g+8
        }
        l_lo = l_lo * corr_lo + quad_sum(sum_lo);
        l_hi = l_hi * corr_hi + quad_sum(sum_hi);
        m_lo = mn_lo;
        m_hi = mn_hi;
#pragma unroll
        for (int n = 0; n < D / 8; n++) {
            o[n][0] *= corr_lo; o[n][1] *= corr_lo; o[n][2] *= corr_hi; o[n][3] *= corr_hi;
        }
        // O += P (16 × 64) · V (64 × D): B[k][n] = V[key k][d n], two keys of one column per register
#pragma unroll
        for (int kk = 0; kk < BC / 16; kk++) {
            // A layout is a0 = rows g keys 2c.., a1 = rows g+8 keys 2c.., a2 = rows g keys 2c+8.., a3 = rows g+8 keys 2c+8..
            uint32_t a[4] = {pa[kk][0], pa[kk][1], pa[kk][2], pa[kk][3]};
#pragma unroll
            for (int n = 0; n < D / 8; n++) {
                int key = kk * 16 + 2 * c, col = n * 8 + g;
                uint32_t b0 = pack_two(sm.v[key][col], sm.v[key + 1][col]);
                uint32_t b1 = pack_two(sm.v[key + 8][col], sm.v[key + 9][col]);
                mma16816(o[n], a, b0, b1);
            }
        }
    }
    // O / l and the log-sum-exp
#pragma unroll
    for (int n = 0; n < D / 8; n++) {
        int col = n * 8 + 2 * c;
        if (t_lo < end) {
            size_t base = ((size_t)t_lo * Hq + h) * D + col;
            *reinterpret_cast<__nv_bfloat162 *>(out + base) = __floats2bfloat162_rn(o[n][0] / l_lo, o[n][1] / l_lo);
        }
        if (t_hi < end) {
            size_t base = ((size_t)t_hi * Hq + h) * D + col;
            *reinterpret_cast<__nv_bfloat162 *>(out + base) = __floats2bfloat162_rn(o[n][2] / l_hi, o[n][3] / l_hi);
        }
    }
    if (c == 0) {
        if (t_lo < end) lse[(size_t)t_lo * Hq + h] = m_lo + logf(l_lo);
        if (t_hi < end) lse[(size_t)t_hi * Hq + h] = m_hi + logf(l_hi);
    }
}

// ---- second generation: the same math, with K/V tiles double-buffered through cp.async (the next
// tile's copy overlaps this tile's products), every mma operand loaded by ldmatrix (V through the
// transposing form instead of 16-bit gathers), masks only on the tiles that cross the diagonal or
// the sequence end, and, under the causal mask, the longest query tiles launched first. ----
template <int D>
struct Fwd2Smem {
    bf16_t q[BR][D + 8], k[2][BC][D + 8], v[2][BC][D + 8];
};

template <int D>
__global__ static void __launch_bounds__(WARPS * 32, 2)
flash_fwd2(bf16_t *out, float *lse, const bf16_t *q, const bf16_t *k, const bf16_t *v, const int32_t *cu, int Hq, int Hkv,
           int causal, float scale) {
    extern __shared__ __align__(128) unsigned char raw[];
    Fwd2Smem<D> &sm = *reinterpret_cast<Fwd2Smem<D> *>(raw);
    int h = blockIdx.x, s = blockIdx.z, hk = h / (Hq / Hkv);
    int tile = causal ? gridDim.y - 1 - blockIdx.y : blockIdx.y;  // heavy (late) query tiles first
    int start = cu[s], end = cu[s + 1], q0 = start + tile * BR;
    if (q0 >= end) return;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    int row0 = warp * 16, t_lo = q0 + row0 + g, t_hi = t_lo + 8;
    int kend = causal ? min(end, q0 + BR) : end, nk = (kend - start + BC - 1) / BC;
    flash_load_tile_async<D>(sm.q, q, q0, end, Hq, h);
    flash_load_tile_async<D>(sm.k[0], k, start, end, Hkv, hk);
    flash_load_tile_async<D>(sm.v[0], v, start, end, Hkv, hk);
    cp_async_commit();
    uint32_t qa[D / 16][4];
    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.0f, l_hi = 0.0f;
    for (int it = 0; it < nk; it++) {
        int k0 = start + it * BC, buf = it & 1;
        cp_async_wait_all();
        __syncthreads();  // tile `it` is in buf for everyone, and everyone is done with buf ^ 1
        if (it + 1 < nk) {
            flash_load_tile_async<D>(sm.k[buf ^ 1], k, k0 + BC, end, Hkv, hk);
            flash_load_tile_async<D>(sm.v[buf ^ 1], v, k0 + BC, end, Hkv, hk);
        }
        cp_async_commit();
        if (it == 0)
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) flash_a_ldsm<D>(qa[kk], sm.q, row0, kk, lane);
        float sc[BC / 8][4];
        flash_rows_tileT2<D>(sc, qa, sm.k[buf], lane);
        // scale; mask only where a key may lie past the sequence end or after a query row
        int full = k0 + BC <= end && (!causal || k0 + BC - 1 <= q0);
        float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
        for (int n = 0; n < BC / 8; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int j = k0 + n * 8 + 2 * c + e;
                sc[n][e] = full || (j < end && (!causal || j <= t_lo)) ? sc[n][e] * scale : -INFINITY;
                sc[n][2 + e] = full || (j < end && (!causal || j <= t_hi)) ? sc[n][2 + e] * scale : -INFINITY;
                mx_lo = fmaxf(mx_lo, sc[n][e]);
                mx_hi = fmaxf(mx_hi, sc[n][2 + e]);
            }
        float mn_lo = fmaxf(m_lo, quad_max(mx_lo)), mn_hi = fmaxf(m_hi, quad_max(mx_hi));
        // a row with no visible key yet (only past the end of the sequence) keeps m = -inf: use 0 as its base
        float base_lo = mn_lo == -INFINITY ? 0.0f : mn_lo, base_hi = mn_hi == -INFINITY ? 0.0f : mn_hi;
        float corr_lo = __expf(m_lo - base_lo), corr_hi = __expf(m_hi - base_hi);
        float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
        for (int n = 0; n < BC / 8; n++) {
            sc[n][0] = __expf(sc[n][0] - base_lo);
            sc[n][1] = __expf(sc[n][1] - base_lo);
            sc[n][2] = __expf(sc[n][2] - base_hi);
            sc[n][3] = __expf(sc[n][3] - base_hi);
            sum_lo += sc[n][0] + sc[n][1];
            sum_hi += sc[n][2] + sc[n][3];
        }
        l_lo = l_lo * corr_lo + quad_sum(sum_lo);
        l_hi = l_hi * corr_hi + quad_sum(sum_hi);
        m_lo = mn_lo;
        m_hi = mn_hi;
#pragma unroll
        for (int n = 0; n < D / 8; n++) {
            o[n][0] *= corr_lo; o[n][1] *= corr_lo; o[n][2] *= corr_hi; o[n][3] *= corr_hi;
        }
        flash_p_tile2<D>(o, sc, sm.v[buf], lane);  // O += P·V
    }
#pragma unroll
    for (int n = 0; n < D / 8; n++) {
        int col = n * 8 + 2 * c;
        if (t_lo < end)
            *reinterpret_cast<__nv_bfloat162 *>(out + ((size_t)t_lo * Hq + h) * D + col) = __floats2bfloat162_rn(o[n][0] / l_lo, o[n][1] / l_lo);
        if (t_hi < end)
            *reinterpret_cast<__nv_bfloat162 *>(out + ((size_t)t_hi * Hq + h) * D + col) = __floats2bfloat162_rn(o[n][2] / l_hi, o[n][3] / l_hi);
    }
    if (c == 0) {
        if (t_lo < end) lse[(size_t)t_lo * Hq + h] = m_lo + logf(l_lo);
        if (t_hi < end) lse[(size_t)t_hi * Hq + h] = m_hi + logf(l_hi);
    }
}

template <int D>
static void launch2(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu, int nseq, int max_len,
                    int Hq, int Hkv, int causal) {
    size_t bytes = sizeof(Fwd2Smem<D>);
    static int configured;
    if (!configured) {
        CUDA_CHECK(cudaFuncSetAttribute(flash_fwd2<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        configured = 1;
    }
    dim3 grid(Hq, (max_len + BR - 1) / BR, nseq);  // heads fastest: the heavy tiles of every head go out first
    flash_fwd2<D><<<grid, WARPS * 32, bytes, g_stream>>>((bf16_t *)out, lse, (const bf16_t *)q, (const bf16_t *)k,
                                                        (const bf16_t *)v, cu, Hq, Hkv, causal, 1.0f / sqrtf((float)D));
    LAUNCH_CHECK();
}

template <int D>
static void launch(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu, int nseq, int max_len,
                   int Hq, int Hkv, int causal) {
    size_t bytes = sizeof(FwdSmem<D>);
    static int configured;
    if (!configured) {
        CUDA_CHECK(cudaFuncSetAttribute(flash_fwd<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        configured = 1;
    }
    dim3 grid(nseq, (max_len + BR - 1) / BR, Hq);
    flash_fwd<D><<<grid, WARPS * 32, bytes, g_stream>>>((bf16_t *)out, lse, (const bf16_t *)q, (const bf16_t *)k,
                                                       (const bf16_t *)v, cu, Hq, Hkv, causal, 1.0f / sqrtf((float)D));
    LAUNCH_CHECK();
}

// Returns 0 when it handled the call (head_dim 64 or 128), -1 to leave it to the general kernel.
int cuda_flash_forward(int version, bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu,
                       int nseq, int max_len, int Hq, int Hkv, int D, int causal) {
    if (version == 2 && D == 64) launch2<64>(out, lse, q, k, v, cu, nseq, max_len, Hq, Hkv, causal);
    else if (version == 2 && D == 128) launch2<128>(out, lse, q, k, v, cu, nseq, max_len, Hq, Hkv, causal);
    else if (D == 64) launch<64>(out, lse, q, k, v, cu, nseq, max_len, Hq, Hkv, causal);
    else if (D == 128) launch<128>(out, lse, q, k, v, cu, nseq, max_len, Hq, Hkv, causal);
    else return -1;
    return 0;
}
