// flash_ws.cuh: flash version 8, warp-specialised as FlashAttention-3 is (sm_90a only, included by
// flash_wgmma.cu): the forward, and the backward's dQ kernel and (at head dim 64; version 4's at 128) dK/dV
// kernel. Versions 4-7 have every warp load tiles, then wait at a block-wide barrier, then multiply, then
// run the elementwise work while the tensor cores idle: on an H100 they reach 222-255 TFLOP/s at the
// slice's shape where FlashAttention-3 reports about twice that. Here a block has three warpgroups (384
// threads):
//   the producer (warpgroup 0) streams K and V (in dK/dV: Q, dO and their rows' lse and D) in staged 64-row
//     tiles (the layout of flash_wgmma.cuh; two of each a step in the forward, else one) into ST stages
//     through cp.async; each stage has a `full` mbarrier, which the producer threads arrive on once their
//     copies have landed, and an `empty` one, which every consumer thread arrives on when done with it. It
//     keeps 40 registers a thread (setmaxnreg), so that
//   the two consumers (warpgroups 1 and 2) get 232: each owns 64 query rows (of two query heads of a KV
//     group, PAIR, or rows q0 and q0 + 64 of one head; in dK/dV 64 keys), their Q and dO (K and V) tiles in
//     shared memory.
// Consumer turn w issues step w's score products (S_w = Q·K_wᵀ; in dQ also dP_w = dO·V_wᵀ; in dK/dV their
// transposes) and step w - 1's accumulating products (O += P_{w-1}·V_{w-1}; dQ += dS_{w-1}·K_{w-1}; dV +=
// Pᵀ·dO and dK += dSᵀ·Q) together, then does step w's elementwise work (the softmax; dS) while the
// accumulation still runs (the intra-warpgroup overlap; in the forward O's rescale by step w's factor waits
// until turn w + 1, before P_w·V_w is issued). The consumers take turns at the tensor cores through two named
// barriers (the ping-pong): a consumer issues its products only after the other has issued its own and
// moved on to its elementwise work, so that one's elementwise work runs under the other's products.
// Every mbarrier wait gives up after a second or so (ws::timed_out): a schedule error here then leaves
// wrong outputs and a flag that ops_check reports, rather than a hung GPU. tests/gpu/ws_schedule.py models
// the schedule (the waits and arrivals of produce and consume) under random interleavings.
#pragma once
#include <cuda.h>  // CUtensorMap (encoded on the host: flash_wgmma.cu)

#include "flash_wgmma.cuh"

namespace ws {

// ---- mbarriers (shared::cta) and named barriers ----
__device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void mbar_init(uint64_t *bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_arrive(uint64_t *bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// TMA (the producer's loads with LLAVA_WS_TMA=1): bar expects `bytes` more of incoming copies (and this is the
// one arrival its phase waits for); one 64-row × 64-column box of head h of a [T, H, D] tensor (map), rows
// r0.. and columns c0.., into a 1024-byte aligned half of a staged tile, in its 128-byte swizzle (the same
// layout as wg_load_tile_async's); rows past T arrive as zeros
__device__ __forceinline__ void mbar_expect_bytes(uint64_t *bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void tma_box(void *dst, const CUtensorMap *map, int c0, int h, int r0, uint64_t *bar) {
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(
                     smem_addr(dst)),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(h), "r"(r0), "r"(smem_addr(bar))
                 : "memory");
}

// set by a wait that gave up (about 2^31 clocks, a second or so): that call's outputs are wrong, and every
// later wait of any block gives up at once, so that the blocks still run to their end (the turn barriers
// between the consumers do not depend on the data) instead of hanging the GPU. (Not a trap: a trap in
// the kernel costs ptxas the setmaxnreg budget, and it spills.) cuda_flash_ws_timed_out reads it.
__device__ int timed_out;
// until the phase with this parity has completed
__device__ __forceinline__ void mbar_wait(uint64_t *bar, int parity) {
    uint32_t a = smem_addr(bar), done;
    long long t0 = clock64();
    for (;;) {
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done) : "r"(a), "r"(parity) : "memory");
        if (done || *(volatile int *)&timed_out) return;
        if (clock64() - t0 > (1ll << 31)) {
            timed_out = 1;
            return;
        }
    }
}
// named barriers 1 and 2 (0 is __syncthreads'), each between the two consumers: 128 threads wait, 128
// arrive; 3 and 4, each consumer's own 128 threads
template <int ID, int THREADS = 256>
__device__ __forceinline__ void bar_sync() { asm volatile("bar.sync %0, %1;\n" ::"n"(ID), "n"(THREADS) : "memory"); }
template <int ID>
__device__ __forceinline__ void bar_arrive() { asm volatile("bar.arrive %0, 256;\n" ::"n"(ID) : "memory"); }
template <int N>
__device__ __forceinline__ void regs_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N>
__device__ __forceinline__ void regs_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N>
__device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }

// The streamed operands (K and V; in dK/dV Q and dO), ST stages of TILES 64-row tiles of each (1024-byte
// aligned: 8 or 16 KB a tile), and their barriers
template <int D, int ST, int TILES>
struct Pipe {
    static_assert(ST >= 3, "the producer signals step w - 1 after issuing step w, which may wait for stage w - ST");
    static constexpr uint32_t STEP_BYTES = 2 * TILES * FT * D * sizeof(bf16_t);  // a step's a and b tiles
    bf16_t a[ST][TILES][FT * D], b[ST][TILES][FT * D];
    uint64_t full[ST], empty[ST];
    template <bool TMA>
    __device__ void init() {  // (one thread; a __syncthreads before any use)
        for (int st = 0; st < ST; st++) mbar_init(&full[st], TMA ? 1 : 128), mbar_init(&empty[st], 256);
        mbar_init_fence();
    }
    // the producer warpgroup: steps 0 .. nw - 1, step w into stage w % ST (by load(st, w): cp.async, and
    // ordinary stores if any) once that stage's last use is over. A step is published as the other kernels
    // publish their tiles: each producer thread waits for its copies, fences them for wgmma's async proxy and
    // arrives (with release: the ordinary stores too) — for step w - 1 once step w's copies are issued, so
    // that two steps are in flight.
    template <class Load>
    __device__ void produce(int nw, Load load) {
        for (int w = 0; w < nw; w++) {
            int st = w % ST;
            if (w >= ST) mbar_wait(&empty[st], (w / ST - 1) & 1);
            load(st, w);
            cp_async_commit();
            if (w >= 1) landed<1>(w - 1);
        }
        if (nw >= 1) landed<0>(nw - 1);
    }
    template <int PENDING>
    __device__ void landed(int w) {  // all but this thread's last PENDING groups of copies have landed: step w
        cp_async_wait_pending<PENDING>();
        wg_fence_smem();
        mbar_arrive(&full[w % ST]);
    }
    // the same by TMA, from one thread: load(st, w, bar) issues the step's boxes, whose bytes complete the
    // stage's phase (TMA writes through the async proxy, which wgmma reads: no fence)
    template <class Load>
    __device__ void produce_tma(int nw, Load load) {
        for (int w = 0; w < nw; w++) {
            int st = w % ST;
            if (w >= ST) mbar_wait(&empty[st], (w / ST - 1) & 1);
            mbar_expect_bytes(&full[st], STEP_BYTES);
            load(st, w, &full[st]);
        }
    }
};
// the forward's and dQ's steps: K and V of head hk, keys start + 64·TILES·w ..; rows at or past end become
// zeros (a tile past the block's last holds whatever rows are there: its keys are masked)
template <int D, int ST, int TILES>
__device__ __forceinline__ auto kv_steps(Pipe<D, ST, TILES> &pipe, const bf16_t *k, const bf16_t *v, int start, int end, int H, int hk) {
    return [=, &pipe](int st, int w) {
        for (int t = 0; t < TILES; t++) {
            wg_load_tile_async<D, 128>(pipe.a[st][t], k, start + (TILES * w + t) * FT, end, H, hk);
            wg_load_tile_async<D, 128>(pipe.b[st][t], v, start + (TILES * w + t) * FT, end, H, hk);
        }
    };
}
template <int D, int ST, int TILES>
__device__ __forceinline__ auto kv_steps_tma(Pipe<D, ST, TILES> &pipe, const CUtensorMap *kmap, const CUtensorMap *vmap, int start, int hk) {
    return [=, &pipe](int st, int w, uint64_t *bar) {
        for (int t = 0; t < TILES; t++)
            for (int half = 0; half < D / 64; half++) {
                int r0 = start + (TILES * w + t) * FT;
                tma_box(pipe.a[st][t] + half * FT * 64, kmap, half * 64, hk, r0, bar);
                tma_box(pipe.b[st][t] + half * FT * 64, vmap, half * 64, hk, r0, bar);
            }
    };
}

// The block's rows and a consumer's share of them: a block covers ROWS query rows of a head (PAIR: the same
// 64 rows of two heads, a consumer each; else 128 rows of one head, 64 a consumer); causal blocks go out
// heaviest (latest rows) first. `tiles`: the 64-key tiles the block's rows see, `mine` this consumer's.
template <bool PAIR>
struct Rows {
    static constexpr int ROWS = PAIR ? FT : 2 * FT;
    int start, end, b0, tiles;
    int h, q0, mine, t_lo, t_hi;  // (the consumer's)
    __device__ Rows(const int32_t *cu, int causal) {
        int tile = causal ? gridDim.y - 1 - blockIdx.y : blockIdx.y;
        start = cu[blockIdx.z], end = cu[blockIdx.z + 1], b0 = start + tile * ROWS;
        tiles = ((causal ? min(end, b0 + ROWS) : end) - start + FT - 1) / FT;
    }
    __device__ int kv_head(int Hq, int Hkv) const { return (PAIR ? 2 * blockIdx.x : blockIdx.x) / (Hq / Hkv); }
    __device__ void consumer(int cw, int causal) {
        int warp = threadIdx.x / 32 % 4, g = threadIdx.x % 32 / 4;
        h = PAIR ? 2 * blockIdx.x + cw : blockIdx.x, q0 = PAIR ? b0 : b0 + cw * FT;
        t_lo = q0 + warp * 16 + g, t_hi = t_lo + 8;
        mine = q0 >= end ? 0 : ((causal ? min(end, q0 + FT) : end) - start + FT - 1) / FT;
    }
};

// A consumer's nw + 1 turns (turn w: step w's scores and step w - 1's accumulation), idle ones included, so
// that the turn barriers pair up: consumer 0 goes first; each waits for its own barrier (1 + cw) and, after
// issuing, arrives on the other's — but for consumer 1's last turn, which nobody waits for. Step w's stage
// is released in turn w + 1 by every consumer thread. Its first mw steps are this consumer's; f provides
//   f.scores(st), f.accum(st)   issue step w's score products / step w - 1's accumulation (stage st), one
//                               commit group each
//   f.scores_landed(), f.accum_landed()   pin their registers after the wait (wg_hold)
//   f.elementwise(w)            step w's softmax or dS, from the landed scores
//   f.frags()                   step w's operand of the next accumulation, once the last one has landed
// (Every full turn issues both products: ptxas serialises the wgmmas where the groups outstanding at a
// wait depend on a branch.)
template <int D, int ST, int TILES, class F>
__device__ __forceinline__ void consume(Pipe<D, ST, TILES> &pipe, int cw, int nw, int mw, F &f) {
    auto turn_begin = [&](int w) {
        if (w < nw) {
            mbar_wait(&pipe.full[w % ST], (w / ST) & 1);
            wg_fence_smem();  // the landed copies readable by wgmma (the async proxy)
        }
        if (cw == 0) bar_sync<1>();
        else bar_sync<2>();
    };
    auto turn_end = [&](int w) {
        if (cw == 0) bar_arrive<2>();
        else if (w < nw) bar_arrive<1>();
    };
    if (cw == 1) bar_arrive<1>();
    int w = 0;
    if (mw > 0) {
        turn_begin(0);
        f.scores(0);
        turn_end(0);
        wg_wait<0>();
        f.scores_landed();
        f.elementwise(0);
        f.frags();
        for (w = 1; w < mw; w++) {
            turn_begin(w);
            f.scores(w % ST);
            f.accum((w - 1) % ST);
            turn_end(w);
            wg_wait<1>();  // the scores (the accumulation may still run)
            f.scores_landed();
            f.elementwise(w);
            wg_wait<0>();
            f.accum_landed();
            mbar_arrive(&pipe.empty[(w - 1) % ST]);
            f.frags();
        }
        turn_begin(w);  // w = mw: the last accumulation
        f.accum((w - 1) % ST);
        turn_end(w);
        wg_wait<0>();
        f.accum_landed();
        mbar_arrive(&pipe.empty[(w - 1) % ST]);
        w++;
    }
    for (; w <= nw; w++) {  // idle turns (causal, rows mode: this consumer's rows end before the block's)
        turn_begin(w);
        turn_end(w);
        if (w >= 1) mbar_arrive(&pipe.empty[(w - 1) % ST]);
    }
}

// issue acc[16 × 64·N] per warp (the warpgroup: 64 rows × 64·N) = A (64 × D staged) · [B tile 0; ..; B tile
// N-1]ᵀ, after a wg_fence, before the wg_commit of the group
template <int D, int N>
__device__ __forceinline__ void issue_products(float (*acc)[4], const bf16_t *a, const bf16_t (*b)[FT * D]) {
#pragma unroll
    for (int t = 0; t < N; t++)
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) wgmma_ss_n64(acc + t * FT / 8, wg_desc_kmajor(a, kk * 16), wg_desc_kmajor(b[t], kk * 16), kk > 0);
}
// issue out[16 × D] per warp += X (a: 16 rows × 64·N as A fragments) · [tile 0; ..; tile N-1], after a
// wg_fence, before the wg_commit of the group
template <int D, int N>
__device__ __forceinline__ void accumulate_products(float (*out)[4], uint32_t (*a)[4], const bf16_t (*tiles)[FT * D]) {
#pragma unroll
    for (int kk = 0; kk < N * FT / 16; kk++) {
        uint64_t b = wg_desc_mnmajor(tiles[kk / (FT / 16)], kk % (FT / 16) * 16);
        if constexpr (D == 64) wgmma_rs_n64_t(out, a[kk], b);
        else wgmma_rs_n128_t(out, a[kk], b);
    }
}
// the same as one commit group, its registers pinned and fenced first
template <int D, int N>
__device__ __forceinline__ void issue_accumulate(float (*out)[4], uint32_t (*a)[4], const bf16_t (*tiles)[FT * D]) {
    wg_hold<D / 8>(out);
    wg_hold_frags<N * FT / 16>(a);
    wg_fence();
    accumulate_products<D, N>(out, a, tiles);
    wg_commit();
}

// The block's start: thread 0 sets up the barriers; then the producer warpgroup streams (load, as
// Pipe::produce, or with TMA as Pipe::produce_tma, by its first thread) and gets false, the consumers take
// their registers and get true
template <bool TMA = false, int D, int ST, int TILES, class Load>
__device__ __forceinline__ bool start_roles(Pipe<D, ST, TILES> &pipe, int nw, Load load) {
    if (threadIdx.x == 0) pipe.template init<TMA>();
    __syncthreads();
    if (warpgroup_index() == 0) {
        regs_dec<40>();
        if constexpr (TMA) {
            if (threadIdx.x == 0) pipe.produce_tma(nw, load);
        } else {
            pipe.produce(nw, load);
        }
        return false;
    }
    regs_inc<232>();
    return true;
}
// a consumer's own tiles (Q, dO; K, V), loaded by its own threads through cp.async, readable by all of them
__device__ __forceinline__ void own_tiles_ready(int cw) {
    cp_async_wait_all();
    wg_fence_smem();
    if (cw == 0) bar_sync<3, 128>();
    else bar_sync<4, 128>();
}

template <int D>
__host__ __device__ constexpr int fwd_stages() { return D == 128 ? 3 : 4; }  // 64 KB a stage at head dim 128, 32 KB at 64
template <int D>
struct FwdSmem {
    bf16_t q[2][FT * D];  // each consumer's 64 query rows
    Pipe<D, fwd_stages<D>(), 2> pipe;
};
template <int D>
__host__ __device__ constexpr int dq_stages() { return 4; }  // 32 KB a stage at head dim 128
template <int D>
struct DqSmem {
    bf16_t q[2][FT * D], dout[2][FT * D];  // each consumer's 64 query rows
    Pipe<D, dq_stages<D>(), 1> pipe;
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
// and vmap); dq += the result
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
        __device__ void scores(int st) {  // S = Q·Kᵀ, dP = dO·Vᵀ
            wg_hold<FT / 8>(p), wg_hold<FT / 8>(ds);
            wg_fence();
            ws::issue_products<D, 1>(p, sm.q[cw], sm.pipe.a[st]);
            ws::issue_products<D, 1>(ds, sm.dout[cw], sm.pipe.b[st]);
            wg_commit();
        }
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
    if (r.mine) flash_add_rows<D>(dq, f.gq, r.t_lo, r.t_hi, r.end, Hq, r.h, c);
}

// The backward's dK and dV (the scheme of flash_bwd_tiled.cuh's dkdv kernel: dV = Σ Pᵀ·dO, dK = Σ dSᵀ·Q over
// the query tiles of every query head of the KV group), 64 keys a consumer, one query tile a step (its Q,
// dO, and the rows' lse and D, which the producer stores with ordinary stores); dk, dv += the result.
// Head dim 64 only: at 128 dK and dV alone would hold 128 of the 232 registers. (Causal: every consumer
// takes every tile of the block; one wholly above its keys adds zeros.)
template <int D>
struct DkdvSmem {
    static constexpr int ST = 4;
    bf16_t k[2][FT * D], v[2][FT * D];  // each consumer's 64 keys
    ws::Pipe<D, ST, 1> pipe;            // Q (a) and dO (b)
    float lse[ST][FT], drow[ST][FT];    // and their rows' lse and D, by stage
};
template <int D, bool EXP2>
__global__ static void __launch_bounds__(384, 1)
flash_dkdv_ws(bf16_t *dk, bf16_t *dv, const bf16_t *q, const bf16_t *k, const bf16_t *v, const bf16_t *dout, const float *lse,
              const float *drow, const int32_t *cu, int Hq, int Hkv, int causal, float scale) {
    static_assert(D == 64, "dK and dV of 64 keys at head dim 128 do not fit a consumer's registers");
    extern __shared__ __align__(128) unsigned char raw[];
    DkdvSmem<D> &sm = *reinterpret_cast<DkdvSmem<D> *>(WgmmaTiles::align(raw));
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
        DkdvSmem<D> &sm;
        QTiles &qt;
        int cw, k0, end, causal, j_lo, j_hi, c;
        float scale;
        float gk[D / 8][4], gv[D / 8][4];
        float p[FT / 8][4], ds[FT / 8][4];   // Sᵀ_w and dPᵀ_w, then Pᵀ_w and dSᵀ_w: 64 keys × 64 queries
        uint32_t a1[FT / 16][4], a2[FT / 16][4];  // Pᵀ and dSᵀ of step w - 1 as bf16 A fragments
        __device__ void scores(int st) {  // Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ
            wg_hold<FT / 8>(p), wg_hold<FT / 8>(ds);
            wg_fence();
            ws::issue_products<D, 1>(p, sm.k[cw], sm.pipe.a[st]);
            ws::issue_products<D, 1>(ds, sm.v[cw], sm.pipe.b[st]);
            wg_commit();
        }
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
            int st = w % DkdvSmem<D>::ST;
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
    if (dk) flash_add_rows<D>(dk, f.gk, j_lo, j_hi, end, Hkv, hk, c);
    if (dv) flash_add_rows<D>(dv, f.gv, j_lo, j_hi, end, Hkv, hk, c);
}
