// flash_bwd.cu: tensor-core attention backward (FlashAttention-2 scheme) for head_dim 64 and 128, in
// two kernels so that no gradient needs atomics (a run repeats bit for bit):
//   dkdv: a block owns 64 keys of one KV head; over the query tiles that see them and the query heads
//         of its group it rebuilds Pᵀ = exp(K·Qᵀ·scale − lse) and dPᵀ = V·dOᵀ, then
//         dSᵀ = Pᵀ∘(dPᵀ − D)·scale,  dV += Pᵀ·dO,  dK += dSᵀ·Q
//   dq:   a block owns 64 query rows of one head; over the key tiles they see,
//         P = exp(Q·Kᵀ·scale − lse), dP = dO·Vᵀ, dS = P∘(dP − D)·scale,  dQ += dS·K
// with D = rowsum(dO∘O) from the first pass of attention.cu. Products are WMMA bf16 16×16×16 with fp32
// accumulation; P and dS are rounded to bf16 for their products, as FlashAttention does.
#include <math.h>
#include <mma.h>

#include "common_cuda.cuh"
#include "ops_cuda.h"

using namespace nvcuda;

enum { TILE = 64, NW = 4, WR = TILE / NW };  // rows per tile, warps, rows per warp

template <int D>
struct BwdSmem {
    bf16_t a[TILE][D + 8], b[TILE][D + 8];      // dkdv: K, V (fixed); dq: Q, dO (fixed)
    bf16_t c[TILE][D + 8], d[TILE][D + 8];      // dkdv: Q, dO (per query tile); dq: K, V (per key tile)
    float s[NW][WR][TILE + 4], dp[NW][WR][TILE + 4];
    bf16_t p[NW][WR][TILE + 8], ds[NW][WR][TILE + 8];
    float acc1[NW][WR][D + 4], acc2[NW][WR][D + 4];  // dkdv: dK, dV; dq: dQ (acc2 unused)
    float lse[TILE], drow[TILE];
};

template <int D>
__device__ static void load_rows(bf16_t (*tile)[D + 8], const bf16_t *x, int r0, int end, int H, int h) {
    const int chunks = D / 8;
    for (int i = threadIdx.x; i < TILE * chunks; i += blockDim.x) {
        int r = i / chunks, c = (i % chunks) * 8;
        uint4 val = make_uint4(0, 0, 0, 0);
        if (r0 + r < end) val = *(const uint4 *)(x + ((size_t)(r0 + r) * H + h) * D + c);
        *(uint4 *)&tile[r][c] = val;
    }
}

// out[16][64] (fp32, ld TILE+4) = A_rows[16][D] · B_rows[64][D]ᵀ
template <int D>
__device__ static void rows_times_rowsT(float *out, const bf16_t *A, const bf16_t (*B)[D + 8]) {
    for (int n = 0; n < TILE / 16; n++) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.0f);
        for (int kk = 0; kk < D / 16; kk++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16_t, wmma::row_major> fa;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16_t, wmma::col_major> fb;
            wmma::load_matrix_sync(fa, A + kk * 16, D + 8);
            wmma::load_matrix_sync(fb, &B[n * 16][kk * 16], D + 8);
            wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(out + n * 16, acc, TILE + 4, wmma::mem_row_major);
    }
}

// acc[16][D] (fp32, ld D+4) += P[16][64] (bf16, ld TILE+8) · B_rows[64][D]
template <int D>
__device__ static void acc_p_times_rows(float *accp, const bf16_t *P, const bf16_t (*B)[D + 8]) {
    for (int n = 0; n < D / 16; n++) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::load_matrix_sync(acc, accp + n * 16, D + 4, wmma::mem_row_major);
        for (int kk = 0; kk < TILE / 16; kk++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16_t, wmma::row_major> fa;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16_t, wmma::row_major> fb;
            wmma::load_matrix_sync(fa, P + kk * 16, TILE + 8);
            wmma::load_matrix_sync(fb, &B[kk * 16][n * 16], D + 8);
            wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(accp + n * 16, acc, D + 4, wmma::mem_row_major);
    }
}

template <int D>
__global__ static void __launch_bounds__(NW * 32)
flash_dkdv(bf16_t *dk, bf16_t *dv, const bf16_t *q, const bf16_t *k, const bf16_t *v, const bf16_t *dout, const float *lse,
           const float *drow, const int32_t *cu, int Hq, int Hkv, int causal, float scale) {
    extern __shared__ __align__(128) unsigned char raw[];
    BwdSmem<D> &sm = *reinterpret_cast<BwdSmem<D> *>(raw);
    int s = blockIdx.x, hk = blockIdx.z, rep = Hq / Hkv;
    int start = cu[s], end = cu[s + 1], k0 = start + blockIdx.y * TILE;
    if (k0 >= end) return;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    load_rows<D>(sm.a, k, k0, end, Hkv, hk);
    load_rows<D>(sm.b, v, k0, end, Hkv, hk);
    for (int i = lane; i < WR * D; i += 32) sm.acc1[warp][i / D][i % D] = sm.acc2[warp][i / D][i % D] = 0.0f;
    int qfirst = causal ? start + (k0 - start) / TILE * TILE : start;  // the query tile holding k0
    for (int h = hk * rep; h < (hk + 1) * rep; h++)
        for (int q0 = qfirst; q0 < end; q0 += TILE) {
            __syncthreads();
            load_rows<D>(sm.c, q, q0, end, Hq, h);
            load_rows<D>(sm.d, dout, q0, end, Hq, h);
            for (int i = threadIdx.x; i < TILE; i += blockDim.x) {
                int t = q0 + i;
                sm.lse[i] = t < end ? lse[(size_t)t * Hq + h] : INFINITY;
                sm.drow[i] = t < end ? drow[(size_t)t * Hq + h] : 0.0f;
            }
            __syncthreads();
            rows_times_rowsT<D>(&sm.s[warp][0][0], &sm.a[warp * WR][0], sm.c);   // Sᵀ: keys × queries
            rows_times_rowsT<D>(&sm.dp[warp][0][0], &sm.b[warp * WR][0], sm.d);  // dPᵀ = V·dOᵀ
            __syncwarp();
            for (int i = lane; i < WR * TILE; i += 32) {
                int r = i / TILE, c = i % TILE, j = k0 + warp * WR + r, t = q0 + c;
                int valid = j < end && t < end && (!causal || j <= t);
                float p = valid ? expf(sm.s[warp][r][c] * scale - sm.lse[c]) : 0.0f;
                sm.p[warp][r][c] = __float2bfloat16_rn(p);
                sm.ds[warp][r][c] = __float2bfloat16_rn(p * (sm.dp[warp][r][c] - sm.drow[c]) * scale);
            }
            __syncwarp();
            acc_p_times_rows<D>(&sm.acc2[warp][0][0], &sm.p[warp][0][0], sm.d);   // dV += Pᵀ·dO
            acc_p_times_rows<D>(&sm.acc1[warp][0][0], &sm.ds[warp][0][0], sm.c);  // dK += dSᵀ·Q
            __syncwarp();
        }
    for (int i = lane; i < WR * D; i += 32) {
        int r = i / D, c = i % D, j = k0 + warp * WR + r;
        if (j >= end) continue;
        size_t e = ((size_t)j * Hkv + hk) * D + c;
        if (dk) st(dk, e, ld(dk, e) + sm.acc1[warp][r][c]);
        if (dv) st(dv, e, ld(dv, e) + sm.acc2[warp][r][c]);
    }
}

template <int D>
__global__ static void __launch_bounds__(NW * 32)
flash_dq(bf16_t *dq, const bf16_t *q, const bf16_t *k, const bf16_t *v, const bf16_t *dout, const float *lse,
         const float *drow, const int32_t *cu, int Hq, int Hkv, int causal, float scale) {
    extern __shared__ __align__(128) unsigned char raw[];
    BwdSmem<D> &sm = *reinterpret_cast<BwdSmem<D> *>(raw);
    int s = blockIdx.x, h = blockIdx.z, hk = h / (Hq / Hkv);
    int start = cu[s], end = cu[s + 1], q0 = start + blockIdx.y * TILE;
    if (q0 >= end) return;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    load_rows<D>(sm.a, q, q0, end, Hq, h);
    load_rows<D>(sm.b, dout, q0, end, Hq, h);
    for (int i = threadIdx.x; i < TILE; i += blockDim.x) {
        int t = q0 + i;
        sm.lse[i] = t < end ? lse[(size_t)t * Hq + h] : INFINITY;
        sm.drow[i] = t < end ? drow[(size_t)t * Hq + h] : 0.0f;
    }
    for (int i = lane; i < WR * D; i += 32) sm.acc1[warp][i / D][i % D] = 0.0f;
    int kend = causal ? min(end, q0 + TILE) : end;
    for (int k0 = start; k0 < kend; k0 += TILE) {
        __syncthreads();
        load_rows<D>(sm.c, k, k0, end, Hkv, hk);
        load_rows<D>(sm.d, v, k0, end, Hkv, hk);
        __syncthreads();
        rows_times_rowsT<D>(&sm.s[warp][0][0], &sm.a[warp * WR][0], sm.c);   // S = Q·Kᵀ
        rows_times_rowsT<D>(&sm.dp[warp][0][0], &sm.b[warp * WR][0], sm.d);  // dP = dO·Vᵀ
        __syncwarp();
        for (int i = lane; i < WR * TILE; i += 32) {
            int r = i / TILE, c = i % TILE, t = q0 + warp * WR + r, j = k0 + c;
            int valid = j < end && t < end && (!causal || j <= t);
            float p = valid ? expf(sm.s[warp][r][c] * scale - sm.lse[warp * WR + r]) : 0.0f;
            sm.ds[warp][r][c] = __float2bfloat16_rn(p * (sm.dp[warp][r][c] - sm.drow[warp * WR + r]) * scale);
        }
        __syncwarp();
        acc_p_times_rows<D>(&sm.acc1[warp][0][0], &sm.ds[warp][0][0], sm.c);  // dQ += dS·K
        __syncwarp();
    }
    for (int i = lane; i < WR * D; i += 32) {
        int r = i / D, c = i % D, t = q0 + warp * WR + r;
        if (t >= end) continue;
        size_t e = ((size_t)t * Hq + h) * D + c;
        st(dq, e, ld(dq, e) + sm.acc1[warp][r][c]);
    }
}

template <int D>
static void launch(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const float *lse, const float *drow, const bf16 *q,
                   const bf16 *k, const bf16 *v, const int32_t *cu, int nseq, int max_len, int Hq, int Hkv, int causal) {
    size_t bytes = sizeof(BwdSmem<D>);
    static int configured;
    if (!configured) {
        CUDA_CHECK(cudaFuncSetAttribute(flash_dkdv<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        CUDA_CHECK(cudaFuncSetAttribute(flash_dq<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        configured = 1;
    }
    float scale = 1.0f / sqrtf((float)D);
    int tiles = (max_len + TILE - 1) / TILE;
    const bf16_t *Q = (const bf16_t *)q, *K = (const bf16_t *)k, *V = (const bf16_t *)v, *DO = (const bf16_t *)dout;
    if (dk || dv) {
        flash_dkdv<D><<<dim3(nseq, tiles, Hkv), NW * 32, bytes, g_stream>>>((bf16_t *)dk, (bf16_t *)dv, Q, K, V, DO, lse, drow,
                                                                            cu, Hq, Hkv, causal, scale);
        LAUNCH_CHECK();
    }
    if (dq) {
        flash_dq<D><<<dim3(nseq, tiles, Hq), NW * 32, bytes, g_stream>>>((bf16_t *)dq, Q, K, V, DO, lse, drow, cu, Hq, Hkv,
                                                                         causal, scale);
        LAUNCH_CHECK();
    }
}

// 0 when handled (head_dim 64 or 128), -1 to leave it to the general kernels. drow = rowsum(dO∘O).
int cuda_flash_backward(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const float *lse, const float *drow, const bf16 *q,
                        const bf16 *k, const bf16 *v, const int32_t *cu, int nseq, int max_len, int Hq, int Hkv, int D,
                        int causal) {
    if (D == 64) launch<64>(dq, dk, dv, dout, lse, drow, q, k, v, cu, nseq, max_len, Hq, Hkv, causal);
    else if (D == 128) launch<128>(dq, dk, dv, dout, lse, drow, q, k, v, cu, nseq, max_len, Hq, Hkv, causal);
    else return -1;
    return 0;
}
