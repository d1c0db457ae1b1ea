// flash_fwd.cu: tensor-core attention forward (FlashAttention-2 scheme) for head_dim 64 and 128.
// A block of 4 warps owns 64 query rows of one head of one packed sub-sequence; it walks the key
// tiles of 64 rows that those queries may see (causal: up to the diagonal), and per tile:
//   S = Q·Kᵀ·scale            (WMMA bf16 16×16×16, fp32 accumulate; each warp its 16 query rows)
//   m' = max(m, rowmax S); P = exp(S − m'); l = l·e^(m−m') + rowsum P; O = O·e^(m−m') + P·V
// so no T×T matrix exists. O, S and the row statistics stay in shared memory in fp32; P is rounded to
// bf16 for the P·V product (as FlashAttention does). Rows past the sub-sequence are zero and masked.
#include <math.h>
#include <mma.h>

#include "common_cuda.cuh"
#include "ops_cuda.h"

using namespace nvcuda;

enum { BR = 64, BC = 64, WARPS = 4, ROWS_PER_WARP = BR / WARPS };

template <int D>
struct Smem {
    bf16_t q[BR][D + 8], k[BC][D + 8], v[BC][D + 8];   // +8: row padding against bank conflicts (16 bytes)
    float s[WARPS][ROWS_PER_WARP][BC + 4];
    bf16_t p[WARPS][ROWS_PER_WARP][BC + 8];
    float o[WARPS][ROWS_PER_WARP][D + 4];
    float m[WARPS][ROWS_PER_WARP], l[WARPS][ROWS_PER_WARP];
};

// rows [r0, r0 + BR) of a [T, H, D] tensor (head h) into tile; rows at or past `end` become zero
template <int D>
__device__ static void load_tile(bf16_t (*tile)[D + 8], const bf16_t *x, int r0, int end, int H, int h) {
    const int chunks = D / 8;  // 16-byte pieces per row
    for (int i = threadIdx.x; i < BR * chunks; i += blockDim.x) {
        int r = i / chunks, c = (i % chunks) * 8;
        uint4 val = make_uint4(0, 0, 0, 0);
        if (r0 + r < end) val = *(const uint4 *)(x + ((size_t)(r0 + r) * H + h) * D + c);
        *(uint4 *)&tile[r][c] = val;
    }
}

template <int D>
__global__ static void __launch_bounds__(WARPS * 32)
flash_fwd(bf16_t *out, float *lse, const bf16_t *q, const bf16_t *k, const bf16_t *v, const int32_t *cu, int Hq, int Hkv,
          int causal, float scale) {
    extern __shared__ __align__(128) unsigned char raw[];
    Smem<D> &sm = *reinterpret_cast<Smem<D> *>(raw);
    int s = blockIdx.x, tile = blockIdx.y, h = blockIdx.z, hk = h / (Hq / Hkv);
    int start = cu[s], end = cu[s + 1], q0 = start + tile * BR;
    if (q0 >= end) return;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    load_tile<D>(sm.q, q, q0, end, Hq, h);
    for (int i = lane; i < ROWS_PER_WARP * D; i += 32) sm.o[warp][i / D][i % D] = 0.0f;
    if (lane < ROWS_PER_WARP) { sm.m[warp][lane] = -INFINITY; sm.l[warp][lane] = 0.0f; }
    int kend = causal ? min(end, q0 + BR) : end;
    for (int k0 = start; k0 < kend; k0 += BC) {
        __syncthreads();  // the previous tile's K and V are no longer read
        load_tile<D>(sm.k, k, k0, end, Hkv, hk);
        load_tile<D>(sm.v, v, k0, end, Hkv, hk);
        __syncthreads();
        // S (16 × 64) for this warp's rows
        for (int n = 0; n < BC / 16; n++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
            for (int kk = 0; kk < D / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16_t, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16_t, wmma::col_major> b;  // Kᵀ: K rows are its columns
                wmma::load_matrix_sync(a, &sm.q[warp * ROWS_PER_WARP][kk * 16], D + 8);
                wmma::load_matrix_sync(b, &sm.k[n * 16][kk * 16], D + 8);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(&sm.s[warp][0][n * 16], acc, BC + 4, wmma::mem_row_major);
        }
        __syncwarp();
        // online softmax: two lanes per row, 32 columns each
        {
            int r = lane / 2, half = lane % 2, t = q0 + warp * ROWS_PER_WARP + r;
            float mx = -INFINITY;
            for (int c = half * 32; c < half * 32 + 32; c++) {
                int j = k0 + c;
                float x = (j < end && (!causal || j <= t)) ? sm.s[warp][r][c] * scale : -INFINITY;
                sm.s[warp][r][c] = x;
                mx = fmaxf(mx, x);
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            float m_old = sm.m[warp][r], m_new = fmaxf(m_old, mx);
            float corr = m_new == -INFINITY ? 1.0f : expf(m_old - m_new), sum = 0.0f;
            for (int c = half * 32; c < half * 32 + 32; c++) {
                float p = m_new == -INFINITY ? 0.0f : expf(sm.s[warp][r][c] - m_new);
                bf16_t pb = __float2bfloat16_rn(p);
                sm.p[warp][r][c] = pb;
                sum += __bfloat162float(pb);  // l sums what P·V multiplies
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            for (int c = half * (D / 2); c < (half + 1) * (D / 2); c++) sm.o[warp][r][c] *= corr;
            __syncwarp();
            if (half == 0) { sm.m[warp][r] = m_new; sm.l[warp][r] = sm.l[warp][r] * corr + sum; }
        }
        __syncwarp();
        // O (16 × D) += P (16 × 64) · V (64 × D)
        for (int n = 0; n < D / 16; n++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::load_matrix_sync(acc, &sm.o[warp][0][n * 16], D + 4, wmma::mem_row_major);
            for (int kk = 0; kk < BC / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16_t, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16_t, wmma::row_major> b;
                wmma::load_matrix_sync(a, &sm.p[warp][0][kk * 16], BC + 8);
                wmma::load_matrix_sync(b, &sm.v[kk * 16][n * 16], D + 8);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(&sm.o[warp][0][n * 16], acc, D + 4, wmma::mem_row_major);
        }
        __syncwarp();
    }
    // O / l and the log-sum-exp
    for (int i = lane; i < ROWS_PER_WARP * D; i += 32) {
        int r = i / D, c = i % D, t = q0 + warp * ROWS_PER_WARP + r;
        if (t < end) st(out, ((size_t)t * Hq + h) * D + c, sm.o[warp][r][c] / sm.l[warp][r]);
    }
    if (lane < ROWS_PER_WARP) {
        int t = q0 + warp * ROWS_PER_WARP + lane;
        if (t < end) lse[(size_t)t * Hq + h] = sm.m[warp][lane] + logf(sm.l[warp][lane]);
    }
}

template <int D>
static void launch(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu, int nseq, int max_len,
                   int Hq, int Hkv, int causal) {
    size_t bytes = sizeof(Smem<D>);
    static int configured;
    if (!configured) {
        CUDA_CHECK(cudaFuncSetAttribute(flash_fwd<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        configured = 1;
    }
    dim3 grid(nseq, (max_len + BR - 1) / BR, Hq);
    flash_fwd<D><<<grid, WARPS * 32, bytes, g_stream>>>((bf16_t *)out, lse, (const bf16_t *)q, (const bf16_t *)k,
                                                       (const bf16_t *)v, cu, Hq, Hkv, causal, 1.0f / sqrtf((float)D));
    LAUNCH_CHECK();
}

// Returns 0 when it handled the call (head_dim 64 or 128), -1 to leave it to the general kernel.
int cuda_flash_forward(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu, int nseq,
                       int max_len, int Hq, int Hkv, int D, int causal) {
    if (D == 64) launch<64>(out, lse, q, k, v, cu, nseq, max_len, Hq, Hkv, causal);
    else if (D == 128) launch<128>(out, lse, q, k, v, cu, nseq, max_len, Hq, Hkv, causal);
    else return -1;
    return 0;
}
