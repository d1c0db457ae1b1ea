// flash_ws.cuh: the skeleton of flash version 8, warp-specialised as FlashAttention-3 is (sm_90a only; its
// kernels, the forward, the backward's dQ and (at head dim 64; version 4's at 128) dK/dV, are in
// flash_ws_kernels.cuh). Versions 4-7 have every warp load tiles, then wait at a block-wide barrier, then
// multiply, then run the elementwise work while the tensor cores idle: on an H100 they reach 222-255 TFLOP/s
// at the slice's shape where FlashAttention-3 reports about twice that. Here a block has three warpgroups
// (384 threads):
//   the producer (warpgroup 0) streams K and V (in dK/dV: Q, dO and their rows' lse and D) in staged 64-row
//     tiles (the layout of flash_wgmma.cuh; two of each a step in the forward, else one) into ST stages
//     through cp.async (or TMA, LLAVA_WS_TMA=1); each stage has a `full` mbarrier, which the producer
//     threads arrive on once their copies have landed (with TMA: the copies' bytes complete it), and an
//     `empty` one, which every consumer thread arrives on when done with it. It keeps 40 registers a thread
//     (setmaxnreg), so that
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
// whether the phase with this parity has completed (now; no waiting)
__device__ __forceinline__ bool mbar_ready(uint64_t *bar, int parity) {
    uint32_t done;
    asm volatile("{\n.reg .pred p;\nmbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done) : "r"(smem_addr(bar)), "r"(parity) : "memory");
    return done;
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
    static_assert(ST >= 2, "two steps in flight: step w - 1's and step w's copies");
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
    // that two steps are in flight; but where stage w % ST is still being read, step w - 1 is published before
    // the wait for it. Publishing w - 1 after that wait would tie it to both consumers' release of step w - ST,
    // which a consumer makes at the end of its turn w - ST + 1: with 3 stages, one consumer's turn w - 1 would
    // wait for the other's softmax of turn w - 2, the very work the ping-pong hides under its products.
    template <class Load>
    __device__ void produce(int nw, Load load) {
        int published = -1;  // (this thread's last published step)
        for (int w = 0; w < nw; w++) {
            int st = w % ST;
            if (w >= ST && !mbar_ready(&empty[st], (w / ST - 1) & 1)) {
                if (published < w - 1) landed<0>(w - 1), published = w - 1;
                mbar_wait(&empty[st], (w / ST - 1) & 1);
            }
            load(st, w);
            cp_async_commit();
            if (published < w - 1) landed<1>(w - 1), published = w - 1;
        }
        if (published < nw - 1) landed<0>(nw - 1);
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
        if (w < nw) mbar_wait(&pipe.full[w % ST], (w / ST) & 1);  // (the producer fenced its copies for wgmma, or TMA wrote them)
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
// issue (one commit group) acc1 = A1·B1ᵀ and acc2 = A2·B2ᵀ, 16 × 64 per warp each (A: 64 × D staged, B: one
// staged tile): the backward's two score products (S and dP, or their transposes)
template <int D>
__device__ __forceinline__ void issue_scores2(float (*acc1)[4], const bf16_t *a1, const bf16_t (*b1)[FT * D], float (*acc2)[4],
                                              const bf16_t *a2, const bf16_t (*b2)[FT * D]) {
    wg_hold<FT / 8>(acc1), wg_hold<FT / 8>(acc2);
    wg_fence();
    issue_products<D, 1>(acc1, a1, b1);
    issue_products<D, 1>(acc2, a2, b2);
    wg_commit();
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

}  // namespace ws
