// flash_ws.cuh: the forward of flash version 8, warp-specialised as FlashAttention-3 is (sm_90a only,
// included by flash_wgmma.cu). Versions 4-7 have every warp load tiles, then wait at a block-wide
// barrier, then multiply, then run the softmax while the tensor cores idle: on an H100 they reach 222-242
// TFLOP/s at the slice's shape where FlashAttention-3 reports twice that. Here a block has three
// warpgroups (384 threads):
//   the producer (warpgroup 0) streams 128-key steps of K and V (two staged 64-row tiles of each, the
//     layout of flash_wgmma.cuh) into ST stages through cp.async; each stage has a `full` mbarrier, which
//     the copies themselves arrive on as they land (cp.async.mbarrier.arrive.noinc), and an `empty` one,
//     which the consumers arrive on when they are done with it. It keeps 24 registers a thread
//     (setmaxnreg), so that
//   the two consumers (warpgroups 1 and 2) get 240: each owns 64 query rows (of two query heads of a KV
//     group, PAIR, or rows q0 and q0 + 64 of one head), Q in registers, O, P and the scores of one step.
// Consumer turn w issues S_w = Q·K_wᵀ and O += P_{w-1}·V_{w-1} together, then runs the softmax of S_w
// while P_{w-1}·V_{w-1} is still running (the intra-warpgroup overlap: O's rescale by step w's factor
// waits until turn w + 1, before P_w·V_w is issued). The consumers take turns at the tensor cores through
// two named barriers (the ping-pong): a consumer issues its products only after the other has issued
// its own and moved on to its softmax, so one's softmax runs under the other's products.
// Every mbarrier wait gives up after a second or so (ws::timed_out): a schedule error here then leaves
// wrong outputs and a flag that ops_check reports, rather than a hung GPU.
#pragma once
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
// one arrival on bar once every cp.async this thread has issued so far has landed
__device__ __forceinline__ void mbar_arrive_on_copies(uint64_t *bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_addr(bar)) : "memory");
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

template <int D>
__host__ __device__ constexpr int stages() { return D == 128 ? 3 : 4; }  // 64 KB a stage at head dim 128, 32 KB at 64
template <int D>
struct Smem {
    bf16_t q[2][FT * D];                                          // each consumer's 64 query rows
    bf16_t k[stages<D>()][2][FT * D], v[stages<D>()][2][FT * D];  // each 1024-byte aligned (8 or 16 KB)
    uint64_t full[stages<D>()], empty[stages<D>()];
};

// issue (one commit group) acc[16 × 128] per warp (the warpgroup: 64 × 128) = Q (64 × D staged) · [K tile 0; K tile 1]ᵀ
template <int D>
__device__ __forceinline__ void issue_scores(float (*acc)[4], const bf16_t *q, const bf16_t *k0, const bf16_t *k1) {
    wg_hold<2 * FT / 8>(acc);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) wgmma_ss_n64(acc, wg_desc_kmajor(q, kk * 16), wg_desc_kmajor(k0, kk * 16), kk > 0);
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) wgmma_ss_n64(acc + FT / 8, wg_desc_kmajor(q, kk * 16), wg_desc_kmajor(k1, kk * 16), kk > 0);
    wg_commit();
}
// issue (one commit group) o[16 × D] per warp += P (a: 16 rows × 128 keys) · [V tile 0; V tile 1]
template <int D>
__device__ __forceinline__ void issue_pv(float (*o)[4], uint32_t (*a)[4], const bf16_t *v0, const bf16_t *v1) {
    wg_hold<D / 8>(o);
    wg_hold_frags<2 * FT / 16>(a);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < 2 * FT / 16; kk++) {
        uint64_t b = wg_desc_mnmajor(kk < FT / 16 ? v0 : v1, (kk % (FT / 16)) * 16);
        if constexpr (D == 64) wgmma_rs_n64_t(o, a[kk], b);
        else wgmma_rs_n128_t(o, a[kk], b);
    }
    wg_commit();
}

}  // namespace ws

template <int D, bool PAIR, bool EXP2>
__global__ static void __launch_bounds__(384, 1)
flash_fwd_ws(bf16_t *out, float *lse, const bf16_t *q, const bf16_t *k, const bf16_t *v, const int32_t *cu, int Hq, int Hkv,
             int causal, float scale) {
    constexpr int ST = ws::stages<D>(), ROWS = PAIR ? FT : 2 * FT;  // query rows of the block per head
    extern __shared__ __align__(128) unsigned char raw[];
    ws::Smem<D> &sm = *reinterpret_cast<ws::Smem<D> *>(WgmmaTiles::align(raw));
    int wg = warpgroup_index(), s = blockIdx.z;
    int tile = causal ? gridDim.y - 1 - blockIdx.y : blockIdx.y;  // heavy (late) query tiles first
    int start = cu[s], end = cu[s + 1], b0 = start + tile * ROWS;  // the block's first query row
    if (b0 >= end) return;                                        // (the whole block)
    int nk = ((causal ? min(end, b0 + ROWS) : end) - start + FT - 1) / FT, nw = (nk + 1) / 2;  // 64-key tiles, 128-key steps
    if (threadIdx.x == 0) {
        for (int st = 0; st < ST; st++) ws::mbar_init(&sm.full[st], 128), ws::mbar_init(&sm.empty[st], 256);
        ws::mbar_init_fence();
    }
    __syncthreads();

    if (wg == 0) {  // the producer: step w's K and V tiles into stage w % ST once its last use is over
        ws::regs_dec<40>();
        int hk = (PAIR ? 2 * blockIdx.x : blockIdx.x) / (Hq / Hkv);
        for (int w = 0; w < nw; w++) {
            int st = w % ST;
            if (w >= ST) ws::mbar_wait(&sm.empty[st], (w / ST - 1) & 1);
            // (a tile past the block's last holds whatever rows are there: its keys are masked)
            for (int half = 0; half < 2; half++) {
                wg_load_tile_async<D, 128>(sm.k[st][half], k, start + (2 * w + half) * FT, end, Hkv, hk);
                wg_load_tile_async<D, 128>(sm.v[st][half], v, start + (2 * w + half) * FT, end, Hkv, hk);
            }
            ws::mbar_arrive_on_copies(&sm.full[st]);
        }
        cp_async_wait_all();
        return;
    }

    ws::regs_inc<232>();
    int cw = wg - 1, warp = threadIdx.x / 32 % 4, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    int h = PAIR ? 2 * blockIdx.x + cw : blockIdx.x, q0 = PAIR ? b0 : b0 + cw * FT;  // this consumer's
    int t_lo = q0 + warp * 16 + g, t_hi = t_lo + 8;
    int mine = q0 >= end ? 0 : ((causal ? min(end, q0 + FT) : end) - start + FT - 1) / FT, mw = (mine + 1) / 2;
    const bf16_t *sq = sm.q[cw];
    wg_load_tile_async<D, 128>(sm.q[cw], q, q0, end, Hq, h);  // Q, by this consumer's own threads
    cp_async_commit();
    cp_async_wait_all();
    wg_fence_smem();
    if (cw == 0) ws::bar_sync<3, 128>();
    else ws::bar_sync<4, 128>();
    float o[D / 8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, corr[2] = {1.0f, 1.0f};
#pragma unroll
    for (int n = 0; n < D / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float sw[2 * FT / 8][4];     // S_w, then P_w: 64 rows × 128 keys per warpgroup
    uint32_t a[2 * FT / 16][4];  // P_{w-1} as bf16 A fragments
    // Both consumers take nw + 1 turns (turn w: S_w and the P·V of step w - 1), idle ones included, so that
    // the turn barriers pair up: consumer 0 goes first; each waits for its own barrier (1 + cw) and, after
    // issuing, arrives on the other's — but for consumer 1's last turn, which nobody waits for. Step w's
    // stage is released in turn w + 1, by every consumer thread. (The loop issues both products in every
    // turn: ptxas serialises the wgmmas where the groups outstanding at a wait depend on a branch.)
    auto turn_begin = [&](int w) {
        if (w < nw) {
            ws::mbar_wait(&sm.full[w % ST], (w / ST) & 1);
            wg_fence_smem();  // the landed copies readable by wgmma (the async proxy)
        }
        if (cw == 0) ws::bar_sync<1>();
        else ws::bar_sync<2>();
    };
    auto turn_end = [&](int w) {
        if (cw == 0) ws::bar_arrive<2>();
        else if (w < nw) ws::bar_arrive<1>();
    };
    auto softmax = [&](int w) {
        int k0 = start + w * 2 * FT, full = k0 + 2 * FT <= end && (!causal || k0 + 2 * FT - 1 <= q0 + warp * 16);
        flash_softmax_scores<2 * FT, EXP2>(sw, m, l, corr, full, k0, end, causal, t_lo, t_hi, c, scale);
    };
    if (cw == 1) ws::bar_arrive<1>();
    int w = 0;
    if (mw > 0) {
        turn_begin(0);
        ws::issue_scores<D>(sw, sq, sm.k[0][0], sm.k[0][1]);
        turn_end(0);
        ws::wg_wait<0>();
        wg_hold<2 * FT / 8>(sw);
        softmax(0);
        flash_p_frags<2 * FT>(a, sw);
        for (w = 1; w < mw; w++) {
            int st = w % ST, pst = (w - 1) % ST;
            turn_begin(w);
            ws::issue_scores<D>(sw, sq, sm.k[st][0], sm.k[st][1]);
            flash_rescale_o<D>(o, corr);  // step w - 1's factor, before its P·V lands on O
            ws::issue_pv<D>(o, a, sm.v[pst][0], sm.v[pst][1]);
            turn_end(w);
            ws::wg_wait<1>();  // S_w (P·V may still run)
            wg_hold<2 * FT / 8>(sw);
            softmax(w);
            ws::wg_wait<0>();
            wg_hold<D / 8>(o);
            wg_hold_frags<2 * FT / 16>(a);
            ws::mbar_arrive(&sm.empty[pst]);
            flash_p_frags<2 * FT>(a, sw);
        }
        turn_begin(w);  // w = mw: the last P·V
        flash_rescale_o<D>(o, corr);
        ws::issue_pv<D>(o, a, sm.v[(w - 1) % ST][0], sm.v[(w - 1) % ST][1]);
        turn_end(w);
        ws::wg_wait<0>();
        wg_hold<D / 8>(o);
        wg_hold_frags<2 * FT / 16>(a);
        ws::mbar_arrive(&sm.empty[(w - 1) % ST]);
        w++;
    }
    for (; w <= nw; w++) {  // idle turns (causal, rows mode: this consumer's rows end before the block's)
        turn_begin(w);
        turn_end(w);
        if (w >= 1) ws::mbar_arrive(&sm.empty[(w - 1) % ST]);
    }
    if (mine) flash_store_rows<D>(out, lse, o, m, l, t_lo, t_hi, end, Hq, h, c);
}
