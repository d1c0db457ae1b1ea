// flash_bwd_tiled.cuh: the attention backward of flash versions 2 and 4 (flash_bwd.cu's scheme: dK/dV and
// dQ in two kernels, no atomics), with the per-iteration tiles double-buffered through cp.async. The
// tile products come from an engine E: MmaSyncTiles (flash_mma.cuh: ldmatrix + mma.sync per warp,
// version 2) or WgmmaTiles (flash_wgmma.cuh: one wgmma per 64-row tile for the warpgroup, version 4):
//   E::Tile<D>, E::align(raw), E::smem_pad   a staged 64 × D tile; the shared memory base, and its padding
//   E::load<D>(tile, x, r0, end, H, h)       stage 64 rows of head h (cp.async, zeros past end)
//   E::fence_tiles()                          after cp_async_wait_all: the staged tiles readable by E
//   E::scores2<D>(acc1, A1, B1, acc2, A2, B2, row0, lane)   acc[16 × 64] = rows row0.. of A · Bᵀ, twice
//   E::accumulate<D>(out, p, tile, lane)      out[16 × D] += P (16 × 64 in registers) · tile (64 × D)
//   E::accumulate2<D>(out1, p1, T1, out2, p2, T2, lane)     the same, twice
#pragma once
#include <math.h>

#include "flash_mma.cuh"
#include "ops_cuda.h"

enum { NW = 4 };

// the thread's warpgroup (128 threads), read from lane 0 so that the compiler knows it is the same in a
// warp (as CUTLASS does): the shared-memory addresses made from it stay in uniform registers
__device__ __forceinline__ int warpgroup_index() { return __shfl_sync(0xffffffffu, (int)threadIdx.x / 128, 0); }

template <int D, class E, int WGS = 1>
struct Bwd2Smem {
    typename E::template Tile<D> a[WGS], b[WGS];  // fixed, one pair per warpgroup: K, V (dkdv) or Q, dO (dq)
    typename E::template Tile<D> c[2], d[2];      // streamed, double-buffered: Q, dO (dkdv) or K, V (dq)
    float lse[2][FT], drow[2][FT];                // dkdv only
};

// the query tiles (all query heads of the KV group) a dkdv block streams, in order
struct QTiles {
    int qfirst, per_head, rep, hk;
    __device__ int head(int i) const { return hk * rep + i / per_head; }
    __device__ int q0(int i) const { return qfirst + (i % per_head) * FT; }
    __device__ int count() const { return per_head * rep; }
};
// those of the block whose first key is b0 (causal: only queries at or after it see it)
__device__ __forceinline__ QTiles q_tiles(int b0, int start, int end, int causal, int rep, int hk) {
    QTiles qt;
    qt.qfirst = causal ? b0 : start;
    qt.per_head = (end - qt.qfirst + FT - 1) / FT;
    qt.rep = rep;
    qt.hk = hk;
    return qt;
}

// (EXP2: lse·log2 e and D·scale in shared memory, the forms dkdv_probs<true> reads)
template <int D, class E, bool EXP2 = false, int WGS>
__device__ __forceinline__ void dkdv_fetch(Bwd2Smem<D, E, WGS> &sm, int buf, const QTiles &qt, int i, const bf16_t *q, const bf16_t *dout,
                                           const float *lse, const float *drow, int end, int Hq, float scale = 1.0f) {
    int h = qt.head(i), q0 = qt.q0(i);
    E::template load<D>(sm.c[buf], q, q0, end, Hq, h);
    E::template load<D>(sm.d[buf], dout, q0, end, Hq, h);
    for (int r = threadIdx.x; r < FT; r += blockDim.x) {  // plain stores: visible after the next barrier
        int t = q0 + r;
        if constexpr (EXP2) {
            sm.lse[buf][r] = t < end ? lse[(size_t)t * Hq + h] * LOG2E : INFINITY;
            sm.drow[buf][r] = t < end ? drow[(size_t)t * Hq + h] * scale : 0.0f;
        } else {
            sm.lse[buf][r] = t < end ? lse[(size_t)t * Hq + h] : INFINITY;
            sm.drow[buf][r] = t < end ? drow[(size_t)t * Hq + h] : 0.0f;
        }
    }
}

// dkdv's elementwise step on a (key, query) tile pair: p (Sᵀ) becomes Pᵀ = exp(Sᵀ·scale − lse) and ds (dPᵀ)
// becomes dSᵀ = Pᵀ∘(dPᵀ − D)·scale, masked outside the sequence and (causal) above the diagonal. EXP2 (lse_t
// holding lse·log2 e, drow_t D·scale): Pᵀ = 2^(Sᵀ·scale·log2 e − lse·log2 e) in one FFMA and one ex2, dSᵀ =
// Pᵀ·(dPᵀ·scale − D·scale) in an FFMA and a multiply, against exp's multiply and range handling and two more
template <bool EXP2 = false>
__device__ __forceinline__ void dkdv_probs(float (*p)[4], float (*ds)[4], const float *lse_t, const float *drow_t, int k0, int q0,
                                           int end, int causal, int j_lo, int j_hi, int c, float scale) {
    int full = k0 + FT <= end && q0 + FT <= end && (!causal || k0 + FT - 1 <= q0);  // every (key, query) pair counts
#pragma unroll
    for (int nn = 0; nn < FT / 8; nn++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int col = nn * 8 + 2 * c + (e & 1), t = q0 + col, j = e < 2 ? j_lo : j_hi;
            int valid = full || (j < end && t < end && (!causal || j <= t));
            if constexpr (EXP2) {
                float pv = valid ? ex2_ftz(fmaf(p[nn][e], scale * LOG2E, -lse_t[col])) : 0.0f;
                p[nn][e] = pv;
                ds[nn][e] = pv * fmaf(ds[nn][e], scale, -drow_t[col]);
            } else {
                float pv = valid ? __expf(p[nn][e] * scale - lse_t[col]) : 0.0f;
                p[nn][e] = pv;
                ds[nn][e] = pv * (ds[nn][e] - drow_t[col]) * scale;
            }
        }
}

// does any of the 64 keys from k0 (a warpgroup's) see the 64 queries from q0?
__device__ __forceinline__ bool keys_see(int k0, int q0, int end, int causal) { return k0 < end && !(causal && q0 + FT <= k0); }

// dq's: ds (dP) becomes dS = P∘(dP − D)·scale with P = exp(S·scale − lse) from p (S), for the thread's rows t_lo, t_hi
// (EXP2: lse_lo, lse_hi times log2 e, d_lo, d_hi times scale, as in dkdv_probs)
template <bool EXP2 = false>
__device__ __forceinline__ void dq_probs(const float (*p)[4], float (*ds)[4], int k0, int q0, int end, int causal, int t_lo, int t_hi,
                                         float lse_lo, float lse_hi, float d_lo, float d_hi, int c, float scale) {
    int full = k0 + FT <= end && q0 + FT <= end && (!causal || k0 + FT - 1 <= q0);
#pragma unroll
    for (int n = 0; n < FT / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int j = k0 + n * 8 + 2 * c + (e & 1), t = e < 2 ? t_lo : t_hi;
            int valid = full || (j < end && t < end && (!causal || j <= t));
            if constexpr (EXP2) {
                float pv = valid ? ex2_ftz(fmaf(p[n][e], scale * LOG2E, -(e < 2 ? lse_lo : lse_hi))) : 0.0f;
                ds[n][e] = pv * fmaf(ds[n][e], scale, -(e < 2 ? d_lo : d_hi));
            } else {
                float pv = valid ? __expf(p[n][e] * scale - (e < 2 ? lse_lo : lse_hi)) : 0.0f;
                ds[n][e] = pv * (ds[n][e] - (e < 2 ? d_lo : d_hi)) * scale;
            }
        }
}

// PIPE (version 5, wgmma): the next tile's S and dP are issued while this tile's dV/dK (dQ) products run,
// so the tensor cores see them back to back; E::issue_* start products, E::settle waits for them all.
// WGS = 2 (version 6, wgmma, not with PIPE): two warpgroups per block share the streamed tiles, which halves
// the L2 traffic per product: dkdv's block owns 2 × 64 keys, dq's the same 64 rows of two query heads of a
// KV group (PAIR) or 2 × 64 rows of one head; a warpgroup skips the tiles that are wholly masked for it.
template <int D, class E, bool PIPE, int WGS = 1, bool EXP2 = false>
__global__ static void __launch_bounds__(NW * 32 * WGS, 3 - WGS)
flash_dkdv2(bf16_t *dk, bf16_t *dv, const bf16_t *q, const bf16_t *k, const bf16_t *v, const bf16_t *dout, const float *lse,
            const float *drow, const int32_t *cu, int Hq, int Hkv, int causal, float scale) {
    extern __shared__ __align__(128) unsigned char raw[];
    static_assert(!PIPE || WGS == 1, "the pipelined schedule has one warpgroup");
    Bwd2Smem<D, E, WGS> &sm = *reinterpret_cast<Bwd2Smem<D, E, WGS> *>(E::align(raw));
    int hk = blockIdx.x, s = blockIdx.z, rep = Hq / Hkv;
    int start = cu[s], end = cu[s + 1], b0 = start + blockIdx.y * FT * WGS;  // causal: the first key tiles see the most queries
    if (b0 >= end) return;
    int wg = WGS > 1 ? warpgroup_index() : 0, k0 = b0 + wg * FT;  // this warpgroup's keys (WGS 1: the old code exactly)
    int warp = WGS > 1 ? threadIdx.x / 32 % NW : threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4, row0 = warp * 16;
    int j_lo = k0 + row0 + g, j_hi = j_lo + 8;
    QTiles qt = q_tiles(b0, start, end, causal, rep, hk);
    int n = qt.count();
    for (int w = 0; w < WGS; w++) {
        E::template load<D>(sm.a[w], k, b0 + w * FT, end, Hkv, hk);
        E::template load<D>(sm.b[w], v, b0 + w * FT, end, Hkv, hk);
    }
    dkdv_fetch<D, E, EXP2>(sm, 0, qt, 0, q, dout, lse, drow, end, Hq, scale);
    cp_async_commit();
    float gk[D / 8][4], gv[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; i++) gk[i][0] = gk[i][1] = gk[i][2] = gk[i][3] = gv[i][0] = gv[i][1] = gv[i][2] = gv[i][3] = 0.0f;
    float p[FT / 8][4], ds[FT / 8][4];
    if constexpr (!PIPE) {
        for (int i = 0; i < n; i++) {
            int buf = i & 1, q0 = qt.q0(i);
            tiles_ready<E>();
            if (i + 1 < n) dkdv_fetch<D, E, EXP2>(sm, buf ^ 1, qt, i + 1, q, dout, lse, drow, end, Hq, scale);
            cp_async_commit();
            if (WGS > 1 && !keys_see(k0, q0, end, causal)) continue;  // no key of this warpgroup sees these queries
            E::template scores2<D>(p, sm.a[wg], sm.c[buf], ds, sm.b[wg], sm.d[buf], row0, lane);  // Sᵀ = K·Qᵀ (keys × queries), dPᵀ = V·dOᵀ
            dkdv_probs<EXP2>(p, ds, sm.lse[buf], sm.drow[buf], k0, q0, end, causal, j_lo, j_hi, c, scale);
            E::template accumulate2<D>(gv, p, sm.d[buf], gk, ds, sm.c[buf], lane);  // dV += Pᵀ·dO, dK += dSᵀ·Q
        }
    } else {
        uint32_t a1[FT / 16][4] = {}, a2[FT / 16][4] = {};  // P and dS as operands, alive until settled
        tiles_ready<E>();
        E::template scores2<D>(p, sm.a[0], sm.c[0], ds, sm.b[0], sm.d[0], row0, lane);  // tile 0's S and dP
        for (int i = 0; i < n; i++) {
            int buf = i & 1, q0 = qt.q0(i);
            __syncthreads();  // everyone's products of tile i - 1 are done: its buffers may be refilled
            if (i + 1 < n) dkdv_fetch<D, E, EXP2>(sm, buf ^ 1, qt, i + 1, q, dout, lse, drow, end, Hq, scale);
            cp_async_commit();
            dkdv_probs<EXP2>(p, ds, sm.lse[buf], sm.drow[buf], k0, q0, end, causal, j_lo, j_hi, c, scale);
            E::template issue_accumulate2<D>(gv, p, sm.d[buf], gk, ds, sm.c[buf], a1, a2);  // dV += Pᵀ·dO, dK += dSᵀ·Q
            if (i + 1 < n) {
                tiles_ready<E>();  // tile i + 1 is here for everyone
                E::template issue_scores2<D>(p, sm.a[0], sm.c[buf ^ 1], ds, sm.b[0], sm.d[buf ^ 1]);
            }
            E::settle();
            E::template hold<FT / 8>(p), E::template hold<FT / 8>(ds), E::template hold<D / 8>(gv), E::template hold<D / 8>(gk);
            E::hold_frags(a1), E::hold_frags(a2);
        }
    }
    if (WGS > 1 && k0 >= end) return;
    if (dk) flash_put_rows<D>(dk, gk, j_lo, j_hi, end, Hkv, hk, c);
    if (dv) flash_put_rows<D>(dv, gv, j_lo, j_hi, end, Hkv, hk, c);
}

template <int D, class E, bool PIPE, int WGS = 1, bool PAIR = false, bool EXP2 = false>
__global__ static void __launch_bounds__(NW * 32 * WGS, WGS == 1 || D == 64 ? 2 : 1)
flash_dq2(bf16_t *dq, const bf16_t *q, const bf16_t *k, const bf16_t *v, const bf16_t *dout, const float *lse,
          const float *drow, const int32_t *cu, int Hq, int Hkv, int causal, float scale) {
    extern __shared__ __align__(128) unsigned char raw[];
    static_assert(!PIPE || WGS == 1, "the pipelined schedule has one warpgroup");
    constexpr int ROWS = PAIR ? FT : FT * WGS;  // query rows of the block per head
    Bwd2Smem<D, E, WGS> &sm = *reinterpret_cast<Bwd2Smem<D, E, WGS> *>(E::align(raw));
    int wg = WGS > 1 ? warpgroup_index() : 0, s = blockIdx.z;
    int tile = causal ? gridDim.y - 1 - blockIdx.y : blockIdx.y;  // causal: late queries see the most keys
    int start = cu[s], end = cu[s + 1], b0 = start + tile * ROWS;
    if (b0 >= end) return;
    int h = PAIR ? WGS * blockIdx.x + wg : blockIdx.x, hk = h / (Hq / Hkv), q0 = PAIR ? b0 : b0 + wg * FT;  // this warpgroup's
    int warp = WGS > 1 ? threadIdx.x / 32 % NW : threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4, row0 = warp * 16;
    int t_lo = q0 + row0 + g, t_hi = t_lo + 8;
    int nk = ((causal ? min(end, b0 + ROWS) : end) - start + FT - 1) / FT;                   // key tiles of the block
    int mine = q0 >= end ? 0 : ((causal ? min(end, q0 + FT) : end) - start + FT - 1) / FT;  // and of this warpgroup
    for (int w = 0; w < WGS; w++) {
        int hw = PAIR ? WGS * blockIdx.x + w : h, qw = PAIR ? b0 : b0 + w * FT;
        E::template load<D>(sm.a[w], q, qw, end, Hq, hw);
        E::template load<D>(sm.b[w], dout, qw, end, Hq, hw);
    }
    E::template load<D>(sm.c[0], k, start, end, Hkv, hk);
    E::template load<D>(sm.d[0], v, start, end, Hkv, hk);
    cp_async_commit();
    float lse_lo = t_lo < end ? lse[(size_t)t_lo * Hq + h] : INFINITY, lse_hi = t_hi < end ? lse[(size_t)t_hi * Hq + h] : INFINITY;
    float d_lo = t_lo < end ? drow[(size_t)t_lo * Hq + h] : 0.0f, d_hi = t_hi < end ? drow[(size_t)t_hi * Hq + h] : 0.0f;
    if constexpr (EXP2) lse_lo *= LOG2E, lse_hi *= LOG2E, d_lo *= scale, d_hi *= scale;  // (dq_probs<true>'s forms)
    float gq[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; n++) gq[n][0] = gq[n][1] = gq[n][2] = gq[n][3] = 0.0f;
    float p[FT / 8][4], ds[FT / 8][4];
    if constexpr (!PIPE) {
        for (int it = 0; it < nk; it++) {
            int k0 = start + it * FT, buf = it & 1;
            tiles_ready<E>();
            if (it + 1 < nk) {
                E::template load<D>(sm.c[buf ^ 1], k, k0 + FT, end, Hkv, hk);
                E::template load<D>(sm.d[buf ^ 1], v, k0 + FT, end, Hkv, hk);
            }
            cp_async_commit();
            if (WGS > 1 && it >= mine) continue;  // (causal, two row blocks) the first one's rows end before this tile
            E::template scores2<D>(p, sm.a[wg], sm.c[buf], ds, sm.b[wg], sm.d[buf], row0, lane);  // S = Q·Kᵀ, dP = dO·Vᵀ
            dq_probs<EXP2>(p, ds, k0, q0, end, causal, t_lo, t_hi, lse_lo, lse_hi, d_lo, d_hi, c, scale);
            E::template accumulate<D>(gq, ds, sm.c[buf], lane);  // dQ += dS·K
        }
    } else {
        uint32_t a1[FT / 16][4] = {};
        tiles_ready<E>();
        E::template scores2<D>(p, sm.a[0], sm.c[0], ds, sm.b[0], sm.d[0], row0, lane);  // tile 0's S and dP
        for (int it = 0; it < nk; it++) {
            int k0 = start + it * FT, buf = it & 1;
            __syncthreads();  // everyone's products of tile it - 1 are done
            if (it + 1 < nk) {
                E::template load<D>(sm.c[buf ^ 1], k, k0 + FT, end, Hkv, hk);
                E::template load<D>(sm.d[buf ^ 1], v, k0 + FT, end, Hkv, hk);
            }
            cp_async_commit();
            dq_probs<EXP2>(p, ds, k0, q0, end, causal, t_lo, t_hi, lse_lo, lse_hi, d_lo, d_hi, c, scale);
            E::template issue_accumulate<D>(gq, ds, sm.c[buf], a1);  // dQ += dS·K
            if (it + 1 < nk) {
                tiles_ready<E>();  // tile it + 1 is here for everyone
                E::template issue_scores2<D>(p, sm.a[0], sm.c[buf ^ 1], ds, sm.b[0], sm.d[buf ^ 1]);
            }
            E::settle();
            E::template hold<FT / 8>(p), E::template hold<FT / 8>(ds), E::template hold<D / 8>(gq);
            E::hold_frags(a1);
        }
    }
    if (WGS == 1 || mine) flash_put_rows<D>(dq, gq, t_lo, t_hi, end, Hq, h, c);
}

// WGS warpgroups per dkdv block, WGQ per dq block
template <int D, class E, bool PIPE, int WGS = 1, int WGQ = WGS, bool EXP2 = false>
static void flash_bwd_launch(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const float *lse, const float *drow, const bf16 *q,
                    const bf16 *k, const bf16 *v, const int32_t *cu, int nseq, int max_len, int Hq, int Hkv, int causal) {
    size_t kv_bytes = sizeof(Bwd2Smem<D, E, WGS>) + E::smem_pad, q_bytes = sizeof(Bwd2Smem<D, E, WGQ>) + E::smem_pad;
    // dq pairs two query heads of a KV group where the group is even (the LLM's GQA), else two row blocks
    bool pair = WGQ > 1 && (Hq / Hkv) % WGQ == 0;
    auto dkdv = flash_dkdv2<D, E, PIPE, WGS, EXP2>;
    auto dqk = pair ? flash_dq2<D, E, PIPE, WGQ, true, EXP2> : flash_dq2<D, E, PIPE, WGQ, false, EXP2>;
    static int configured;
    if (!configured) {
        CUDA_CHECK(cudaFuncSetAttribute(dkdv, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kv_bytes));
        CUDA_CHECK(cudaFuncSetAttribute(flash_dq2<D, E, PIPE, WGQ, true, EXP2>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)q_bytes));
        CUDA_CHECK(cudaFuncSetAttribute(flash_dq2<D, E, PIPE, WGQ, false, EXP2>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)q_bytes));
        configured = 1;
    }
    float scale = 1.0f / sqrtf((float)D);
    int kv_rows = FT * WGS, q_rows = FT * WGQ;
    const bf16_t *Q = (const bf16_t *)q, *K = (const bf16_t *)k, *V = (const bf16_t *)v, *DO = (const bf16_t *)dout;
    if (dk || dv) {
        dkdv<<<dim3(Hkv, (max_len + kv_rows - 1) / kv_rows, nseq), NW * 32 * WGS, kv_bytes, g_stream>>>(
            (bf16_t *)dk, (bf16_t *)dv, Q, K, V, DO, lse, drow, cu, Hq, Hkv, causal, scale);
        LAUNCH_CHECK();
    }
    if (dq) {
        dim3 grid = pair ? dim3(Hq / WGQ, (max_len + FT - 1) / FT, nseq) : dim3(Hq, (max_len + q_rows - 1) / q_rows, nseq);
        dqk<<<grid, NW * 32 * WGQ, q_bytes, g_stream>>>((bf16_t *)dq, Q, K, V, DO, lse, drow, cu, Hq, Hkv, causal, scale);
        LAUNCH_CHECK();
    }
}
