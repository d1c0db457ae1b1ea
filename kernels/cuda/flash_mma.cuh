// flash_mma.cuh: what the flash-attention kernels share: mma.sync m16n8k16 (bf16 in, fp32 accumulate),
// bf16 packing, and staging 64-row tiles of a [T, H, D] tensor in shared memory.
//
// Fragment layout of mma.m16n8k16 (lane = 4·g + c): A (16×16, row-major) a0 = A[g][2c,2c+1],
// a1 = A[g+8][2c,2c+1], a2 = A[g][2c+8,2c+9], a3 = A[g+8][2c+8,2c+9]; B (16×8) b0 = B[2c,2c+1][g],
// b1 = B[2c+8,2c+9][g]; C (16×8, fp32) c0,c1 = C[g][2c,2c+1], c2,c3 = C[g+8][2c,2c+1].
// Two C tiles side by side (columns 0-7 and 8-15) are exactly the registers of one A fragment, so a
// score tile turns into the A operand of the next product without leaving registers.
#pragma once
#include <math.h>

#include "common_cuda.cuh"

enum { FT = 64 };  // rows of a staged tile

__device__ __forceinline__ void mma16816(float *d, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// a row's values are spread over the 4 lanes of a quad (lanes 4g .. 4g+3): their max and sum
__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x = lo (lower address), .y = hi
    return *reinterpret_cast<uint32_t *>(&v);
}

__device__ __forceinline__ uint32_t pack_two(bf16_t lo, bf16_t hi) {
    __nv_bfloat162 v;
    v.x = lo;
    v.y = hi;
    return *reinterpret_cast<uint32_t *>(&v);
}

// rows [r0, r0 + 64) of a [T, H, D] tensor (head h) into tile; rows at or past `end` become zero
template <int D>
__device__ __forceinline__ void flash_load_tile(bf16_t (*tile)[D + 8], const bf16_t *x, int r0, int end, int H, int h) {
    const int chunks = D / 8;  // 16-byte pieces per row
    for (int i = threadIdx.x; i < FT * chunks; i += blockDim.x) {
        int r = i / chunks, c = (i % chunks) * 8;
        uint4 val = make_uint4(0, 0, 0, 0);
        if (r0 + r < end) val = *(const uint4 *)(x + ((size_t)(r0 + r) * H + h) * D + c);
        *(uint4 *)&tile[r][c] = val;
    }
}

// A fragment kk (columns 16kk..16kk+15) of rows row0..row0+15 of a staged tile
template <int D>
__device__ __forceinline__ void flash_a_frag(uint32_t *a, const bf16_t (*tile)[D + 8], int row0, int kk, int g, int c) {
    a[0] = *(const uint32_t *)&tile[row0 + g][kk * 16 + 2 * c];
    a[1] = *(const uint32_t *)&tile[row0 + g + 8][kk * 16 + 2 * c];
    a[2] = *(const uint32_t *)&tile[row0 + g][kk * 16 + 2 * c + 8];
    a[3] = *(const uint32_t *)&tile[row0 + g + 8][kk * 16 + 2 * c + 8];
}

// out[16 × D] (D/8 C tiles) += P(16 × 64, C layout in p[8][4]) · tile(64 × D), B[k][n] = tile[row k][n]
template <int D>
__device__ __forceinline__ void flash_p_tile(float (*out)[4], const float (*p)[4], const bf16_t (*tile)[D + 8], int g, int c) {
#pragma unroll
    for (int kk = 0; kk < FT / 16; kk++) {
        uint32_t a[4] = {pack_bf16(p[2 * kk][0], p[2 * kk][1]), pack_bf16(p[2 * kk][2], p[2 * kk][3]),
                         pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]), pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3])};
        int row = kk * 16 + 2 * c;
#pragma unroll
        for (int n = 0; n < D / 8; n++) {
            int col = n * 8 + g;
            mma16816(out[n], a, pack_two(tile[row][col], tile[row + 1][col]), pack_two(tile[row + 8][col], tile[row + 9][col]));
        }
    }
}

// acc[16 × 64] = rows row0..row0+15 of tileA (16 × D, A fragments loaded on the fly) · tileBᵀ
template <int D>
__device__ __forceinline__ void flash_tile_tileT(float (*acc)[4], const bf16_t (*A)[D + 8], int row0, const bf16_t (*B)[D + 8],
                                                 int g, int c) {
#pragma unroll
    for (int n = 0; n < FT / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        uint32_t a[4];
        flash_a_frag<D>(a, A, row0, kk, g, c);
#pragma unroll
        for (int n = 0; n < FT / 8; n++)
            mma16816(acc[n], a, *(const uint32_t *)&B[n * 8 + g][kk * 16 + 2 * c], *(const uint32_t *)&B[n * 8 + g][kk * 16 + 2 * c + 8]);
    }
}

// ---- second generation: ldmatrix fragment loads and cp.async tile copies ----
// ldmatrix.x4 loads four 8×8 bf16 matrices; lanes 8j..8j+7 give the row addresses of matrix j, and
// register j receives matrix j in the mma fragment layout (thread 4g+c: row g, columns 2c, 2c+1), or
// transposed with .trans (thread 4g+c: rows 2c, 2c+1 of column g), which turns a row-major [k][n]
// tile into B fragments directly.
__device__ __forceinline__ void ldsm_x4(uint32_t *r, const void *p) {
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t *r, const void *p) {
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

// 16 bytes global -> shared without passing through registers; pred false fills zeros (and reads nothing)
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool pred) {
    unsigned a = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(gmem), "r"(pred ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }
// all but the last N committed groups of this thread's copies have landed
template <int N>
__device__ __forceinline__ void cp_async_wait_pending() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// flash_load_tile through cp.async: the copies are in flight until cp_async_wait_all + a barrier
template <int D>
__device__ __forceinline__ void flash_load_tile_async(bf16_t (*tile)[D + 8], const bf16_t *x, int r0, int end, int H, int h) {
    const int chunks = D / 8;
    for (int i = threadIdx.x; i < FT * chunks; i += blockDim.x) {
        int r = i / chunks, col = (i % chunks) * 8;
        bool in = r0 + r < end;
        cp_async16(&tile[r][col], x + ((size_t)(in ? r0 + r : 0) * H + h) * D + col, in);
    }
}

// B fragments of key tiles n = 2np, 2np+1 for the 16 columns kk of a row-major tile whose rows are the
// product's n index (B[k][n] = tile[n][k]): r = {b0(2np), b1(2np), b0(2np+1), b1(2np+1)}
template <int D>
__device__ __forceinline__ void flash_b_rows(uint32_t *r, const bf16_t (*tile)[D + 8], int np, int kk, int lane) {
    ldsm_x4(r, &tile[np * 16 + (lane & 7) + ((lane >> 4) << 3)][kk * 16 + (((lane >> 3) & 1) << 3)]);
}
// B fragments of column tiles n = 2np, 2np+1 for the 16 rows kk of a row-major tile whose rows are the
// product's k index (B[k][n] = tile[k][n]), through the transposing load
template <int D>
__device__ __forceinline__ void flash_b_cols(uint32_t *r, const bf16_t (*tile)[D + 8], int np, int kk, int lane) {
    ldsm_x4_t(r, &tile[kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3)][np * 16 + ((lane >> 4) << 3)]);
}
// the A fragment (16 rows from row0, columns 16kk..16kk+15) of a row-major tile
template <int D>
__device__ __forceinline__ void flash_a_ldsm(uint32_t *a, const bf16_t (*tile)[D + 8], int row0, int kk, int lane) {
    ldsm_x4(a, &tile[row0 + (lane & 7) + (((lane >> 3) & 1) << 3)][kk * 16 + ((lane >> 4) << 3)]);
}

// acc[16 × 64] = rows row0..row0+15 of tile A · tile Bᵀ, both operands through ldmatrix
template <int D>
__device__ __forceinline__ void flash_tile_tileT2(float (*acc)[4], const bf16_t (*A)[D + 8], int row0, const bf16_t (*B)[D + 8],
                                                  int lane) {
#pragma unroll
    for (int n = 0; n < FT / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        uint32_t a[4];
        flash_a_ldsm<D>(a, A, row0, kk, lane);
#pragma unroll
        for (int np = 0; np < FT / 16; np++) {
            uint32_t b[4];
            flash_b_rows<D>(b, B, np, kk, lane);
            mma16816(acc[2 * np], a, b[0], b[1]);
            mma16816(acc[2 * np + 1], a, b[2], b[3]);
        }
    }
}

// out[16 × D] += P(16 × 64, C layout in p[8][4], rounded to bf16) · tile(64 × D)
template <int D>
__device__ __forceinline__ void flash_p_tile2(float (*out)[4], const float (*p)[4], const bf16_t (*tile)[D + 8], int lane) {
#pragma unroll
    for (int kk = 0; kk < FT / 16; kk++) {
        uint32_t a[4] = {pack_bf16(p[2 * kk][0], p[2 * kk][1]), pack_bf16(p[2 * kk][2], p[2 * kk][3]),
                         pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]), pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
        for (int np = 0; np < D / 16; np++) {
            uint32_t b[4];
            flash_b_cols<D>(b, tile, np, kk, lane);
            mma16816(out[2 * np], a, b[0], b[1]);
            mma16816(out[2 * np + 1], a, b[2], b[3]);
        }
    }
}

// ---- the forward's per-row-block steps, shared by the mma.sync (flash_fwd.cu) and wgmma kernels ----
// 2^x in one MUFU.EX2 (inputs below -126 flush to 0, as a softmax may: exp(-87) is already below any weight)
__device__ __forceinline__ float ex2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
constexpr float LOG2E = 1.4426950408889634f;

// One online-softmax step for a warp's 16 query rows t_lo = row g, t_hi = row g + 8 over KB keys from
// kb0 (scores in sc, C layout): scale and mask (unless `full`: every key is before the end and not after
// any of the rows), new row maxima m, sums l, O rescaled; sc becomes P = exp(S − m).
// EXP2: the same as FlashAttention-3 forms it, one FFMA and one ex2 per score, P = 2^(S·scale·log2 e − m·log2 e)
// with the row maxima taken of the raw scores (scale > 0: the same maxima), against a scaling multiply, a
// subtraction, exp's own multiply and the non-flushing ex2's range handling; m stays in natural-log units.
// flash_softmax_scores is the step without the rescale of O: the factors come back in corr[2] (rows g,
// g + 8), for flash_rescale_o — now, or (version 8) once the P·V product in flight on O has landed.
template <int KB, bool EXP2 = false>
__device__ __forceinline__ void flash_softmax_scores(float (*sc)[4], float *m, float *l, float *corr, int full, int kb0, int end,
                                                     int causal, int t_lo, int t_hi, int c, float scale) {
    float mx_lo = -INFINITY, mx_hi = -INFINITY, sf = EXP2 ? 1.0f : scale;
#pragma unroll
    for (int n = 0; n < KB / 8; n++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            int j = kb0 + n * 8 + 2 * c + e;
            sc[n][e] = full || (j < end && (!causal || j <= t_lo)) ? sc[n][e] * sf : -INFINITY;
            sc[n][2 + e] = full || (j < end && (!causal || j <= t_hi)) ? sc[n][2 + e] * sf : -INFINITY;
            mx_lo = fmaxf(mx_lo, sc[n][e]);
            mx_hi = fmaxf(mx_hi, sc[n][2 + e]);
        }
    if (EXP2) mx_lo *= scale, mx_hi *= scale;
    float mn_lo = fmaxf(m[0], quad_max(mx_lo)), mn_hi = fmaxf(m[1], quad_max(mx_hi));
    float base_lo = mn_lo == -INFINITY ? 0.0f : mn_lo, base_hi = mn_hi == -INFINITY ? 0.0f : mn_hi;
    float corr_lo, corr_hi, sum_lo = 0.0f, sum_hi = 0.0f;
    if constexpr (EXP2) {
        float s2 = scale * LOG2E, b2_lo = base_lo * LOG2E, b2_hi = base_hi * LOG2E;
        corr_lo = ex2_ftz(m[0] * LOG2E - b2_lo), corr_hi = ex2_ftz(m[1] * LOG2E - b2_hi);
#pragma unroll
        for (int n = 0; n < KB / 8; n++) {
            sc[n][0] = ex2_ftz(fmaf(sc[n][0], s2, -b2_lo));
            sc[n][1] = ex2_ftz(fmaf(sc[n][1], s2, -b2_lo));
            sc[n][2] = ex2_ftz(fmaf(sc[n][2], s2, -b2_hi));
            sc[n][3] = ex2_ftz(fmaf(sc[n][3], s2, -b2_hi));
            sum_lo += sc[n][0] + sc[n][1];
            sum_hi += sc[n][2] + sc[n][3];
        }
    } else {
        corr_lo = __expf(m[0] - base_lo), corr_hi = __expf(m[1] - base_hi);
#pragma unroll
        for (int n = 0; n < KB / 8; n++) {
            sc[n][0] = __expf(sc[n][0] - base_lo);
            sc[n][1] = __expf(sc[n][1] - base_lo);
            sc[n][2] = __expf(sc[n][2] - base_hi);
            sc[n][3] = __expf(sc[n][3] - base_hi);
            sum_lo += sc[n][0] + sc[n][1];
            sum_hi += sc[n][2] + sc[n][3];
        }
    }
    l[0] = l[0] * corr_lo + quad_sum(sum_lo);
    l[1] = l[1] * corr_hi + quad_sum(sum_hi);
    m[0] = mn_lo;
    m[1] = mn_hi;
    corr[0] = corr_lo;
    corr[1] = corr_hi;
}
template <int D>
__device__ __forceinline__ void flash_rescale_o(float (*o)[4], const float *corr) {
#pragma unroll
    for (int n = 0; n < D / 8; n++) {
        o[n][0] *= corr[0]; o[n][1] *= corr[0]; o[n][2] *= corr[1]; o[n][3] *= corr[1];
    }
}
template <int KB, int D, bool EXP2 = false>
__device__ __forceinline__ void flash_softmax_step(float (*sc)[4], float *m, float *l, float (*o)[4], int full, int kb0, int end,
                                                   int causal, int t_lo, int t_hi, int c, float scale) {
    float corr[2];
    flash_softmax_scores<KB, EXP2>(sc, m, l, corr, full, kb0, end, causal, t_lo, t_hi, c, scale);
    flash_rescale_o<D>(o, corr);
}

// P (a warp's 16 rows × KB, C layout in p[KB/8][4]) rounded to bf16 as the A fragments of P·X, 16 columns each
template <int KB>
__device__ __forceinline__ void flash_p_frags(uint32_t (*a)[4], const float (*p)[4]) {
#pragma unroll
    for (int kk = 0; kk < KB / 16; kk++) {
        a[kk][0] = pack_bf16(p[2 * kk][0], p[2 * kk][1]);          // row g,     columns 16kk + 2c..
        a[kk][1] = pack_bf16(p[2 * kk][2], p[2 * kk][3]);          // row g + 8
        a[kk][2] = pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]);  // row g,     columns 16kk + 8 + 2c..
        a[kk][3] = pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3]);  // row g + 8
    }
}

// dst rows r_lo, r_hi of [T, H, D] (head h) = acc (a warp's C-layout rows), rows at or past end left out. The
// backward kernels' outputs are written whole (ops.h): each row of dq, dk, dv is stored once, by the warp that owns it.
template <int D>
__device__ __forceinline__ void flash_put_rows(bf16_t *dst, const float (*acc)[4], int r_lo, int r_hi, int end, int H, int h, int c) {
#pragma unroll
    for (int n = 0; n < D / 8; n++) {
        int col = n * 8 + 2 * c;
#pragma unroll
        for (int half = 0; half < 2; half++) {
            int r = half ? r_hi : r_lo;
            if (r >= end) continue;
            *reinterpret_cast<__nv_bfloat162 *>(dst + ((size_t)r * H + h) * D + col) =
                __floats2bfloat162_rn(acc[n][2 * half], acc[n][2 * half + 1]);
        }
    }
}

// O / l for a warp's rows t_lo, t_hi into out [T, H, D] (head h), and their log-sum-exp
template <int D>
__device__ __forceinline__ void flash_store_rows(bf16_t *out, float *lse, const float (*o)[4], const float *m, const float *l,
                                                 int t_lo, int t_hi, int end, int H, int h, int c) {
#pragma unroll
    for (int n = 0; n < D / 8; n++) {
        int col = n * 8 + 2 * c;
        if (t_lo < end)
            *reinterpret_cast<__nv_bfloat162 *>(out + ((size_t)t_lo * H + h) * D + col) = __floats2bfloat162_rn(o[n][0] / l[0], o[n][1] / l[0]);
        if (t_hi < end)
            *reinterpret_cast<__nv_bfloat162 *>(out + ((size_t)t_hi * H + h) * D + col) = __floats2bfloat162_rn(o[n][2] / l[1], o[n][3] / l[1]);
    }
    if (c == 0) {
        if (t_lo < end) lse[(size_t)t_lo * H + h] = m[0] + logf(l[0]);
        if (t_hi < end) lse[(size_t)t_hi * H + h] = m[1] + logf(l[1]);
    }
}

// the engine of the tiled backward (flash_bwd_tiled.cuh) on ldmatrix + mma.sync: each warp multiplies its
// own 16 rows; tiles row-major with 8 elements of padding per row
struct MmaSyncTiles {
    template <int D>
    using Tile = bf16_t[FT][D + 8];
    static constexpr int smem_pad = 0;
    static __device__ __forceinline__ unsigned char *align(unsigned char *raw) { return raw; }
    template <int D>
    static __device__ __forceinline__ void load(bf16_t (*tile)[D + 8], const bf16_t *x, int r0, int end, int H, int h) {
        flash_load_tile_async<D>(tile, x, r0, end, H, h);
    }
    static __device__ __forceinline__ void fence_tiles() {}
    template <int D>
    static __device__ __forceinline__ void scores2(float (*acc1)[4], const bf16_t (*A1)[D + 8], const bf16_t (*B1)[D + 8],
                                                   float (*acc2)[4], const bf16_t (*A2)[D + 8], const bf16_t (*B2)[D + 8], int row0,
                                                   int lane) {
        flash_tile_tileT2<D>(acc1, A1, row0, B1, lane);
        flash_tile_tileT2<D>(acc2, A2, row0, B2, lane);
    }
    template <int D>
    static __device__ __forceinline__ void accumulate(float (*out)[4], const float (*p)[4], const bf16_t (*tile)[D + 8], int lane) {
        flash_p_tile2<D>(out, p, tile, lane);
    }
    template <int D>
    static __device__ __forceinline__ void accumulate2(float (*out1)[4], const float (*p1)[4], const bf16_t (*T1)[D + 8],
                                                       float (*out2)[4], const float (*p2)[4], const bf16_t (*T2)[D + 8], int lane) {
        flash_p_tile2<D>(out1, p1, T1, lane);
        flash_p_tile2<D>(out2, p2, T2, lane);
    }
};

// the tiles whose cp.async copies were started so far, all but the last PENDING committed groups, are in
// shared memory for every thread (and, on wgmma, visible to it)
template <class E, int PENDING = 0>
__device__ __forceinline__ void tiles_ready() {
    cp_async_wait_pending<PENDING>();
    E::fence_tiles();
    __syncthreads();
}
