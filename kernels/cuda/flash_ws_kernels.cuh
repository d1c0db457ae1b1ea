// flash_ws_kernels.cuh: flash version 8's kernels on flash_ws.cuh's warp-specialised skeleton (sm_90a only,
// included by flash_wgmma.cu): the forward, the backward's dQ, and its dK/dV at head dim 64. Each is the
// producer's loads, the consumers' four calls into ws::consume (their products and elementwise work, which
// are versions 4-7's: flash_mma.cuh's softmax, flash_bwd_tiled.cuh's dS) and its stores.
#pragma once
#include "flash_bwd_tiled.cuh"
#include "flash_ws.cuh"

namespace ws {

// each kernel's shared memory: its consumers' own tiles, the streamed stages (ST of them) and their barriers
template <int D>
struct FwdSmem {
    static constexpr int ST = D == 128 ? 3 : 4;  // 64 KB a stage at head dim 128, 32 KB at 64
    bf16_t q[2][FT * D];                         // each consumer's 64 query rows
    Pipe<D, ST, 2> pipe;                         // K (a) and V (b), 128 keys a stage
};
template <int D>
struct DqSmem {
    static constexpr int ST = 4;           // 32 KB a stage at head dim 128
    bf16_t q[2][FT * D], dout[2][FT * D];  // each consumer's 64 query rows
    Pipe<D, ST, 1> pipe;                   // K (a) and V (b), 64 keys a stage
};
template <int D>
struct DkdvSmem {
    static constexpr int ST = 4;
    bf16_t k[2][FT * D], v[2][FT * D];  // each consumer's 64 keys
    Pipe<D, ST, 1> pipe;                // Q (a) and dO (b)
    float lse[ST][FT], drow[ST][FT];    // and their rows' lse and D, by stage
};

}  // namespace ws

// The forward: 128 keys a step (TMA: K and V through kmap and vmap)
template <int D, bool PAIR, bool EXP2, bool TMA>
__global__ static void __launch_bounds__(384, 1)
flash_fwd_ws(bf16_t *out, float *lse, const bf16_t *q, const bf16_t *k, const bf16_t *v, const int32_t *cu, int Hq, int Hkv,
             int causal, float scale, const __grid_constant__ CUtensorMap kmap, const __grid_constant__ CUtensorMap vmap) {
    extern __shared__ __align__(128) unsigned char raw[];
    ws::FwdSmem<D> &sm = *reinterpret_cast<ws::FwdSmem<D> *>(WgmmaTiles::align(raw));
    ws::Rows<PAIR> r(cu, causal);
    if (r.b0 >= r.end) return;  // (the whole block)
    int nw = (r.tiles + 1) / 2;
    if constexpr (TMA) {
        if (!ws::start_roles<true>(sm.pipe, nw, ws::kv_steps_tma(sm.pipe, &kmap, &vmap, r.start, r.kv_head(Hq, Hkv)))) return;
    } else {
        if (!ws::start_roles(sm.pipe, nw, ws::kv_steps(sm.pipe, k, v, r.start, r.end, Hkv, r.kv_head(Hq, Hkv)))) return;
    }
    int cw = warpgroup_index() - 1, warp = threadIdx.x / 32 % 4, c = threadIdx.x % 4;
    r.consumer(cw, causal);
    wg_load_tile_async<D, 128>(sm.q[cw], q, r.q0, r.end, Hq, r.h);
    cp_async_commit();
    ws::own_tiles_ready(cw);
    struct Step {
        ws::FwdSmem<D> &sm;
        ws::Rows<PAIR> &r;
        int cw, warp, c, causal;
        float scale;
        float o[D / 8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, corr[2] = {1.0f, 1.0f};
        float sw[2 * FT / 8][4];     // S_w, then P_w: 64 rows × 128 keys
        uint32_t a[2 * FT / 16][4];  // P_{w-1} as bf16 A fragments
        __device__ void scores(int st) {  // S = Q·Kᵀ
            wg_hold<2 * FT / 8>(sw);
            wg_fence();
            ws::issue_products<D, 2>(sw, sm.q[cw], sm.pipe.a[st]);
            wg_commit();
        }
        __device__ void accum(int st) {
            flash_rescale_o<D>(o, corr);  // step w - 1's factor, before its P·V lands on O
            ws::issue_accumulate<D, 2>(o, a, sm.pipe.b[st]);
        }
        __device__ void scores_landed() { wg_hold<2 * FT / 8>(sw); }
        __device__ void accum_landed() { wg_hold<D / 8>(o), wg_hold_frags<2 * FT / 16>(a); }
        __device__ void elementwise(int w) {
            int k0 = r.start + w * 2 * FT, full = k0 + 2 * FT <= r.end && (!causal || k0 + 2 * FT - 1 <= r.q0 + warp * 16);
            flash_softmax_scores<2 * FT, EXP2>(sw, m, l, corr, full, k0, r.end, causal, r.t_lo, r.t_hi, c, scale);
        }
        __device__ void frags() { flash_p_frags<2 * FT>(a, sw); }
    } f{sm, r, cw, warp, c, causal, scale};
#pragma unroll
    for (int n = 0; n < D / 8; n++) f.o[n][0] = f.o[n][1] = f.o[n][2] = f.o[n][3] = 0.0f;
    ws::consume(sm.pipe, cw, nw, (r.mine + 1) / 2, f);
    if (r.mine) flash_store_rows<D>(out, lse, f.o, f.m, f.l, r.t_lo, r.t_hi, r.end, Hq, r.h, c);
}

// The backward's dQ (the scheme of flash_bwd_tiled.cuh's dq kernel: dQ = Σ dS·K with dS = P∘(dP − D)·scale,
// P = exp(S·scale − lse) recomputed from S = Q·Kᵀ and dP = dO·Vᵀ), 64 keys a step (TMA: K and V through kmap
// and vmap); dq = the result
template <int D, bool PAIR, bool EXP2, bool TMA>
__global__ static void __launch_bounds__(384, 1)
flash_dq_ws(bf16_t *dq, const bf16_t *q, const bf16_t *k, const bf16_t *v, const bf16_t *dout, const float *lse, const float *drow,
            const int32_t *cu, int Hq, int Hkv, int causal, float scale, const __grid_constant__ CUtensorMap kmap,
            const __grid_constant__ CUtensorMap vmap) {
    extern __shared__ __align__(128) unsigned char raw[];
    ws::DqSmem<D> &sm = *reinterpret_cast<ws::DqSmem<D> *>(WgmmaTiles::align(raw));
    ws::Rows<PAIR> r(cu, causal);
    if (r.b0 >= r.end) return;  // (the whole block)
    int nw = r.tiles;
    if constexpr (TMA) {
        if (!ws::start_roles<true>(sm.pipe, nw, ws::kv_steps_tma(sm.pipe, &kmap, &vmap, r.start, r.kv_head(Hq, Hkv)))) return;
    } else {
        if (!ws::start_roles(sm.pipe, nw, ws::kv_steps(sm.pipe, k, v, r.start, r.end, Hkv, r.kv_head(Hq, Hkv)))) return;
    }
    int cw = warpgroup_index() - 1, c = threadIdx.x % 4;
    r.consumer(cw, causal);
    wg_load_tile_async<D, 128>(sm.q[cw], q, r.q0, r.end, Hq, r.h);
    wg_load_tile_async<D, 128>(sm.dout[cw], dout, r.q0, r.end, Hq, r.h);
    cp_async_commit();
    struct Step {
        ws::DqSmem<D> &sm;
        ws::Rows<PAIR> &r;
        int cw, c, causal;
        float scale, lse_lo, lse_hi, d_lo, d_hi;
        float gq[D / 8][4];
        float p[FT / 8][4], ds[FT / 8][4];  // S_w and dP_w, then dS_w: 64 rows × 64 keys
        uint32_t a[FT / 16][4];             // dS_{w-1} as bf16 A fragments
        __device__ void scores(int st) { ws::issue_scores2<D>(p, sm.q[cw], sm.pipe.a[st], ds, sm.dout[cw], sm.pipe.b[st]); }  // S = Q·Kᵀ, dP = dO·Vᵀ
        __device__ void accum(int st) { ws::issue_accumulate<D, 1>(gq, a, sm.pipe.a[st]); }  // dQ += dS·K
        __device__ void scores_landed() { wg_hold<FT / 8>(p), wg_hold<FT / 8>(ds); }
        __device__ void accum_landed() { wg_hold<D / 8>(gq), wg_hold_frags<FT / 16>(a); }
        __device__ void elementwise(int w) {
            dq_probs<EXP2>(p, ds, r.start + w * FT, r.q0, r.end, causal, r.t_lo, r.t_hi, lse_lo, lse_hi, d_lo, d_hi, c, scale);
        }
        __device__ void frags() { flash_p_frags<FT>(a, ds); }
    } f{sm, r, cw, c, causal, scale};
    f.lse_lo = r.t_lo < r.end ? lse[(size_t)r.t_lo * Hq + r.h] : INFINITY, f.lse_hi = r.t_hi < r.end ? lse[(size_t)r.t_hi * Hq + r.h] : INFINITY;
    f.d_lo = r.t_lo < r.end ? drow[(size_t)r.t_lo * Hq + r.h] : 0.0f, f.d_hi = r.t_hi < r.end ? drow[(size_t)r.t_hi * Hq + r.h] : 0.0f;
    if constexpr (EXP2) f.lse_lo *= LOG2E, f.lse_hi *= LOG2E, f.d_lo *= scale, f.d_hi *= scale;  // (dq_probs<true>'s forms)
#pragma unroll
    for (int n = 0; n < D / 8; n++) f.gq[n][0] = f.gq[n][1] = f.gq[n][2] = f.gq[n][3] = 0.0f;
    ws::own_tiles_ready(cw);
    ws::consume(sm.pipe, cw, nw, r.mine, f);
    if (r.mine) flash_put_rows<D>(dq, f.gq, r.t_lo, r.t_hi, r.end, Hq, r.h, c);
}

// The backward's dK and dV (the scheme of flash_bwd_tiled.cuh's dkdv kernel: dV = Σ Pᵀ·dO, dK = Σ dSᵀ·Q over
// the query tiles of every query head of the KV group), 64 keys a consumer, one query tile a step (its Q,
// dO, and the rows' lse and D, which the producer stores with ordinary stores); dk, dv = the result.
// Head dim 64 only: at 128 dK and dV alone would hold 128 of the 232 registers. (Causal: every consumer
// takes every tile of the block; one wholly above its keys adds zeros.)
template <int D, bool EXP2>
__global__ static void __launch_bounds__(384, 1)
flash_dkdv_ws(bf16_t *dk, bf16_t *dv, const bf16_t *q, const bf16_t *k, const bf16_t *v, const bf16_t *dout, const float *lse,
              const float *drow, const int32_t *cu, int Hq, int Hkv, int causal, float scale) {
    static_assert(D == 64, "dK and dV of 64 keys at head dim 128 do not fit a consumer's registers");
    extern __shared__ __align__(128) unsigned char raw[];
    ws::DkdvSmem<D> &sm = *reinterpret_cast<ws::DkdvSmem<D> *>(WgmmaTiles::align(raw));
    int hk = blockIdx.x, start = cu[blockIdx.z], end = cu[blockIdx.z + 1], b0 = start + blockIdx.y * 2 * FT;  // (causal: heavy first)
    if (b0 >= end) return;  // (the whole block)
    QTiles qt = q_tiles(b0, start, end, causal, Hq / Hkv, hk);
    int nw = qt.count();
    auto steps = [&](int st, int i) {  // query tile i: Q, dO through cp.async, lse and D (EXP2: dkdv_probs<true>'s forms)
        int h = qt.head(i), q0 = qt.q0(i), r = threadIdx.x, t = q0 + r;
        wg_load_tile_async<D, 128>(sm.pipe.a[st][0], q, q0, end, Hq, h);
        wg_load_tile_async<D, 128>(sm.pipe.b[st][0], dout, q0, end, Hq, h);
        if (r < FT) {
            float l = t < end ? lse[(size_t)t * Hq + h] : INFINITY, d = t < end ? drow[(size_t)t * Hq + h] : 0.0f;
            sm.lse[st][r] = EXP2 ? l * LOG2E : l;
            sm.drow[st][r] = EXP2 ? d * scale : d;
        }
    };
    if (!ws::start_roles(sm.pipe, nw, steps)) return;
    int cw = warpgroup_index() - 1, warp = threadIdx.x / 32 % 4, g = threadIdx.x % 32 / 4, c = threadIdx.x % 4;
    int k0 = b0 + cw * FT, j_lo = k0 + warp * 16 + g, j_hi = j_lo + 8;  // this consumer's keys, the thread's two
    wg_load_tile_async<D, 128>(sm.k[cw], k, k0, end, Hkv, hk);
    wg_load_tile_async<D, 128>(sm.v[cw], v, k0, end, Hkv, hk);
    cp_async_commit();
    struct Step {
        ws::DkdvSmem<D> &sm;
        QTiles &qt;
        int cw, k0, end, causal, j_lo, j_hi, c;
        float scale;
        float gk[D / 8][4], gv[D / 8][4];
        float p[FT / 8][4], ds[FT / 8][4];   // Sᵀ_w and dPᵀ_w, then Pᵀ_w and dSᵀ_w: 64 keys × 64 queries
        uint32_t a1[FT / 16][4], a2[FT / 16][4];  // Pᵀ and dSᵀ of step w - 1 as bf16 A fragments
        __device__ void scores(int st) { ws::issue_scores2<D>(p, sm.k[cw], sm.pipe.a[st], ds, sm.v[cw], sm.pipe.b[st]); }  // Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ
        __device__ void accum(int st) {  // dV += Pᵀ·dO, dK += dSᵀ·Q
            wg_hold<D / 8>(gv), wg_hold<D / 8>(gk), wg_hold_frags(a1), wg_hold_frags(a2);
            wg_fence();
            ws::accumulate_products<D, 1>(gv, a1, sm.pipe.b[st]);
            ws::accumulate_products<D, 1>(gk, a2, sm.pipe.a[st]);
            wg_commit();
        }
        __device__ void scores_landed() { wg_hold<FT / 8>(p), wg_hold<FT / 8>(ds); }
        __device__ void accum_landed() { wg_hold<D / 8>(gv), wg_hold<D / 8>(gk), wg_hold_frags(a1), wg_hold_frags(a2); }
        __device__ void elementwise(int w) {
            int st = w % ws::DkdvSmem<D>::ST;
            dkdv_probs<EXP2>(p, ds, sm.lse[st], sm.drow[st], k0, qt.q0(w), end, causal, j_lo, j_hi, c, scale);
        }
        __device__ void frags() { flash_p_frags<FT>(a1, p), flash_p_frags<FT>(a2, ds); }
    } f{sm, qt, cw, k0, end, causal, j_lo, j_hi, c, scale};
#pragma unroll
    for (int n = 0; n < D / 8; n++)
        f.gk[n][0] = f.gk[n][1] = f.gk[n][2] = f.gk[n][3] = f.gv[n][0] = f.gv[n][1] = f.gv[n][2] = f.gv[n][3] = 0.0f;
    ws::own_tiles_ready(cw);
    ws::consume(sm.pipe, cw, nw, k0 < end ? nw : 0, f);
    if (k0 >= end) return;
    if (dk) flash_put_rows<D>(dk, f.gk, j_lo, j_hi, end, Hkv, hk, c);
    if (dv) flash_put_rows<D>(dv, f.gv, j_lo, j_hi, end, Hkv, hk, c);
}
