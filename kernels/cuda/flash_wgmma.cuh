// flash_wgmma.cuh: Hopper's warpgroup MMA (wgmma.mma_async, sm_90a only) for the flash-attention kernels.
// One warpgroup (the 4 warps of a block) multiplies a 64-row tile at once; the accumulator comes back
// in exactly the registers of the mma.sync code (flash_mma.cuh): warp w holds rows 16w..16w+15, lane
// 4g+c rows g and g+8, columns 8n+2c and 8n+2c+1 in d[n][0..3], so the kernels' softmax code is shared.
//
// wgmma reads its shared-memory operands through descriptors (start address, leading and stride byte
// offsets LBO/SBO, swizzle mode). A staged 64 × D tile (1024-byte aligned) is kept in the 128-byte
// swizzle: 64-column halves of the tile, 64 rows × 128 bytes each, 8 KB apart; in a row the 16-byte chunk
// c sits at c ^ (row % 8), so the 8 rows of a group hit different banks:
//   element (r, col) at (col/64)·8192 + r·128 + ((col%64/8) ^ (r%8))·16 + (col%8)·2
// (The layout without swizzle, 8×16-byte core matrices stored contiguously, measured 1.2-1.5x slower on
// an H100: bench/RESULTS.md, session 13.) The same tile is read two ways: as an operand whose rows are the
// product's M or N and whose columns are its K (Q, K, V, dO in S = Q·Kᵀ and dP = dO·Vᵀ: "K-major"), and
// as one whose rows are K (V in P·V, dO, Q, K in the backward's P·X: "MN-major", transposed by wgmma).
// Descriptors for the 16 K indices from k (CUTLASS's canonical GMMA layouts), in bytes:
//   K-major:   start + (k/64)·8192 + (k%64)·2, SBO 1024 (8-row groups), LBO unused
//   MN-major:  start + k·128, LBO 8192 (the two 64-column halves along N), SBO 1024 (8-row groups along K)
#pragma once
#include "flash_mma.cuh"

// rows [r0, r0 + 64) of a [T, H, D] tensor (head h) into a staged tile through cp.async; rows at or past
// `end` become zero. Consecutive threads fill consecutive 16-byte pieces of shared memory: piece i is in
// half i/512, row (i/8)%64, stored chunk i%8 = logical chunk ^ (row%8). The whole block shares the copies,
// or (GROUP) each group of GROUP consecutive threads makes all of them (a warpgroup of version 8).
template <int D, int GROUP = 0>
__device__ __forceinline__ void wg_load_tile_async(bf16_t *tile, const bf16_t *x, int r0, int end, int H, int h) {
    for (int i = GROUP ? threadIdx.x % GROUP : threadIdx.x; i < FT * D / 8; i += GROUP ? GROUP : blockDim.x) {
        int r = (i >> 3) & 63, col = (i >> 9) * 64 + (((i & 7) ^ (r & 7)) << 3);
        bool in = r0 + r < end;
        cp_async16(reinterpret_cast<char *>(tile) + i * 16, x + ((size_t)(in ? r0 + r : 0) * H + h) * D + col, in);
    }
}

// a shared-memory matrix descriptor: start address, LBO and SBO (each in 16-byte units), 128-byte swizzle
// (mode 1 in bits 62-63)
__device__ __forceinline__ uint64_t wg_desc(const void *smem, uint32_t lbo, uint32_t sbo) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
    return (uint64_t)((a & 0x3FFFF) >> 4) | ((uint64_t)(lbo >> 4) << 16) | ((uint64_t)(sbo >> 4) << 32) | (1ull << 62);
}
// the descriptors of the table above for the 16 K indices from k
__device__ __forceinline__ uint64_t wg_desc_kmajor(const bf16_t *tile, int k) {
    return wg_desc(reinterpret_cast<const char *>(tile) + (k / 64) * 8192 + (k % 64) * 2, 16, 1024);
}
__device__ __forceinline__ uint64_t wg_desc_mnmajor(const bf16_t *tile, int k) {
    return wg_desc(reinterpret_cast<const char *>(tile) + k * 128, 8192, 1024);
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// shared memory written by ordinary stores or cp.async becomes visible to wgmma (the async proxy);
// each writing thread fences before the barrier that publishes the tile
__device__ __forceinline__ void wg_fence_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// d[8][4] = A(64 × 16, smem) · B(64 × 16, smem)ᵀ (+ d when accumulate): m64n64k16, both operands K-major.
// accumulate = 0 starts a product without zeroing d first: no ordinary instruction writes the
// accumulators inside a run of wgmmas (ptxas would serialise them, C7515).
__device__ __forceinline__ void wgmma_ss_n64(float (*d)[4], uint64_t a, uint64_t b, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
                 : "l"(a), "l"(b), "r"(accumulate));
}
// d[8][4] = A(64 × 16, registers) · B(64 × 16, smem, K-major)ᵀ (+ d when accumulate): m64n64k16, the
// scores with Q held in registers (version 6)
__device__ __forceinline__ void wgmma_rs_n64(float (*d)[4], const uint32_t *a, uint64_t b, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
                 : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));
}
// d[8][4] += A(64 × 16, registers) · B(16 × 64, smem, MN-major): m64n64k16
__device__ __forceinline__ void wgmma_rs_n64_t(float (*d)[4], const uint32_t *a, uint64_t b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                 : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}
// d[16][4] += A(64 × 16, registers) · B(16 × 128, smem, MN-major): m64n128k16
__device__ __forceinline__ void wgmma_rs_n128_t(float (*d)[4], const uint32_t *a, uint64_t b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                 : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}

// Pin registers that an asynchronous wgmma reads or writes to this point of the program (an empty asm
// that "modifies" them): before wg_fence, so that their last ordinary writes precede it, and after
// wg_wait_all, so that no read of a result (and no reuse of an operand's register) moves above the wait.
// Without them the compiler may schedule such accesses between the issue and the wait, and ptxas then
// injects waits of its own (C7517/C7519), serialising the products.
template <int NT>
__device__ __forceinline__ void wg_hold(float (*acc)[4]) {
#pragma unroll
    for (int n = 0; n < NT; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) asm volatile("" : "+f"(acc[n][e])::"memory");
}
// (KK fragments: FT / 16 for P or dS, D / 16 for Q)
template <int KK = FT / 16>
__device__ __forceinline__ void wg_hold_frags(uint32_t (*a)[4]) {
#pragma unroll
    for (int kk = 0; kk < KK; kk++)
#pragma unroll
        for (int e = 0; e < 4; e++) asm volatile("" : "+r"(a[kk][e])::"memory");
}

// issue acc[16 × 64] per warp (the block: 64 × 64) = A (64 × D staged) · B (64 × D staged)ᵀ (acc's old
// values are not read)
template <int D>
__device__ __forceinline__ void wg_issue_scores(float (*acc)[4], const bf16_t *A, const bf16_t *B) {
    wg_hold<FT / 8>(acc);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) wgmma_ss_n64(acc, wg_desc_kmajor(A, kk * 16), wg_desc_kmajor(B, kk * 16), kk > 0);
    wg_commit();
}

// issue out[16 × D] per warp += P (its 16 rows × 64 as bf16 A fragments a) · tile (64 × D staged)
template <int D>
__device__ __forceinline__ void wg_issue_accumulate(float (*out)[4], uint32_t (*a)[4], const bf16_t *tile) {
    wg_hold<D / 8>(out);
    wg_hold_frags(a);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < FT / 16; kk++) {
        uint64_t b = wg_desc_mnmajor(tile, kk * 16);
        if constexpr (D == 64) wgmma_rs_n64_t(out, a[kk], b);
        else wgmma_rs_n128_t(out, a[kk], b);
    }
    wg_commit();
}

// the A fragments (flash_mma.cuh's layout) of a warp's query rows t_lo, t_hi of head h, all D columns,
// straight from global memory (rows at or past end are zero): the scores' left operand in registers
template <int D>
__device__ __forceinline__ void wg_q_frags(uint32_t (*a)[4], const bf16_t *q, int t_lo, int t_hi, int end, int H, int h, int c) {
    const uint32_t *lo = reinterpret_cast<const uint32_t *>(q + ((size_t)(t_lo < end ? t_lo : 0) * H + h) * D) + c;
    const uint32_t *hi = reinterpret_cast<const uint32_t *>(q + ((size_t)(t_hi < end ? t_hi : 0) * H + h) * D) + c;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        a[kk][0] = t_lo < end ? lo[kk * 8] : 0u;      // row g,     columns 16kk + 2c..
        a[kk][1] = t_hi < end ? hi[kk * 8] : 0u;      // row g + 8
        a[kk][2] = t_lo < end ? lo[kk * 8 + 4] : 0u;  // row g,     columns 16kk + 8 + 2c..
        a[kk][3] = t_hi < end ? hi[kk * 8 + 4] : 0u;  // row g + 8
    }
}
// issue acc[16 × 64] per warp (the warpgroup: 64 × 64) = Q (registers, D columns) · B (64 × D staged)ᵀ
template <int D>
__device__ __forceinline__ void wg_issue_scores_rq(float (*acc)[4], uint32_t (*qa)[4], const bf16_t *B) {
    wg_hold<FT / 8>(acc);
    wg_hold_frags<D / 16>(qa);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) wgmma_rs_n64(acc, qa[kk], wg_desc_kmajor(B, kk * 16), kk > 0);
    wg_commit();
}
// the same, waited for
template <int D>
__device__ __forceinline__ void wg_scores_rq(float (*acc)[4], uint32_t (*qa)[4], const bf16_t *B) {
    wg_issue_scores_rq<D>(acc, qa, B);
    wg_wait_all();
    wg_hold<FT / 8>(acc);
    wg_hold_frags<D / 16>(qa);
}

// the products, each waited for
template <int D>
__device__ __forceinline__ void wg_scores(float (*acc)[4], const bf16_t *A, const bf16_t *B) {
    wg_issue_scores<D>(acc, A, B);
    wg_wait_all();
    wg_hold<FT / 8>(acc);
}
template <int D>
__device__ __forceinline__ void wg_accumulate(float (*out)[4], const float (*p)[4], const bf16_t *tile) {
    uint32_t a[FT / 16][4];
    flash_p_frags<FT>(a, p);
    wg_issue_accumulate<D>(out, a, tile);
    wg_wait_all();
    wg_hold<D / 8>(out);
    wg_hold_frags(a);
}

// the engine of the tiled backward (flash_bwd_tiled.cuh) on wgmma: the warpgroup multiplies whole 64-row
// tiles (each warp receives its own 16 rows, row0 = 16·warp); tiles in the layout above, 1024-byte
// aligned; two independent products are issued together and waited for once
struct WgmmaTiles {
    template <int D>
    struct Tile { bf16_t x[FT * D]; };  // 8 or 16 KB: 1024-byte aligned after an aligned base
    static constexpr int smem_pad = 1024;
    static __device__ __forceinline__ unsigned char *align(unsigned char *raw) {
        return reinterpret_cast<unsigned char *>((reinterpret_cast<uintptr_t>(raw) + 1023) & ~(uintptr_t)1023);
    }
    template <int D>
    static __device__ __forceinline__ void load(Tile<D> &tile, const bf16_t *x, int r0, int end, int H, int h) {
        wg_load_tile_async<D>(tile.x, x, r0, end, H, h);
    }
    static __device__ __forceinline__ void fence_tiles() { wg_fence_smem(); }
    // acc1 = A1·B1ᵀ and acc2 = A2·B2ᵀ (the warp's 16 rows of each)
    template <int D>
    static __device__ __forceinline__ void scores2(float (*acc1)[4], const Tile<D> &A1, const Tile<D> &B1, float (*acc2)[4],
                                                   const Tile<D> &A2, const Tile<D> &B2, int, int) {
        wg_issue_scores<D>(acc1, A1.x, B1.x);
        wg_issue_scores<D>(acc2, A2.x, B2.x);
        wg_wait_all();
        wg_hold<FT / 8>(acc1);
        wg_hold<FT / 8>(acc2);
    }
    template <int D>
    static __device__ __forceinline__ void accumulate(float (*out)[4], const float (*p)[4], const Tile<D> &tile, int) {
        wg_accumulate<D>(out, p, tile.x);
    }
    // out1 += P1·T1 and out2 += P2·T2
    template <int D>
    static __device__ __forceinline__ void accumulate2(float (*out1)[4], const float (*p1)[4], const Tile<D> &T1, float (*out2)[4],
                                                       const float (*p2)[4], const Tile<D> &T2, int) {
        uint32_t a1[FT / 16][4], a2[FT / 16][4];
        flash_p_frags<FT>(a1, p1);
        flash_p_frags<FT>(a2, p2);
        wg_issue_accumulate<D>(out1, a1, T1.x);
        wg_issue_accumulate<D>(out2, a2, T2.x);
        wg_wait_all();
        wg_hold<D / 8>(out1);
        wg_hold<D / 8>(out2);
        wg_hold_frags(a1);
        wg_hold_frags(a2);
    }
    // the pipelined backward's (version 5) pieces: start products (the caller keeps the P/dS fragments a
    // alive), wait for all of them, pin registers after the wait
    template <int D>
    static __device__ __forceinline__ void issue_scores2(float (*acc1)[4], const Tile<D> &A1, const Tile<D> &B1, float (*acc2)[4],
                                                         const Tile<D> &A2, const Tile<D> &B2) {
        wg_issue_scores<D>(acc1, A1.x, B1.x);
        wg_issue_scores<D>(acc2, A2.x, B2.x);
    }
    template <int D>
    static __device__ __forceinline__ void issue_accumulate(float (*out)[4], const float (*p)[4], const Tile<D> &tile, uint32_t (*a)[4]) {
        flash_p_frags<FT>(a, p);
        wg_issue_accumulate<D>(out, a, tile.x);
    }
    template <int D>
    static __device__ __forceinline__ void issue_accumulate2(float (*out1)[4], const float (*p1)[4], const Tile<D> &T1, float (*out2)[4],
                                                             const float (*p2)[4], const Tile<D> &T2, uint32_t (*a1)[4],
                                                             uint32_t (*a2)[4]) {
        flash_p_frags<FT>(a1, p1);
        flash_p_frags<FT>(a2, p2);
        wg_issue_accumulate<D>(out1, a1, T1.x);
        wg_issue_accumulate<D>(out2, a2, T2.x);
    }
    static __device__ __forceinline__ void settle() { wg_wait_all(); }
    template <int NT>
    static __device__ __forceinline__ void hold(float (*acc)[4]) { wg_hold<NT>(acc); }
    static __device__ __forceinline__ void hold_frags(uint32_t (*a)[4]) { wg_hold_frags(a); }
};
