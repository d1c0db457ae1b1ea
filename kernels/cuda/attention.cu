// attention.cu: exact softmax attention over packed sub-sequences on the GPU, first version: one warp
// per (query row, head) with an online softmax over the keys (no T×T matrix), and a backward in three
// passes that need no atomics (rowwise D = dO·O; dQ per query row; dK, dV per key row), each
// recomputing p = exp(s − lse). Correct and deterministic; the tiled tensor-core (flash) kernels that
// issue 7 asks for will replace it behind the same interface.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common_cuda.cuh"
#include "flash_versions.h"
#include "ops_cuda.h"

enum { MAXD = 128, PER_LANE = MAXD / 32 };

__device__ static int seq_of(const int32_t *cu, int nseq, int t) {  // binary search: cu[s] <= t < cu[s+1]
    int lo = 0, hi = nseq - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (cu[mid] <= t) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// lane holds elements e = lane + 32·i of a head vector
__device__ static void load_vec(float *r, const bf16_t *p, int D) {
    int lane = threadIdx.x % 32;
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) r[i] = lane + 32 * i < D ? ld(p, lane + 32 * i) : 0.0f;
}
__device__ static float dot_vec(const float *r, const bf16_t *p, int D) {
    int lane = threadIdx.x % 32;
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) if (lane + 32 * i < D) s += r[i] * ld(p, lane + 32 * i);
    return warp_sum(s);
}

// One key of the online softmax for a warp's query row: score q·k_j·scale, then m, l and acc (the lane's
// elements of Σ p_j·v_j) rescaled to the new maximum.
__device__ __forceinline__ static void online_softmax_key(const float *qr, const bf16_t *kj, const bf16_t *vj, int D, float scale,
                                                          float *m, float *l, float *acc) {
    int lane = threadIdx.x % 32;
    float sc = dot_vec(qr, kj, D) * scale;
    float mn = fmaxf(*m, sc), corr = expf(*m - mn), p = expf(sc - mn);
    *l = *l * corr + p;
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) acc[i] = acc[i] * corr + (lane + 32 * i < D ? p * ld(vj, lane + 32 * i) : 0.0f);
    *m = mn;
}

__global__ static void attn_fwd(bf16_t *out, float *lse, const bf16_t *q, const bf16_t *k, const bf16_t *v, const int32_t *cu,
                                int nseq, int T, int Hq, int Hkv, int D, int causal, float scale) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (warp >= T * Hq) return;
    int t = warp / Hq, h = warp % Hq, hk = h / (Hq / Hkv), s = seq_of(cu, nseq, t);
    int start = cu[s], end = causal ? t + 1 : cu[s + 1];
    float qr[PER_LANE], acc[PER_LANE] = {0}, m = -INFINITY, l = 0.0f;
    load_vec(qr, q + ((size_t)t * Hq + h) * D, D);
    for (int j = start; j < end; j++)
        online_softmax_key(qr, k + ((size_t)j * Hkv + hk) * D, v + ((size_t)j * Hkv + hk) * D, D, scale, &m, &l, acc);
    bf16_t *o = out + ((size_t)t * Hq + h) * D;
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) if (lane + 32 * i < D) st(o, lane + 32 * i, acc[i] / l);
    if (lane == 0) lse[(size_t)t * Hq + h] = m + logf(l);
}

// Drow[t, h] = dO·O (fp32)
__global__ static void attn_bwd_d(float *Drow, const bf16_t *dout, const bf16_t *out, int T, int Hq, int D) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (warp >= T * Hq) return;
    float r[PER_LANE];
    load_vec(r, dout + (size_t)warp * D, D);
    float d = dot_vec(r, out + (size_t)warp * D, D);
    if (lane == 0) Drow[warp] = d;
}

// dQ[t, h] = Σ_j ds_j · k_j, ds_j = p_j (dO·v_j − D_t)·scale
__global__ static void attn_bwd_dq(bf16_t *dq, const bf16_t *dout, const float *lse, const float *Drow, const bf16_t *q,
                                   const bf16_t *k, const bf16_t *v, const int32_t *cu, int nseq, int T, int Hq, int Hkv,
                                   int D, int causal, float scale) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (warp >= T * Hq) return;
    int t = warp / Hq, h = warp % Hq, hk = h / (Hq / Hkv), s = seq_of(cu, nseq, t);
    int start = cu[s], end = causal ? t + 1 : cu[s + 1];
    float qr[PER_LANE], dor[PER_LANE], acc[PER_LANE] = {0}, L = lse[warp], Dt = Drow[warp];
    load_vec(qr, q + (size_t)warp * D, D);
    load_vec(dor, dout + (size_t)warp * D, D);
    for (int j = start; j < end; j++) {
        const bf16_t *kj = k + ((size_t)j * Hkv + hk) * D, *vj = v + ((size_t)j * Hkv + hk) * D;
        float p = expf(dot_vec(qr, kj, D) * scale - L), ds = p * (dot_vec(dor, vj, D) - Dt) * scale;
#pragma unroll
        for (int i = 0; i < PER_LANE; i++) if (lane + 32 * i < D) acc[i] += ds * ld(kj, lane + 32 * i);
    }
    bf16_t *o = dq + (size_t)warp * D;
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) if (lane + 32 * i < D) st(o, lane + 32 * i, acc[i]);
}

// dK[j, hk] = Σ_{h in group} Σ_t ds·q_t;  dV[j, hk] = Σ p·dO_t   (t over the queries that see key j)
__global__ static void attn_bwd_dkv(bf16_t *dk, bf16_t *dv, const bf16_t *dout, const float *lse, const float *Drow,
                                    const bf16_t *q, const bf16_t *k, const bf16_t *v, const int32_t *cu, int nseq, int T,
                                    int Hq, int Hkv, int D, int causal, float scale) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (warp >= T * Hkv) return;
    int j = warp / Hkv, hk = warp % Hkv, rep = Hq / Hkv, s = seq_of(cu, nseq, j);
    int first = causal ? j : cu[s], stop = cu[s + 1];
    float kr[PER_LANE], vr[PER_LANE], ak[PER_LANE] = {0}, av[PER_LANE] = {0};
    load_vec(kr, k + (size_t)warp * D, D);
    load_vec(vr, v + (size_t)warp * D, D);
    for (int h = hk * rep; h < (hk + 1) * rep; h++)
        for (int t = first; t < stop; t++) {
            const bf16_t *qt = q + ((size_t)t * Hq + h) * D, *dot = dout + ((size_t)t * Hq + h) * D;
            float p = expf(dot_vec(kr, qt, D) * scale - lse[(size_t)t * Hq + h]);
            float ds = p * (dot_vec(vr, dot, D) - Drow[(size_t)t * Hq + h]) * scale;
#pragma unroll
            for (int i = 0; i < PER_LANE; i++)
                if (lane + 32 * i < D) {
                    ak[i] += ds * ld(qt, lane + 32 * i);
                    av[i] += p * ld(dot, lane + 32 * i);
                }
        }
#pragma unroll
    for (int i = 0; i < PER_LANE; i++)
        if (lane + 32 * i < D) {
            size_t e = (size_t)warp * D + lane + 32 * i;
            if (dk) st(dk, e, ak[i]);
            if (dv) st(dv, e, av[i]);
        }
}

static unsigned warps_grid(size_t warps) { return (unsigned)((warps * 32 + 255) / 256); }

// LLAVA_FLASH=N (0..9) picks the kernels for a whole run (comparisons, or a fallback while a new version is
// being checked), LLAVA_FLASH=FB the forward's version F and the backward's B; cuda_attention_set_flash
// sets both. Unset: the fastest measured on an H100 (bench/RESULTS.md, sessions 14 and 16): the forward of
// version 7 at head dim 128 (v6 with 128 keys a step: 2.27 against v6's 2.48 and v4's 2.58 ms at the slice's
// shape) and of version 6 below it (two warpgroups per block sharing the K/V tiles, Q in registers; 0.56
// against v7's 0.74 and v4's 0.61 at the tower's), and version 7's backward at 128 (v4's dK/dV kernel with v6's
// two-warpgroup dQ kernel: 5.20-5.22 ms against v4's 5.39-5.48 in all three runs of sessions 14 and 16 that
// timed both, v5's 5.48, v6's 6.40 and v9's 6.56; the default from session 17 on, not yet timed in the training
// step), version 5's (v4 with the next tile's scores in flight) at 64 (1.683-1.726 against v4's 1.709-1.743 in
// three runs, v7's 1.84-1.85, v6's 2.33 and v9's 1.84). Versions 4-9 fall back to v2 on a GPU other than compute capability
// 9.0; 7's backward is v4's dK/dV kernel with v6's dQ; 8 (flash_ws.cuh) is warp-specialised, a producer
// warpgroup and two consumers in turns, in the forward, dQ and (head dim 64; v4's at 128) dK/dV (until session
// 16, 8 was 6 with the second warpgroup half a step behind, slower: 2.47/7.94 ms); 9 a backward only (its forward is 6's): one pass, 5
// tile products instead of 7, dQ summed with atomics, so not bit-reproducible (slower: the reductions).
// LLAVA_FLASH=tune (or cuda_attention_set_flash(FLASH_TUNE)) picks per shape by timing (flash_tune.cu).
// LLAVA_FLASH=cudnn (FLASH_CUDNN) runs both through cuDNN's fused attention where it can (cudnn_attn.cu).
static int flash_fwd_version = -1, flash_bwd_version = -1;  // -1: LLAVA_FLASH not read yet; -2: unset (the default)
static void flash_pick(void) {
    if (flash_fwd_version != -1) return;
    const char *env = getenv("LLAVA_FLASH");
    int ok = env && env[0] >= '0' && env[0] <= '9' && (!env[1] || (env[1] >= '0' && env[1] <= '9' && !env[2]));
    flash_fwd_version = ok                                 ? env[0] - '0'
                        : env && !strcmp(env, "tune")      ? FLASH_TUNE
                        : env && !strcmp(env, "cudnn")     ? FLASH_CUDNN
                                                           : -2;
    flash_bwd_version = ok ? env[env[1] ? 1 : 0] - '0' : flash_fwd_version;
}
int flash_default_version(int forward, int D) { return forward ? (D == 128 ? 7 : 6) : (D == 64 ? 5 : 7); }
// the version a forward (or a backward) runs (FLASH_TUNE: the tuner's, where it tunes)
static int flash_for(int forward, int D) {
    flash_pick();
    int v = forward ? flash_fwd_version : flash_bwd_version;
    return v >= 0 || v == FLASH_TUNE || v == FLASH_CUDNN ? v : flash_default_version(forward, D);
}
extern "C" void cuda_attention_set_flash(int version) { flash_fwd_version = flash_bwd_version = version; }

extern "C" void cuda_attention_forward(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu_seqlens,
                                       int nseq, int T, int max_len, int Hq, int Hkv, int D, int causal) {
    int version = flash_for(1, D);
    if (version == FLASH_TUNE) {
        if (flash_tuned_forward(out, lse, q, k, v, cu_seqlens, nseq, T, max_len, Hq, Hkv, D, causal)) return;
        version = flash_default_version(1, D);
    }
    if (version == FLASH_CUDNN) {
        if (cuda_cudnn_attention_forward(out, lse, q, k, v, cu_seqlens, nseq, T, max_len, Hq, Hkv, D, causal) == 0) return;
        version = flash_default_version(1, D);  // (no cuDNN here, or a shape it declines)
    }
    if (version >= 4 && cuda_flash_wgmma_forward(version, out, lse, q, k, v, cu_seqlens, nseq, T, max_len, Hq, Hkv, D, causal) == 0)
        return;
    if (version >= 4) version = 2;  // no wgmma here
    if (version && cuda_flash_forward(version, out, lse, q, k, v, cu_seqlens, nseq, max_len, Hq, Hkv, D, causal) == 0) return;
    if (D > MAXD) { cuda_note_error("cuda_attention_forward", "head_dim above 128"); return; }
    attn_fwd<<<warps_grid((size_t)T * Hq), 256, 0, g_stream>>>((bf16_t *)out, lse, (const bf16_t *)q, (const bf16_t *)k,
                                                                 (const bf16_t *)v, cu_seqlens, nseq, T, Hq, Hkv, D, causal,
                                                                 1.0f / sqrtf((float)D));
    LAUNCH_CHECK();
}

extern "C" void cuda_attention_backward(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const bf16 *out, const float *lse,
                                        const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu_seqlens, int nseq, int T,
                                        int max_len, int Hq, int Hkv, int D, int causal) {
    if (D > MAXD) { cuda_note_error("cuda_attention_backward", "head_dim above 128"); return; }
    int asked = flash_for(0, D), tune = asked == FLASH_TUNE;  // (tune: the tuner's pick once Drow is there, where it tunes)
    if (asked == FLASH_CUDNN) {
        if (cuda_cudnn_attention_backward(dq, dk, dv, dout, out, lse, q, k, v, cu_seqlens, nseq, T, max_len, Hq, Hkv, D, causal) == 0) return;
        asked = flash_default_version(0, D);  // (no cuDNN here, or a shape it declines)
    }
    int version = tune ? flash_default_version(0, D) : asked, fused = version == 9 && dq;  // (version 9 without dq: version 4)
    // one scratch buffer (a second call could move the first): Drow [T, Hq], then version 9's dq_acc [T, Hq, D]
    size_t drow_bytes = ((size_t)T * Hq * sizeof(float) + 255) / 256 * 256;
    float *Drow = (float *)cuda_scratch(drow_bytes + (fused ? (size_t)T * Hq * D * sizeof(float) : 0));
    float scale = 1.0f / sqrtf((float)D), *dq_acc = (float *)((char *)Drow + drow_bytes);
    const bf16_t *Q = (const bf16_t *)q, *K = (const bf16_t *)k, *V = (const bf16_t *)v, *DO = (const bf16_t *)dout;
    attn_bwd_d<<<warps_grid((size_t)T * Hq), 256, 0, g_stream>>>(Drow, DO, (const bf16_t *)out, T, Hq, D);
    LAUNCH_CHECK();
    if (tune &&
        flash_tuned_backward(dq, dk, dv, dout, out, lse, Drow, q, k, v, cu_seqlens, nseq, T, max_len, Hq, Hkv, D, causal))
        return;
    if (fused &&
        cuda_flash_fused_backward(dq_acc, dq, dk, dv, dout, lse, Drow, q, k, v, cu_seqlens, nseq, T, max_len, Hq, Hkv, D, causal) == 0)
        return;
    if (version == 9) version = 4;
    if (version >= 4 &&
        cuda_flash_wgmma_backward(version, dq, dk, dv, dout, lse, Drow, q, k, v, cu_seqlens, nseq, T, max_len, Hq, Hkv, D, causal) == 0)
        return;
    if (version >= 4) version = 2;
    if (version && cuda_flash_backward(version, dq, dk, dv, dout, lse, Drow, q, k, v, cu_seqlens, nseq, max_len, Hq, Hkv, D, causal) == 0)
        return;
    if (dq) {
        attn_bwd_dq<<<warps_grid((size_t)T * Hq), 256, 0, g_stream>>>((bf16_t *)dq, DO, lse, Drow, Q, K, V, cu_seqlens, nseq, T,
                                                                        Hq, Hkv, D, causal, scale);
        LAUNCH_CHECK();
    }
    if (dk || dv) {
        attn_bwd_dkv<<<warps_grid((size_t)T * Hkv), 256, 0, g_stream>>>((bf16_t *)dk, (bf16_t *)dv, DO, lse, Drow, Q, K, V,
                                                                          cu_seqlens, nseq, T, Hq, Hkv, D, causal, scale);
        LAUNCH_CHECK();
    }
}

// ---- decode: one query token per head against len cached positions ----
// One block of DEC_WARPS warps per query head; warp w takes keys w, w + DEC_WARPS, ... with its own online
// softmax, and the warps' (max, sum, accumulator) are merged in shared memory in warp order, so the result
// does not depend on timing.
enum { DEC_WARPS = 8 };
__global__ static void attn_decode_k(bf16_t *out, const bf16_t *q, const bf16_t *k, const bf16_t *v, int len, int Hq, int Hkv,
                                     int D, float scale) {
    __shared__ float wm[DEC_WARPS], wl[DEC_WARPS], wacc[DEC_WARPS][MAXD];
    int h = blockIdx.x, hk = h / (Hq / Hkv), warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float qr[PER_LANE], acc[PER_LANE] = {0}, m = -INFINITY, l = 0.0f;
    load_vec(qr, q + (size_t)h * D, D);
    for (int j = warp; j < len; j += DEC_WARPS)
        online_softmax_key(qr, k + ((size_t)j * Hkv + hk) * D, v + ((size_t)j * Hkv + hk) * D, D, scale, &m, &l, acc);
    if (lane == 0) { wm[warp] = m; wl[warp] = l; }
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) if (lane + 32 * i < D) wacc[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < DEC_WARPS; w++) M = fmaxf(M, wm[w]);
    for (int e = threadIdx.x; e < D; e += blockDim.x) {
        float L = 0.0f, o = 0.0f;
        for (int w = 0; w < DEC_WARPS; w++) {
            if (wl[w] == 0.0f) continue;  // a warp that saw no key (len < DEC_WARPS)
            float c = expf(wm[w] - M);
            L += wl[w] * c;
            o += wacc[w][e] * c;
        }
        st(out + (size_t)h * D, e, o / L);
    }
}

extern "C" void cuda_attention_decode(bf16 *out, const bf16 *q, const bf16 *k, const bf16 *v, int len, int Hq, int Hkv, int D) {
    if (D > MAXD) { cuda_note_error("cuda_attention_decode", "head_dim above 128"); return; }
    attn_decode_k<<<Hq, DEC_WARPS * 32, 0, g_stream>>>((bf16_t *)out, (const bf16_t *)q, (const bf16_t *)k, (const bf16_t *)v, len,
                                                       Hq, Hkv, D, 1.0f / sqrtf((float)D));
    LAUNCH_CHECK();
}
