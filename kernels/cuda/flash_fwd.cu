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
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
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
        flash_softmax_step<BC, D>(sc, m, l, o, 0, k0, end, causal, t_lo, t_hi, c, scale);
        uint32_t pa[BC / 16][4];  // P in the A-operand layout of the P·V products
        flash_p_frags<BC>(pa, sc);
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
    flash_store_rows<D>(out, lse, o, m, l, t_lo, t_hi, end, Hq, h, c);  // O / l and the log-sum-exp
}

// ---- second and third generations: the same math, with K/V tiles double-buffered through cp.async (the
// next tile's copy overlaps this tile's products), every mma operand loaded by ldmatrix (V through the
// transposing form instead of 16-bit gathers), Q fragments from shared memory per tile, masks only on
// the key blocks that cross the diagonal or the sequence end, and, under the causal mask, the longest
// query tiles launched first. A warp owns MR blocks of 16 query rows and takes the keys in sub-blocks
// of KB: version 2 is MR 1, KB 64 (64 rows per block); version 3 is FlashAttention-2's shape, MR 2 (128
// rows per block), so that every K and V fragment read from shared memory feeds two products instead of
// one, with KB 32 at head_dim 128 to keep both row blocks' scores in registers. ----

template <int D, int MR>
struct FwdTiledSmem {
    bf16_t q[MR * 16 * WARPS][D + 8], k[2][BC][D + 8], v[2][BC][D + 8];
};

template <int D, int MR, int KB>
__global__ static void __launch_bounds__(WARPS * 32, 2)
flash_fwd_tiled(bf16_t *out, float *lse, const bf16_t *q, const bf16_t *k, const bf16_t *v, const int32_t *cu, int Hq, int Hkv,
           int causal, float scale) {
    extern __shared__ __align__(128) unsigned char raw[];
    constexpr int BR3 = MR * 16 * WARPS;  // query rows of a block
    FwdTiledSmem<D, MR> &sm = *reinterpret_cast<FwdTiledSmem<D, MR> *>(raw);
    int h = blockIdx.x, s = blockIdx.z, hk = h / (Hq / Hkv);
    int tile = causal ? gridDim.y - 1 - blockIdx.y : blockIdx.y;  // heavy (late) query tiles first
    int start = cu[s], end = cu[s + 1], q0 = start + tile * BR3;
    if (q0 >= end) return;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    int wrow = warp * 16 * MR;  // this warp's rows: wrow .. wrow + 31 of the block, as MR blocks of 16
    int kend = causal ? min(end, q0 + BR3) : end, nk = (kend - start + BC - 1) / BC;
#pragma unroll
    for (int r = 0; r < BR3; r += FT) flash_load_tile_async<D>(&sm.q[r], q, q0 + r, end, Hq, h);
    flash_load_tile_async<D>(sm.k[0], k, start, end, Hkv, hk);
    flash_load_tile_async<D>(sm.v[0], v, start, end, Hkv, hk);
    cp_async_commit();
    float o[MR][D / 8][4], m[MR][2], l[MR][2];
#pragma unroll
    for (int mi = 0; mi < MR; mi++) {
#pragma unroll
        for (int n = 0; n < D / 8; n++) o[mi][n][0] = o[mi][n][1] = o[mi][n][2] = o[mi][n][3] = 0.0f;
        m[mi][0] = m[mi][1] = -INFINITY;
        l[mi][0] = l[mi][1] = 0.0f;
    }
    for (int it = 0; it < nk; it++) {
        int k0 = start + it * BC, buf = it & 1;
        tiles_ready<MmaSyncTiles>();  // tile `it` is in buf for everyone, and everyone is done with buf ^ 1
        if (it + 1 < nk) {
            flash_load_tile_async<D>(sm.k[buf ^ 1], k, k0 + BC, end, Hkv, hk);
            flash_load_tile_async<D>(sm.v[buf ^ 1], v, k0 + BC, end, Hkv, hk);
        }
        cp_async_commit();
        // the tile's keys in sub-blocks of KB (32 at head_dim 128, so the two row blocks' scores fit in registers)
#pragma unroll
        for (int hb = 0; hb < BC / KB; hb++) {
            int kb0 = k0 + hb * KB;
            // S = Q·Kᵀ for both row blocks, each K fragment loaded once
            float sc[MR][KB / 8][4];
#pragma unroll
            for (int mi = 0; mi < MR; mi++)
#pragma unroll
                for (int n = 0; n < KB / 8; n++) sc[mi][n][0] = sc[mi][n][1] = sc[mi][n][2] = sc[mi][n][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t a[MR][4];
#pragma unroll
                for (int mi = 0; mi < MR; mi++) flash_a_ldsm<D>(a[mi], sm.q, wrow + 16 * mi, kk, lane);
#pragma unroll
                for (int np = 0; np < KB / 16; np++) {
                    uint32_t b[4];
                    flash_b_rows<D>(b, sm.k[buf], hb * (KB / 16) + np, kk, lane);
#pragma unroll
                    for (int mi = 0; mi < MR; mi++) {
                        mma16816(sc[mi][2 * np], a[mi], b[0], b[1]);
                        mma16816(sc[mi][2 * np + 1], a[mi], b[2], b[3]);
                    }
                }
            }
            // online softmax per row block; masks only where a key may lie past the end or after one of the warp's rows
            int full = kb0 + KB <= end && (!causal || kb0 + KB - 1 <= q0 + wrow);
#pragma unroll
            for (int mi = 0; mi < MR; mi++) {
                int t_lo = q0 + wrow + 16 * mi + g;
                flash_softmax_step<KB, D>(sc[mi], m[mi], l[mi], o[mi], full, kb0, end, causal, t_lo, t_lo + 8, c, scale);
            }
            // O += P·V for both row blocks, each V fragment loaded once
#pragma unroll
            for (int kk = 0; kk < KB / 16; kk++) {
                uint32_t pa[MR][4];
#pragma unroll
                for (int mi = 0; mi < MR; mi++) {
                    pa[mi][0] = pack_bf16(sc[mi][2 * kk][0], sc[mi][2 * kk][1]);
                    pa[mi][1] = pack_bf16(sc[mi][2 * kk][2], sc[mi][2 * kk][3]);
                    pa[mi][2] = pack_bf16(sc[mi][2 * kk + 1][0], sc[mi][2 * kk + 1][1]);
                    pa[mi][3] = pack_bf16(sc[mi][2 * kk + 1][2], sc[mi][2 * kk + 1][3]);
                }
#pragma unroll
                for (int np = 0; np < D / 16; np++) {
                    uint32_t b[4];
                    flash_b_cols<D>(b, sm.v[buf], np, hb * (KB / 16) + kk, lane);
#pragma unroll
                    for (int mi = 0; mi < MR; mi++) {
                        mma16816(o[mi][2 * np], pa[mi], b[0], b[1]);
                        mma16816(o[mi][2 * np + 1], pa[mi], b[2], b[3]);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int mi = 0; mi < MR; mi++) {
        int t_lo = q0 + wrow + 16 * mi + g;
        flash_store_rows<D>(out, lse, o[mi], m[mi], l[mi], t_lo, t_lo + 8, end, Hq, h, c);
    }
}

template <int D, int MR, int KB>
static void launch_tiled(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu, int nseq, int max_len,
                         int Hq, int Hkv, int causal) {
    size_t bytes = sizeof(FwdTiledSmem<D, MR>);
    const int rows = MR * 16 * WARPS;
    static int configured;
    if (!configured) {
        CUDA_CHECK(cudaFuncSetAttribute(flash_fwd_tiled<D, MR, KB>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        configured = 1;
    }
    dim3 grid(Hq, (max_len + rows - 1) / rows, nseq);  // heads fastest: the heavy tiles of every head go out first
    flash_fwd_tiled<D, MR, KB><<<grid, WARPS * 32, bytes, g_stream>>>((bf16_t *)out, lse, (const bf16_t *)q, (const bf16_t *)k,
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
    if (version == 3 && D == 64) launch_tiled<64, 2, 64>(out, lse, q, k, v, cu, nseq, max_len, Hq, Hkv, causal);
    else if (version == 3 && D == 128) launch_tiled<128, 2, 32>(out, lse, q, k, v, cu, nseq, max_len, Hq, Hkv, causal);
    else if (version == 2 && D == 64) launch_tiled<64, 1, 64>(out, lse, q, k, v, cu, nseq, max_len, Hq, Hkv, causal);
    else if (version == 2 && D == 128) launch_tiled<128, 1, 64>(out, lse, q, k, v, cu, nseq, max_len, Hq, Hkv, causal);
    else if (D == 64) launch<64>(out, lse, q, k, v, cu, nseq, max_len, Hq, Hkv, causal);
    else if (D == 128) launch<128>(out, lse, q, k, v, cu, nseq, max_len, Hq, Hkv, causal);
    else return -1;
    return 0;
}
