// flash_wgmma.cuh: Hopper's warpgroup MMA (wgmma.mma_async, sm_90a only) for the flash-attention kernels.
// One warpgroup (the 4 warps of a block) multiplies a 64-row tile at once; the accumulator comes back
// in exactly the registers of the mma.sync code (flash_mma.cuh): warp w holds rows 16w..16w+15, lane
// 4g+c rows g and g+8, columns 8n+2c and 8n+2c+1 in d[n][0..3], so the kernels' softmax code is shared.
//
// wgmma reads its shared-memory operands through descriptors, from "core matrices" of 8 rows × 16 bytes
// stored contiguously (128 bytes). A staged 64 × D tile is kept in that layout (no swizzle):
//   element (r, col) at byte ((r/8)·(D/8) + col/8)·128 + (r%8)·16 + (col%8)·2
// so rows are 8-row groups RS = D/8·128 bytes apart and 8-column chunks 128 bytes apart. In a
// descriptor, the leading byte offset (LBO) is the distance between core matrices along the product's
// K dimension and the stride byte offset (SBO) along M or N:
//   operand whose rows are M or N (Q, K, V, dO in S = Q·Kᵀ, dP = dO·Vᵀ): K = columns, LBO 128, SBO RS
//   operand whose rows are K (V in P·V, dO or Q or K in the backward's P·X): MN-major, LBO RS, SBO 128
#pragma once
#include "flash_mma.cuh"

// byte offset of element (r, col) of a staged 64 × D tile
template <int D>
__device__ __forceinline__ int wg_offset(int r, int col) {
    return ((r >> 3) * (D / 8) + (col >> 3)) * 128 + (r & 7) * 16 + (col & 7) * 2;
}

// rows [r0, r0 + 64) of a [T, H, D] tensor (head h) into a staged tile through cp.async; rows at or past
// `end` become zero. Consecutive threads fill consecutive 16-byte pieces of shared memory.
template <int D>
__device__ __forceinline__ void wg_load_tile_async(bf16_t *tile, const bf16_t *x, int r0, int end, int H, int h) {
    constexpr int chunks = D / 8;
    for (int i = threadIdx.x; i < FT * chunks; i += blockDim.x) {
        int rr = i & 7, cc = (i >> 3) % chunks, rg = (i >> 3) / chunks, r = rg * 8 + rr;
        bool in = r0 + r < end;
        cp_async16(reinterpret_cast<char *>(tile) + i * 16, x + ((size_t)(in ? r0 + r : 0) * H + h) * D + cc * 8, in);
    }
}

// a shared-memory matrix descriptor: start address, LBO and SBO (each in 16-byte units), no swizzle
__device__ __forceinline__ uint64_t wg_desc(const void *smem, uint32_t lbo, uint32_t sbo) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
    return (uint64_t)((a & 0x3FFFF) >> 4) | ((uint64_t)(lbo >> 4) << 16) | ((uint64_t)(sbo >> 4) << 32);
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// shared memory written by ordinary stores or cp.async becomes visible to wgmma (the async proxy);
// each writing thread fences before the barrier that publishes the tile
__device__ __forceinline__ void wg_fence_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// d[8][4] (+)= A(64 × 16, smem) · B(64 × 16, smem)ᵀ: m64n64k16, both operands K-major
__device__ __forceinline__ void wgmma_ss_n64(float (*d)[4], uint64_t a, uint64_t b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
                 : "l"(a), "l"(b));
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

// acc[16 × 64] per warp (the block: 64 × 64) = A (64 × D staged) · B (64 × D staged)ᵀ
template <int D>
__device__ __forceinline__ void wg_scores(float (*acc)[4], const bf16_t *A, const bf16_t *B) {
    constexpr uint32_t RS = D / 8 * 128;
#pragma unroll
    for (int n = 0; n < FT / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)  // 16 columns = two 8-column chunks, 256 bytes on
        wgmma_ss_n64(acc, wg_desc(reinterpret_cast<const char *>(A) + kk * 256, 128, RS),
                     wg_desc(reinterpret_cast<const char *>(B) + kk * 256, 128, RS));
    wg_commit();
    wg_wait_all();
}

// 1: the MN-major descriptor with LBO and SBO swapped (set by ops_check only, to tell a wrong reading apart)
static __device__ int g_wg_swap_mn;

// out[16 × D] per warp += P (its 16 rows × 64, C layout in p[8][4], rounded to bf16) · tile (64 × D staged)
template <int D>
__device__ __forceinline__ void wg_accumulate(float (*out)[4], const float (*p)[4], const bf16_t *tile) {
    constexpr uint32_t RS = D / 8 * 128;
    uint32_t a[FT / 16][4];
#pragma unroll
    for (int kk = 0; kk < FT / 16; kk++) {
        a[kk][0] = pack_bf16(p[2 * kk][0], p[2 * kk][1]);
        a[kk][1] = pack_bf16(p[2 * kk][2], p[2 * kk][3]);
        a[kk][2] = pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]);
        a[kk][3] = pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3]);
    }
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < FT / 16; kk++) {  // 16 rows of the tile = two 8-row groups, 2·RS bytes on
        uint64_t b = wg_desc(reinterpret_cast<const char *>(tile) + kk * 2 * RS, g_wg_swap_mn ? 128 : RS, g_wg_swap_mn ? RS : 128);
        if constexpr (D == 64) wgmma_rs_n64_t(out, a[kk], b);
        else wgmma_rs_n128_t(out, a[kk], b);
    }
    wg_commit();
    wg_wait_all();
}

// the engine of the tiled backward (flash_bwd_tiled.cuh) on wgmma: the warpgroup multiplies whole 64-row
// tiles (each warp receives its own 16 rows, row0 = 16·warp); tiles in the core-matrix layout above,
// inside the same [64][D + 8] arrays as the mma.sync engine's
struct WgmmaTiles {
    template <int D>
    static __device__ __forceinline__ void load(bf16_t (*tile)[D + 8], const bf16_t *x, int r0, int end, int H, int h) {
        wg_load_tile_async<D>(&tile[0][0], x, r0, end, H, h);
    }
    static __device__ __forceinline__ void fence_tiles() { wg_fence_smem(); }
    template <int D>
    static __device__ __forceinline__ void scores(float (*acc)[4], const bf16_t (*A)[D + 8], int, const bf16_t (*B)[D + 8], int) {
        wg_scores<D>(acc, &A[0][0], &B[0][0]);
    }
    template <int D>
    static __device__ __forceinline__ void accumulate(float (*out)[4], const float (*p)[4], const bf16_t (*tile)[D + 8], int) {
        wg_accumulate<D>(out, p, &tile[0][0]);
    }
};
