// flash_wgmma.cu: flash-attention versions 4-9, the tile products on Hopper's warpgroup MMA (wgmma, sm_90a)
// instead of per-warp mma.sync. The math and the schedule are version 2's: the forward's block of 4 warps
// owns 64 query rows, streams 64-key tiles of K and V (double-buffered through cp.async) and keeps S, the
// softmax statistics and O in registers; S = Q·Kᵀ reads both operands from shared memory, O += P·V takes
// P from registers. The backward is flash_bwd_tiled.cuh with the wgmma engine. Version 5 overlaps more:
// in the forward the next tile's scores are computed while this tile's softmax runs, in the backward the
// next tile's S and dP products are issued behind this tile's dV/dK (dQ) products. Versions 6 and 7 (below) put
// two warpgroups in a block; version 8 (flash_ws.cuh) three, a producer and two consumers. Built for
// sm_90a only (the
// Makefile), used when the device is compute capability 9.0; elsewhere the calls return -1 and
// attention.cu falls back to version 2.
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ops_cuda.h"

#if defined(WITH_WGMMA)
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled

#include "flash_bwd_fused.cuh"
#include "flash_bwd_tiled.cuh"
#include "flash_wgmma.cuh"
#include "flash_ws_kernels.cuh"

template <int D>
struct WgFwdSmem {
    bf16_t q[FT * D], k[2][FT * D], v[2][FT * D];  // staged tiles (flash_wgmma.cuh), 1024-byte aligned
};

// The forward. PIPE (version 5): the next tile's scores in flight during this tile's softmax
// (FlashAttention-3's intra-warpgroup overlap); K tiles then run one ahead of V tiles: at tile i the block
// holds K_{i+1} (for S_{i+1} = Q·K_{i+1}ᵀ, issued before the softmax of S_i) and V_i (for O += P_i·V_i),
// K_j in k[j % 2] and V_j in v[j % 2], while K_{i+2} and V_{i+1} arrive through cp.async. Otherwise
// (version 4) tile i's K and V are both in buffer i % 2 and each product is waited for.
template <int D, bool PIPE>
__global__ static void __launch_bounds__(128, 2)
flash_fwd_wg(bf16_t *out, float *lse, const bf16_t *q, const bf16_t *k, const bf16_t *v, const int32_t *cu, int Hq, int Hkv,
             int causal, float scale) {
    extern __shared__ __align__(128) unsigned char raw[];
    WgFwdSmem<D> &sm = *reinterpret_cast<WgFwdSmem<D> *>(WgmmaTiles::align(raw));
    int h = blockIdx.x, s = blockIdx.z, hk = h / (Hq / Hkv);
    int tile = causal ? gridDim.y - 1 - blockIdx.y : blockIdx.y;  // heavy (late) query tiles first
    int start = cu[s], end = cu[s + 1], q0 = start + tile * FT;
    if (q0 >= end) return;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    int t_lo = q0 + warp * 16 + g, t_hi = t_lo + 8;  // this thread's two query rows
    int kend = causal ? min(end, q0 + FT) : end, nk = (kend - start + FT - 1) / FT;
    wg_load_tile_async<D>(sm.q, q, q0, end, Hq, h);
    wg_load_tile_async<D>(sm.k[0], k, start, end, Hkv, hk);
    wg_load_tile_async<D>(sm.v[0], v, start, end, Hkv, hk);
    if (PIPE && nk > 1) wg_load_tile_async<D>(sm.k[1], k, start + FT, end, Hkv, hk);
    cp_async_commit();
    float o[D / 8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, sc[FT / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    if constexpr (!PIPE) {
        for (int it = 0; it < nk; it++) {
            int k0 = start + it * FT, buf = it & 1;
            tiles_ready<WgmmaTiles>();  // tile `it` is in buf for everyone, and everyone is done with buf ^ 1
            if (it + 1 < nk) {
                wg_load_tile_async<D>(sm.k[buf ^ 1], k, k0 + FT, end, Hkv, hk);
                wg_load_tile_async<D>(sm.v[buf ^ 1], v, k0 + FT, end, Hkv, hk);
            }
            cp_async_commit();
            wg_scores<D>(sc, sm.q, sm.k[buf]);  // S = Q·Kᵀ
            int full = k0 + FT <= end && (!causal || k0 + FT - 1 <= q0 + warp * 16);
            flash_softmax_step<FT, D>(sc, m, l, o, full, k0, end, causal, t_lo, t_hi, c, scale);
            wg_accumulate<D>(o, sc, sm.v[buf]);  // O += P·V
        }
    } else {
        float sn[FT / 8][4];
#pragma unroll
        for (int n = 0; n < FT / 8; n++) sn[n][0] = sn[n][1] = sn[n][2] = sn[n][3] = 0.0f;
        tiles_ready<WgmmaTiles>();
        wg_scores<D>(sc, sm.q, sm.k[0]);  // S_0
        for (int it = 0; it < nk; it++) {
            int k0 = start + it * FT, next = it + 1 < nk;
            tiles_ready<WgmmaTiles>();  // K_{it+1} and V_it are here for everyone; everyone is done with K_it and V_{it-1}
            if (it + 2 < nk) wg_load_tile_async<D>(sm.k[it & 1], k, k0 + 2 * FT, end, Hkv, hk);
            if (next) wg_load_tile_async<D>(sm.v[(it + 1) & 1], v, k0 + FT, end, Hkv, hk);
            cp_async_commit();
            if (next) wg_issue_scores<D>(sn, sm.q, sm.k[(it + 1) & 1]);  // S_{it+1}, in flight during the softmax
            int full = k0 + FT <= end && (!causal || k0 + FT - 1 <= q0 + warp * 16);
            flash_softmax_step<FT, D>(sc, m, l, o, full, k0, end, causal, t_lo, t_hi, c, scale);
            uint32_t a[FT / 16][4];
            flash_p_frags<FT>(a, sc);
            wg_issue_accumulate<D>(o, a, sm.v[it & 1]);  // O += P_it·V_it
            wg_wait_all();                                // both products
            wg_hold<FT / 8>(sn);
            wg_hold<D / 8>(o);
            wg_hold_frags(a);
            if (next) {
#pragma unroll
                for (int n = 0; n < FT / 8; n++) sc[n][0] = sn[n][0], sc[n][1] = sn[n][1], sc[n][2] = sn[n][2], sc[n][3] = sn[n][3];
            }
        }
    }
    flash_store_rows<D>(out, lse, o, m, l, t_lo, t_hi, end, Hq, h, c);
}

// raise kernel's limit of dynamic shared memory to `bytes` once (*configured: whether done)
template <class Kernel>
static void smem_limit(Kernel kernel, size_t bytes, int *configured) {
    if (*configured) return;
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    *configured = 1;
}

// launch forward kernel K with `bytes` of dynamic shared memory (the limit raised on the first call)
template <auto K>
static void fwd_launch(size_t bytes, dim3 grid, int threads, bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                       const int32_t *cu, int Hq, int Hkv, int causal, int D) {
    static int configured;
    smem_limit(K, bytes, &configured);
    K<<<grid, threads, bytes, g_stream>>>((bf16_t *)out, lse, (const bf16_t *)q, (const bf16_t *)k, (const bf16_t *)v, cu, Hq, Hkv, causal,
                                         1.0f / sqrtf((float)D));
    LAUNCH_CHECK();
}

template <int D, bool PIPE>
static void launch_fwd(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu, int nseq, int max_len,
                       int Hq, int Hkv, int causal) {
    dim3 grid(Hq, (max_len + FT - 1) / FT, nseq);  // heads fastest: the heavy tiles of every head go out first
    fwd_launch<flash_fwd_wg<D, PIPE>>(sizeof(WgFwdSmem<D>) + WgmmaTiles::smem_pad, grid, 128, out, lse, q, k, v, cu, Hq, Hkv, causal, D);
}

// Versions 6 and 7: two warpgroups per block (256 threads) share the streamed K/V tiles, which halves what each
// query row pulls through L2 (the guess was that v4's two 64-row blocks per SM, 64 KB per tile step, were
// L2-bound; measured, v6's forward is 1.08-1.10x v4's). The warpgroups take either the same 64 rows of two
// query heads of one KV group (PAIR: GQA with an even group) or rows q0.. and q0 + 64.. of one head; Q
// lives in registers (the score product reads only K from shared memory); tile j's K and V share stage
// j % STAGES. The schedules:
//   FWD_PLAIN (v6): each warpgroup S_j, softmax_j, O += P_j·V_j, each product waited for; tile j + 2 on its way.
//   FWD_WIDE (v7): FWD_PLAIN over 128 keys a step (two 64-row tiles, FlashAttention-3's key block at head dim
//     128): each step's barrier, softmax bookkeeping (row maxima and sums across the quad, the rescale of O)
//     and product waits serve twice the products. Three stages of two tiles (192 KB at head dim 128), so
//     one block per SM at both head dims. (Version 7 was FWD_PIPE, S_{j+1} in flight during softmax_j, as
//     version 5 does for 4: no faster at head dim 128, 1.5x slower at 64 (session 14), removed.)
// (Version 8 was FWD_SKEW, the second warpgroup half a step behind the first under the block's barrier:
// 2.47 ms forward, 7.94 backward against v6's 2.48 and v4's 5.39 (session 16), removed; version 8 is now
// flash_ws.cuh's warp-specialised forward.)
enum { FWD_PLAIN, FWD_WIDE };
template <int D, int STAGES>
struct WgKvSmem {
    bf16_t k[STAGES][FT * D], v[STAGES][FT * D];
};
template <int SCHED>
__host__ __device__ constexpr int fwd2_stages() { return SCHED == FWD_WIDE ? 6 : 3; }  // (64-row tiles)

template <int D, bool PAIR, int SCHED, bool EXP2 = false>
__global__ static void __launch_bounds__(256, D == 64 && SCHED != FWD_WIDE ? 2 : 1)  // head dim 64: two blocks (16 warps) per SM
flash_fwd_wg2(bf16_t *out, float *lse, const bf16_t *q, const bf16_t *k, const bf16_t *v, const int32_t *cu, int Hq, int Hkv,
              int causal, float scale) {
    constexpr int S = fwd2_stages<SCHED>(), ROWS = PAIR ? FT : 2 * FT;  // query rows of the block per head
    extern __shared__ __align__(128) unsigned char raw[];
    WgKvSmem<D, S> &sm = *reinterpret_cast<WgKvSmem<D, S> *>(WgmmaTiles::align(raw));
    int wg = warpgroup_index(), warp = threadIdx.x / 32 % 4, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4, s = blockIdx.z;
    int tile = causal ? gridDim.y - 1 - blockIdx.y : blockIdx.y;  // heavy (late) query tiles first
    int start = cu[s], end = cu[s + 1], b0 = start + tile * ROWS;  // the block's first query row
    if (b0 >= end) return;
    int h = PAIR ? 2 * blockIdx.x + wg : blockIdx.x, hk = h / (Hq / Hkv), q0 = PAIR ? b0 : b0 + wg * FT;  // this warpgroup's
    int t_lo = q0 + warp * 16 + g, t_hi = t_lo + 8;
    int nk = ((causal ? min(end, b0 + ROWS) : end) - start + FT - 1) / FT;              // key tiles of the block
    int mine = q0 >= end ? 0 : ((causal ? min(end, q0 + FT) : end) - start + FT - 1) / FT;  // and of this warpgroup
    auto fetch = [&](int j) {  // tile j into stage j % S
        wg_load_tile_async<D>(sm.k[j % S], k, start + j * FT, end, Hkv, hk);
        wg_load_tile_async<D>(sm.v[j % S], v, start + j * FT, end, Hkv, hk);
    };
#pragma unroll
    for (int j = 0; j < 2; j++) {  // tiles 0 and 1 (FWD_WIDE: 0-1 and 2-3), a group each
        if (SCHED == FWD_WIDE && 2 * j < nk) fetch(2 * j), fetch(2 * j + 1);
        if (SCHED != FWD_WIDE && j < nk) fetch(j);
        cp_async_commit();
    }
    uint32_t qa[D / 16][4];
    wg_q_frags<D>(qa, q, t_lo, t_hi, end, Hq, h, c);
    float o[D / 8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, sc[FT / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    // tile t's scaled, masked softmax (its scores in sc), then O += P_t·V_t, waited for
    auto softmax_pv = [&](int t) {
        int k0 = start + t * FT, full = k0 + FT <= end && (!causal || k0 + FT - 1 <= q0 + warp * 16);
        flash_softmax_step<FT, D, EXP2>(sc, m, l, o, full, k0, end, causal, t_lo, t_hi, c, scale);
        wg_accumulate<D>(o, sc, sm.v[t % S]);
    };
    if constexpr (SCHED == FWD_WIDE) {
        // step w: keys start + 128w.., tiles 2w and 2w + 1 in stages 2(w % 3) and + 1 (a tile past the block's
        // last is fetched as whatever it holds and masked: its keys are past `end` or after every query row)
        int nw = (nk + 1) / 2, mw = (mine + 1) / 2;
        float sw[2 * FT / 8][4];  // 64 rows × 128 keys per warpgroup
        uint32_t a[2 * FT / 16][4];
        for (int w = 0; w < nw; w++) {
            tiles_ready<WgmmaTiles, 1>();  // wide tile w has landed (w + 1 may be in flight); all are done with w - 1
            if (w + 2 < nw) fetch(2 * (w + 2)), fetch(2 * (w + 2) + 1);
            cp_async_commit();
            if (w >= mw) continue;  // (causal, rows mode) the first warpgroup's rows end before this step
            int st = 2 * (w % 3), k0 = start + w * 2 * FT;
            int full = k0 + 2 * FT <= end && (!causal || k0 + 2 * FT - 1 <= q0 + warp * 16);
            wg_issue_scores_rq<D>(sw, qa, sm.k[st]);  // S = Q·Kᵀ over both tiles
            wg_issue_scores_rq<D>(sw + FT / 8, qa, sm.k[st + 1]);
            wg_wait_all();
            wg_hold<2 * FT / 8>(sw);
            wg_hold_frags<D / 16>(qa);
            flash_softmax_step<2 * FT, D, EXP2>(sw, m, l, o, full, k0, end, causal, t_lo, t_hi, c, scale);
            flash_p_frags<2 * FT>(a, sw);
            wg_issue_accumulate<D>(o, a, sm.v[st]);  // O += P·V, the keys of each tile
            wg_issue_accumulate<D>(o, a + FT / 16, sm.v[st + 1]);
            wg_wait_all();
            wg_hold<D / 8>(o);
            wg_hold_frags<2 * FT / 16>(a);
        }
    } else {
        for (int it = 0; it < nk; it++) {
            // tile it has landed for everyone, and everyone is done with tile it - 1
            tiles_ready<WgmmaTiles, S - 2>();
            if (it + S - 1 < nk) fetch(it + S - 1);
            cp_async_commit();
            if (it >= mine) continue;  // (causal, rows mode) the first warpgroup's rows end before this tile
            wg_scores_rq<D>(sc, qa, sm.k[it % S]);  // S = Q·Kᵀ
            softmax_pv(it);
        }
    }
    if (mine) flash_store_rows<D>(out, lse, o, m, l, t_lo, t_hi, end, Hq, h, c);
}

// the grid of a two-warpgroup forward (versions 6-8) or v8's dQ: per head 64 rows of two heads of a KV group
// (PAIR), or 128 rows of one (ws::Rows)
template <bool PAIR>
static dim3 row_blocks(int Hq, int max_len, int nseq) {
    return dim3(PAIR ? Hq / 2 : Hq, (max_len + ws::Rows<PAIR>::ROWS - 1) / ws::Rows<PAIR>::ROWS, nseq);
}

template <int D, bool PAIR, int SCHED, bool EXP2 = false>
static void launch_fwd2(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu, int nseq, int max_len,
                        int Hq, int Hkv, int causal) {
    fwd_launch<flash_fwd_wg2<D, PAIR, SCHED, EXP2>>(sizeof(WgKvSmem<D, fwd2_stages<SCHED>()>) + WgmmaTiles::smem_pad,
                                                    row_blocks<PAIR>(Hq, max_len, nseq), 256, out, lse, q, k,
                                                    v, cu, Hq, Hkv, causal, D);
}

// version 8: flash_ws_kernels.cuh; whether one of its mbarrier waits gave up since the last call (then cleared).
// In the kernels' stream order (the plain symbol copies use the legacy stream, which does not wait for ours):
// what was queued before is finished when the flag is read
static bool ws_unread;  // a v8 kernel was launched since the flag was last read
extern "C" int cuda_flash_ws_unread(void) { return ws_unread; }
extern "C" int cuda_flash_ws_timed_out(void) {
    ws_unread = false;
    int flag = 0, zero = 0;
    CUDA_CHECK(cudaMemcpyFromSymbolAsync(&flag, ws::timed_out, sizeof flag, 0, cudaMemcpyDeviceToHost, g_stream));
    CUDA_CHECK(cudaStreamSynchronize(g_stream));
    if (flag) {
        CUDA_CHECK(cudaMemcpyToSymbolAsync(ws::timed_out, &zero, sizeof zero, 0, cudaMemcpyHostToDevice, g_stream));
        CUDA_CHECK(cudaStreamSynchronize(g_stream));  // (zero lives on this stack)
    }
    return flag;
}
// LLAVA_WS_TMA=1 (or cuda_flash_set_ws_tma): v8's forward and dQ producers load K and V by TMA, a thread
// issuing whole boxes, instead of 128 threads' cp.async — opt-in until measured
static int ws_tma_mode = ENV_UNREAD;
static bool ws_tma(void) { return cuda_env_setting(&ws_tma_mode, "LLAVA_WS_TMA", 0) == 1; }
extern "C" void cuda_flash_set_ws_tma(int on) { ws_tma_mode = on < 0 ? (int)ENV_UNREAD : on != 0; }
// a [T, H, D] bf16 tensor for TMA (false when the driver cannot make it): boxes of 64 rows × 64 columns of one
// head, in the 128-byte swizzle of the staged tiles; rows past T read as zeros
static bool tile_map(CUtensorMap *map, const bf16 *x, int T, int H, int D) {
    static PFN_cuTensorMapEncodeTiled_v12000 encode;
    static int looked;
    if (!looked) {
        looked = 1;
        void *fn = NULL;
        cudaDriverEntryPointQueryResult found;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) == cudaSuccess &&
            found == cudaDriverEntryPointSuccess)
            encode = (PFN_cuTensorMapEncodeTiled_v12000)fn;
        else cudaGetLastError();  // (the cp.async producer serves: not an error of the run)
    }
    cuuint64_t dims[3] = {(cuuint64_t)D, (cuuint64_t)H, (cuuint64_t)T}, strides[2] = {(cuuint64_t)D * 2, (cuuint64_t)H * D * 2};
    cuuint32_t box[3] = {64, 1, FT}, step[3] = {1, 1, 1};
    CUresult r = encode ? encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, (void *)x, dims, strides, box, step, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                 CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)
                        : CUDA_ERROR_NOT_FOUND;
    static int told;
    if (r != CUDA_SUCCESS && !told++)  // (once: the run goes on with the cp.async producer, which ops_check should not mistake for TMA)
        fprintf(stderr, "flash v8: LLAVA_WS_TMA=1, but no tensor map for a [%d, %d, %d] tensor (CUresult %d): cp.async loads instead\n", T, H,
                D, (int)r);
    return r == CUDA_SUCCESS;
}
// K's and V's maps where TMA is asked for and possible
static bool kv_maps(CUtensorMap *kmap, CUtensorMap *vmap, const bf16 *k, const bf16 *v, int T, int Hkv, int D) {
    memset(kmap, 0, sizeof *kmap);
    memset(vmap, 0, sizeof *vmap);
    return ws_tma() && tile_map(kmap, k, T, Hkv, D) && tile_map(vmap, v, T, Hkv, D);
}
// which of a v8 kernel's two instantiations runs (TMA loads where K's and V's maps were made, else cp.async),
// its shared-memory limit raised
template <class Kernel>
static Kernel ws_pick(Kernel with_tma, Kernel with_cp_async, size_t bytes, int configured[2], bool tma) {
    Kernel kernel = tma ? with_tma : with_cp_async;
    smem_limit(kernel, bytes, &configured[tma]);
    return kernel;
}

template <int D, bool PAIR, bool EXP2>
static void launch_fwd_ws(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu, int nseq, int T, int max_len,
                          int Hq, int Hkv, int causal) {
    CUtensorMap kmap, vmap;
    size_t bytes = sizeof(ws::FwdSmem<D>) + WgmmaTiles::smem_pad;
    static int configured[2];
    auto kernel = ws_pick(flash_fwd_ws<D, PAIR, EXP2, true>, flash_fwd_ws<D, PAIR, EXP2, false>, bytes, configured,
                          kv_maps(&kmap, &vmap, k, v, T, Hkv, D));
    ws_unread = true;
    kernel<<<row_blocks<PAIR>(Hq, max_len, nseq), 384, bytes, g_stream>>>((bf16_t *)out, lse, (const bf16_t *)q, (const bf16_t *)k,
                                                                       (const bf16_t *)v, cu, Hq, Hkv, causal, 1.0f / sqrtf((float)D), kmap,
                                                                       vmap);
    LAUNCH_CHECK();
}
template <int D, bool EXP2>
static void launch_dkdv_ws(bf16 *dk, bf16 *dv, const bf16 *dout, const float *lse, const float *drow, const bf16 *q, const bf16 *k,
                           const bf16 *v, const int32_t *cu, int nseq, int max_len, int Hq, int Hkv, int causal) {
    auto kernel = flash_dkdv_ws<D, EXP2>;
    size_t bytes = sizeof(ws::DkdvSmem<D>) + WgmmaTiles::smem_pad;
    static int configured;
    smem_limit(kernel, bytes, &configured);
    ws_unread = true;
    kernel<<<dim3(Hkv, (max_len + 2 * FT - 1) / (2 * FT), nseq), 384, bytes, g_stream>>>(
        (bf16_t *)dk, (bf16_t *)dv, (const bf16_t *)q, (const bf16_t *)k, (const bf16_t *)v, (const bf16_t *)dout, lse, drow, cu, Hq, Hkv,
        causal, 1.0f / sqrtf((float)D));
    LAUNCH_CHECK();
}
template <int D, bool PAIR, bool EXP2>
static void launch_dq_ws(bf16 *dq, const bf16 *dout, const float *lse, const float *drow, const bf16 *q, const bf16 *k, const bf16 *v,
                         const int32_t *cu, int nseq, int T, int max_len, int Hq, int Hkv, int causal) {
    CUtensorMap kmap, vmap;
    size_t bytes = sizeof(ws::DqSmem<D>) + WgmmaTiles::smem_pad;
    static int configured[2];
    auto kernel = ws_pick(flash_dq_ws<D, PAIR, EXP2, true>, flash_dq_ws<D, PAIR, EXP2, false>, bytes, configured,
                          kv_maps(&kmap, &vmap, k, v, T, Hkv, D));
    ws_unread = true;
    kernel<<<row_blocks<PAIR>(Hq, max_len, nseq), 384, bytes, g_stream>>>((bf16_t *)dq, (const bf16_t *)q, (const bf16_t *)k,
                                                                       (const bf16_t *)v, (const bf16_t *)dout, lse, drow, cu, Hq, Hkv,
                                                                       causal, 1.0f / sqrtf((float)D), kmap, vmap);
    LAUNCH_CHECK();
}

// LLAVA_FLASH_EXP2=1 (or cuda_flash_set_exp2): versions 6-8 form the forward's softmax with one FFMA and one
// ex2 per score (flash_softmax_scores' EXP2), versions 4, 5, 7 and 8 the backward's P and dS likewise
// (dkdv_probs, dq_probs) — opt-in until measured
static int exp2_mode = ENV_UNREAD;
static bool flash_exp2(void) { return cuda_env_setting(&exp2_mode, "LLAVA_FLASH_EXP2", 0) == 1; }
extern "C" void cuda_flash_set_exp2(int on) { exp2_mode = on < 0 ? (int)ENV_UNREAD : on != 0; }

// the forward of version 4-8 at head dim D (a compile-time constant from here on)
template <int D>
static void wgmma_forward(int version, bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu, int nseq,
                          int T, int max_len, int Hq, int Hkv, int causal) {
    bool pair = (Hq / Hkv) % 2 == 0;
    switch (version) {
    case 5: launch_fwd<D, true>(out, lse, q, k, v, cu, nseq, max_len, Hq, Hkv, causal); break;
#define FWD2(SCHED, EXP2)                                                                                    \
    (pair ? launch_fwd2<D, true, SCHED, EXP2>(out, lse, q, k, v, cu, nseq, max_len, Hq, Hkv, causal)        \
          : launch_fwd2<D, false, SCHED, EXP2>(out, lse, q, k, v, cu, nseq, max_len, Hq, Hkv, causal))
    case 6: case 9: flash_exp2() ? FWD2(FWD_PLAIN, true) : FWD2(FWD_PLAIN, false); break;  // (9: a backward version; its forward is 6's)
    case 7: flash_exp2() ? FWD2(FWD_WIDE, true) : FWD2(FWD_WIDE, false); break;
    case 8:
        if (pair) flash_exp2() ? launch_fwd_ws<D, true, true>(out, lse, q, k, v, cu, nseq, T, max_len, Hq, Hkv, causal)
                               : launch_fwd_ws<D, true, false>(out, lse, q, k, v, cu, nseq, T, max_len, Hq, Hkv, causal);
        else flash_exp2() ? launch_fwd_ws<D, false, true>(out, lse, q, k, v, cu, nseq, T, max_len, Hq, Hkv, causal)
                          : launch_fwd_ws<D, false, false>(out, lse, q, k, v, cu, nseq, T, max_len, Hq, Hkv, causal);
        break;
#undef FWD2
    default: launch_fwd<D, false>(out, lse, q, k, v, cu, nseq, max_len, Hq, Hkv, causal); break;  // 4
    }
}

// the backward likewise: 5 pipelined, 6 two warpgroups per block, 7 v4's dK/dV kernel with v6's dQ
// kernel, 8 flash_ws.cuh's dQ and (at head dim 64; 4's at 128) dK/dV kernels
template <int D>
static void wgmma_backward(int version, bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const float *lse, const float *drow,
                           const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu, int nseq, int T, int max_len, int Hq, int Hkv,
                           int causal) {
#define BWD(...) flash_bwd_launch<D, WgmmaTiles, __VA_ARGS__>(dq, dk, dv, dout, lse, drow, q, k, v, cu, nseq, max_len, Hq, Hkv, causal)
    if (version == 8) {  // flash_ws.cuh's dQ, and its dK/dV at head dim 64 (4's at 128)
        bool pair = (Hq / Hkv) % 2 == 0, fast = flash_exp2();
        bf16 *dq_ws = dq;
        dq = nullptr;
        if (D == 64) {
            if (dk || dv) fast ? launch_dkdv_ws<64, true>(dk, dv, dout, lse, drow, q, k, v, cu, nseq, max_len, Hq, Hkv, causal)
                               : launch_dkdv_ws<64, false>(dk, dv, dout, lse, drow, q, k, v, cu, nseq, max_len, Hq, Hkv, causal);
        } else fast ? BWD(false, 1, 1, true) : BWD(false);
        if (!dq_ws) return;
#define DQ(PAIR, EXP2) launch_dq_ws<D, PAIR, EXP2>(dq_ws, dout, lse, drow, q, k, v, cu, nseq, T, max_len, Hq, Hkv, causal)
        pair ? (fast ? DQ(true, true) : DQ(true, false)) : (fast ? DQ(false, true) : DQ(false, false));
#undef DQ
        return;
    }
    switch (version) {
    case 5: flash_exp2() ? BWD(true, 1, 1, true) : BWD(true); break;
    case 6: BWD(false, 2); break;
    case 7: flash_exp2() ? BWD(false, 1, 2, true) : BWD(false, 1, 2); break;
    default: flash_exp2() ? BWD(false, 1, 1, true) : BWD(false); break;  // 4
    }
#undef BWD
}

// wgmma runs on compute capability 9.0 only (sm_90a code does not run on later GPUs)
static int hopper(void) { return cuda_compute_capability() == 90; }

int cuda_flash_wgmma_forward(int version, bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu,
                             int nseq, int T, int max_len, int Hq, int Hkv, int D, int causal) {
    if (!hopper() || (D != 64 && D != 128)) return -1;
    if (D == 64) wgmma_forward<64>(version, out, lse, q, k, v, cu, nseq, T, max_len, Hq, Hkv, causal);
    else wgmma_forward<128>(version, out, lse, q, k, v, cu, nseq, T, max_len, Hq, Hkv, causal);
    return 0;
}

int cuda_flash_wgmma_backward(int version, bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const float *lse, const float *drow,
                              const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu, int nseq, int T, int max_len, int Hq, int Hkv,
                              int D, int causal) {
    if (!hopper() || (D != 64 && D != 128)) return -1;
    if (D == 64) wgmma_backward<64>(version, dq, dk, dv, dout, lse, drow, q, k, v, cu, nseq, T, max_len, Hq, Hkv, causal);
    else wgmma_backward<128>(version, dq, dk, dv, dout, lse, drow, q, k, v, cu, nseq, T, max_len, Hq, Hkv, causal);
    return 0;
}

int cuda_flash_fused_backward(float *dq_acc, bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const float *lse, const float *drow,
                              const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu, int nseq, int T, int max_len, int Hq,
                              int Hkv, int D, int causal) {
    if (!hopper() || (D != 64 && D != 128)) return -1;
    if (D == 64) flash_bwd_fused_launch<64>(dq_acc, dq, dk, dv, dout, lse, drow, q, k, v, cu, nseq, max_len, T, Hq, Hkv, causal);
    else flash_bwd_fused_launch<128>(dq_acc, dq, dk, dv, dout, lse, drow, q, k, v, cu, nseq, max_len, T, Hq, Hkv, causal);
    return 0;
}

#else  // built for another architecture: no version 4
extern "C" void cuda_flash_set_exp2(int) {}
extern "C" int cuda_flash_ws_timed_out(void) { return 0; }
extern "C" int cuda_flash_ws_unread(void) { return 0; }
extern "C" void cuda_flash_set_ws_tma(int) {}

int cuda_flash_wgmma_forward(int, bf16 *, float *, const bf16 *, const bf16 *, const bf16 *, const int32_t *, int, int, int, int, int,
                             int, int) {
    return -1;
}
int cuda_flash_wgmma_backward(int, bf16 *, bf16 *, bf16 *, const bf16 *, const float *, const float *, const bf16 *, const bf16 *,
                              const bf16 *, const int32_t *, int, int, int, int, int, int, int) {
    return -1;
}
int cuda_flash_fused_backward(float *, bf16 *, bf16 *, bf16 *, const bf16 *, const float *, const float *, const bf16 *, const bf16 *,
                              const bf16 *, const int32_t *, int, int, int, int, int, int, int) {
    return -1;
}
#endif
