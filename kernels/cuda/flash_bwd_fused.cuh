// flash_bwd_fused.cuh: flash version 9's backward, dK, dV and dQ in one pass over the (key, query) tile
// pairs (FlashAttention-2's schedule): 5 tile products per pair instead of the two-kernel scheme's 7 (the
// dQ kernel's recomputed S and dP go). The block is version 4's dK/dV block (one warpgroup, 64 keys of a KV
// head, every query tile of the KV group's heads streamed through shared memory); after dV += Pᵀ·dO and
// dK += dSᵀ·Q it also forms this key block's share of dQ for the query tile,
//   dQ[64 queries × D] = dS · K = (dSᵀ)ᵀ · K,
// and adds it to an fp32 buffer with vector atomics (red.global.add.v4.f32): other key blocks add theirs to
// the same rows, so the sum's order, and the last bits of dQ, vary from run to run (as in FlashAttention-2/3's
// and PyTorch's flash backward); versions 4-8 stay deterministic. dSᵀ goes through shared memory because
// the product needs it with queries as rows: the warps store their bf16 dSᵀ fragments into a 64 × 64 tile in
// the 128-byte swizzle of flash_wgmma.cuh (element (key r, query col) at r·128 + ((col/8) ^ (r%8))·16 +
// (col%8)·2), which wgmma then reads as an MN-major (transposed) A operand, exactly as it reads V as the
// MN-major B operand of P·V; the block's own K tile is the MN-major B operand, 64 output columns per
// instruction.
#pragma once
#include "flash_bwd_tiled.cuh"
#include "flash_wgmma.cuh"

// d[8][4] += A(64 × 16, smem) · B(16 × 64, smem, MN-major): m64n64k16, A MN-major (TA: transposed by wgmma)
// or K-major (accumulate = 0 starts a product)
template <bool TA>
__device__ __forceinline__ void wgmma_ss_n64_xt(float (*d)[4], uint64_t a, uint64_t b, int accumulate) {
#define WG_SS_N64_XT(TNSPA)                                                                                                   \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                                                \
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, " TNSPA ", 1;\n}\n" \
                 : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]) \
                 : "l"(a), "l"(b), "r"(accumulate))
    if constexpr (TA) WG_SS_N64_XT("1");
    else WG_SS_N64_XT("0");
#undef WG_SS_N64_XT
}

// The warp's dSᵀ (C-layout rows row0 + g and + 8 of 64 keys, 64 query columns) as bf16 into the swizzled
// tile. TA: as it is, rows = keys (an MN-major A operand for dS): 32-bit stores, query columns 8nn + 2c and + 1
// in chunk nn, stored at nn ^ g. Else transposed, rows = queries (a K-major A operand, as Q is in S = Q·Kᵀ):
// 16-bit stores, key r of query q at q·128 + ((r/8) ^ (q%8))·16 + (r%8)·2. (The K-major form is the fallback
// should the transposed-A reading not hold on the device: LLAVA_V9_KMAJOR=1.)
template <bool TA>
__device__ __forceinline__ void fused_store_dst(bf16_t *tile, const float (*ds)[4], int row0, int g, int c) {
    if constexpr (TA) {
        char *lo = reinterpret_cast<char *>(tile) + (row0 + g) * 128 + 4 * c, *hi = lo + 8 * 128;  // (row0 + g) % 8 = g
#pragma unroll
        for (int nn = 0; nn < FT / 8; nn++) {
            *reinterpret_cast<uint32_t *>(lo + ((nn ^ g) << 4)) = pack_bf16(ds[nn][0], ds[nn][1]);
            *reinterpret_cast<uint32_t *>(hi + ((nn ^ g) << 4)) = pack_bf16(ds[nn][2], ds[nn][3]);
        }
    } else {
        char *base = reinterpret_cast<char *>(tile);
        int r_lo = row0 + g, r_hi = r_lo + 8;
#pragma unroll
        for (int nn = 0; nn < FT / 8; nn++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int q = nn * 8 + 2 * c + (e & 1), r = e < 2 ? r_lo : r_hi;
                *reinterpret_cast<bf16_t *>(base + q * 128 + (((r >> 3) ^ (q & 7)) << 4) + (r & 7) * 2) = __float2bfloat16_rn(ds[nn][e]);
            }
    }
}

// issue gq[16 × D] per warp (the warpgroup: 64 queries × D) = dS (the tile above: MN-major when TA, else
// K-major) · K (64 × D staged, MN-major), D/64 products of 64 columns, each over the 64 keys in 4 steps
template <int D, bool TA>
__device__ __forceinline__ void fused_issue_dq(float (*gq)[4], const bf16_t *dst, const bf16_t *ktile) {
    wg_hold<D / 8>(gq);
    wg_fence();
#pragma unroll
    for (int nh = 0; nh < D / 64; nh++)
#pragma unroll
        for (int kk = 0; kk < FT / 16; kk++)
            wgmma_ss_n64_xt<TA>(gq + 8 * nh, TA ? wg_desc_mnmajor(dst, kk * 16) : wg_desc_kmajor(dst, kk * 16),
                                wg_desc_mnmajor(ktile + nh * FT * 64, kk * 16), kk > 0);
    wg_commit();
}

// *p += (a, b, c, d) at L2 without a reply (p 16-byte aligned, global memory; sm_90)
__device__ __forceinline__ void red_add_f32x4(float *p, float a, float b, float c, float d) {
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(p), "f"(a), "f"(b), "f"(c), "f"(d) : "memory");
}

// dq_acc rows t_lo, t_hi of [T, H, D] (head h) += the warp's gq (rows at or past end left out), 16 bytes a
// reduction: lanes c and c ^ 1 (same g) swap a pair, so that the even lane holds 4 consecutive columns of row
// t_lo (its pair, then its partner's) and the odd lane 4 of row t_hi (its partner's pair, then its own)
template <int D>
__device__ __forceinline__ void fused_red_rows(float *dq_acc, const float (*gq)[4], int t_lo, int t_hi, int end, int H, int h, int c) {
    bool odd = c & 1;
    int t = odd ? t_hi : t_lo;
    float *row = dq_acc + ((size_t)t * H + h) * D + 2 * (c & ~1);
#pragma unroll
    for (int n = 0; n < D / 8; n++) {
        float s0 = odd ? gq[n][0] : gq[n][2], s1 = odd ? gq[n][1] : gq[n][3];  // what the partner needs
        float r0 = __shfl_xor_sync(0xffffffffu, s0, 1), r1 = __shfl_xor_sync(0xffffffffu, s1, 1);
        if (t < end) {
            if (odd) red_add_f32x4(row + 8 * n, r0, r1, gq[n][2], gq[n][3]);
            else red_add_f32x4(row + 8 * n, gq[n][0], gq[n][1], r0, r1);
        }
    }
}

template <int D>
struct FusedSmem {
    Bwd2Smem<D, WgmmaTiles, 1> t;  // version 4's: K, V fixed; Q, dO, lse, D streamed (two stages)
    bf16_t dst[FT * FT];               // this step's dSᵀ (64 keys × 64 queries), 1024-byte aligned (t's size is)
};

template <int D, bool TA>
__global__ static void __launch_bounds__(NW * 32, 2)
flash_bwd_fused(float *dq_acc, bf16_t *dk, bf16_t *dv, const bf16_t *q, const bf16_t *k, const bf16_t *v, const bf16_t *dout,
                const float *lse, const float *drow, const int32_t *cu, int Hq, int Hkv, int causal, float scale) {
    extern __shared__ __align__(128) unsigned char raw[];
    FusedSmem<D> &fs = *reinterpret_cast<FusedSmem<D> *>(WgmmaTiles::align(raw));
    Bwd2Smem<D, WgmmaTiles, 1> &sm = fs.t;
    int hk = blockIdx.x, s = blockIdx.z, rep = Hq / Hkv;
    int start = cu[s], end = cu[s + 1], k0 = start + blockIdx.y * FT;  // causal: the first key tiles see the most queries
    if (k0 >= end) return;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4, row0 = warp * 16;
    int j_lo = k0 + row0 + g, j_hi = j_lo + 8;
    QTiles qt = q_tiles(k0, start, end, causal, rep, hk);
    int n = qt.count();
    WgmmaTiles::load<D>(sm.a[0], k, k0, end, Hkv, hk);
    WgmmaTiles::load<D>(sm.b[0], v, k0, end, Hkv, hk);
    dkdv_fetch<D, WgmmaTiles>(sm, 0, qt, 0, q, dout, lse, drow, end, Hq);
    cp_async_commit();
    float gk[D / 8][4], gv[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; i++) gk[i][0] = gk[i][1] = gk[i][2] = gk[i][3] = gv[i][0] = gv[i][1] = gv[i][2] = gv[i][3] = 0.0f;
    float p[FT / 8][4], ds[FT / 8][4];
    for (int i = 0; i < n; i++) {
        int buf = i & 1, q0 = qt.q0(i), h = qt.head(i);
        tiles_ready<WgmmaTiles>();  // (also: every warp's dQ product of step i - 1 is done with fs.dst)
        if (i + 1 < n) dkdv_fetch<D, WgmmaTiles>(sm, buf ^ 1, qt, i + 1, q, dout, lse, drow, end, Hq);
        cp_async_commit();
        WgmmaTiles::scores2<D>(p, sm.a[0], sm.c[buf], ds, sm.b[0], sm.d[buf], row0, lane);  // Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ
        dkdv_probs(p, ds, sm.lse[buf], sm.drow[buf], k0, q0, end, causal, j_lo, j_hi, c, scale);
        fused_store_dst<TA>(fs.dst, ds, row0, g, c);
        wg_fence_smem();  // the stores, visible to wgmma after the barrier below
        WgmmaTiles::accumulate2<D>(gv, p, sm.d[buf], gk, ds, sm.c[buf], lane);  // dV += Pᵀ·dO, dK += dSᵀ·Q
        __syncthreads();  // every warp's dSᵀ rows are in fs.dst
        float gq[D / 8][4];
        fused_issue_dq<D, TA>(gq, fs.dst, sm.a[0].x);  // dQ (this key block's share) = dS·K
        wg_wait_all();
        wg_hold<D / 8>(gq);
        fused_red_rows<D>(dq_acc, gq, q0 + row0 + g, q0 + row0 + g + 8, end, Hq, h, c);
    }
    if (dk) flash_put_rows<D>(dk, gk, j_lo, j_hi, end, Hkv, hk, c);
    if (dv) flash_put_rows<D>(dv, gv, j_lo, j_hi, end, Hkv, hk, c);
}

// dq [T, H, D] (bf16) = dq_acc (fp32), n = T·H·D elements, 4 per thread
__global__ static void fused_dq_put(bf16_t *dq, const float *dq_acc, size_t n) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (i >= n) return;
    float4 a = *reinterpret_cast<const float4 *>(dq_acc + i);
    __nv_bfloat162 *d = reinterpret_cast<__nv_bfloat162 *>(dq + i);
    d[0] = __floats2bfloat162_rn(a.x, a.y);
    d[1] = __floats2bfloat162_rn(a.z, a.w);
}

// version 9: dq_acc (fp32 [T, Hq, D]) is scratch the caller provides; dq, dk and dv are written whole as in
// the other versions
template <int D>
static void flash_bwd_fused_launch(float *dq_acc, bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const float *lse, const float *drow,
                                   const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu, int nseq, int max_len, int T,
                                   int Hq, int Hkv, int causal) {
    size_t bytes = sizeof(FusedSmem<D>) + WgmmaTiles::smem_pad, n = (size_t)T * Hq * D;
    static int configured, kmajor_setting = ENV_UNREAD;
    if (!configured) {
        CUDA_CHECK(cudaFuncSetAttribute(flash_bwd_fused<D, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        CUDA_CHECK(cudaFuncSetAttribute(flash_bwd_fused<D, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        configured = 1;
    }
    bool kmajor = cuda_env_setting(&kmajor_setting, "LLAVA_V9_KMAJOR", 0) == 1;
    CUDA_CHECK(cudaMemsetAsync(dq_acc, 0, n * sizeof(float), g_stream));
    auto kernel = kmajor ? flash_bwd_fused<D, false> : flash_bwd_fused<D, true>;
    kernel<<<dim3(Hkv, (max_len + FT - 1) / FT, nseq), NW * 32, bytes, g_stream>>>(
        dq_acc, (bf16_t *)dk, (bf16_t *)dv, (const bf16_t *)q, (const bf16_t *)k, (const bf16_t *)v, (const bf16_t *)dout, lse, drow,
        cu, Hq, Hkv, causal, 1.0f / sqrtf((float)D));
    LAUNCH_CHECK();
    fused_dq_put<<<(unsigned)((n / 4 + 255) / 256), 256, 0, g_stream>>>((bf16_t *)dq, dq_acc, n);  // n % 4 == 0: D is 64 or 128
    LAUNCH_CHECK();
}
