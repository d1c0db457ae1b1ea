// flash_bwd.cu: tensor-core attention backward (FlashAttention-2 scheme) for head_dim 64 and 128, in
// two kernels so that no gradient needs atomics (a run repeats bit for bit):
//   dkdv: a block owns 64 keys of one KV head, a warp 16 of them; over the query tiles that see them and
//         the query heads of its group it rebuilds Pᵀ = exp(K·Qᵀ·scale − lse) and dPᵀ = V·dOᵀ, then
//         dSᵀ = Pᵀ∘(dPᵀ − D)·scale,  dV += Pᵀ·dO,  dK += dSᵀ·Q
//   dq:   a block owns 64 query rows of one head, a warp 16 of them; over the key tiles they see,
//         P = exp(Q·Kᵀ·scale − lse), dP = dO·Vᵀ, dS = P∘(dP − D)·scale,  dQ += dS·K
// with D = rowsum(dO∘O) from the first pass of attention.cu. Products are mma.sync m16n8k16 (bf16 in,
// fp32 accumulate, flash_mma.cuh) with the score tiles and gradient accumulators in registers; P and dS
// are rounded to bf16 as operands, as FlashAttention does.
#include <math.h>

#include "flash_bwd_tiled.cuh"

template <int D>
struct BwdSmem {
    bf16_t a[FT][D + 8], b[FT][D + 8];   // dkdv: K, V (fixed); dq: Q, dO (fixed)
    bf16_t c[FT][D + 8], d[FT][D + 8];   // dkdv: Q, dO (per query tile); dq: K, V (per key tile)
    float lse[FT], drow[FT];
};

template <int D>
__global__ static void __launch_bounds__(NW * 32)
flash_dkdv(bf16_t *dk, bf16_t *dv, const bf16_t *q, const bf16_t *k, const bf16_t *v, const bf16_t *dout, const float *lse,
           const float *drow, const int32_t *cu, int Hq, int Hkv, int causal, float scale) {
    extern __shared__ __align__(128) unsigned char raw[];
    BwdSmem<D> &sm = *reinterpret_cast<BwdSmem<D> *>(raw);
    int s = blockIdx.x, hk = blockIdx.z, rep = Hq / Hkv;
    int start = cu[s], end = cu[s + 1], k0 = start + blockIdx.y * FT;
    if (k0 >= end) return;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4, row0 = warp * 16;
    int j_lo = k0 + row0 + g, j_hi = j_lo + 8;  // this thread's two key rows
    flash_load_tile<D>(sm.a, k, k0, end, Hkv, hk);
    flash_load_tile<D>(sm.b, v, k0, end, Hkv, hk);
    float gk[D / 8][4], gv[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; n++) gk[n][0] = gk[n][1] = gk[n][2] = gk[n][3] = gv[n][0] = gv[n][1] = gv[n][2] = gv[n][3] = 0.0f;
    int qfirst = causal ? k0 : start;  // causal: only queries at or after the first key see it
    for (int h = hk * rep; h < (hk + 1) * rep; h++)
        for (int q0 = qfirst; q0 < end; q0 += FT) {
            __syncthreads();
            flash_load_tile<D>(sm.c, q, q0, end, Hq, h);
            flash_load_tile<D>(sm.d, dout, q0, end, Hq, h);
            for (int i = threadIdx.x; i < FT; i += blockDim.x) {
                int t = q0 + i;
                sm.lse[i] = t < end ? lse[(size_t)t * Hq + h] : INFINITY;
                sm.drow[i] = t < end ? drow[(size_t)t * Hq + h] : 0.0f;
            }
            __syncthreads();
            float p[FT / 8][4], ds[FT / 8][4];
            flash_tile_tileT<D>(p, sm.a, row0, sm.c, g, c);   // Sᵀ = K·Qᵀ (keys × queries)
            flash_tile_tileT<D>(ds, sm.b, row0, sm.d, g, c);  // dPᵀ = V·dOᵀ
#pragma unroll
            for (int n = 0; n < FT / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int col = n * 8 + 2 * c + (e & 1), t = q0 + col, j = e < 2 ? j_lo : j_hi;
                    int valid = j < end && t < end && (!causal || j <= t);
                    float pv = valid ? __expf(p[n][e] * scale - sm.lse[col]) : 0.0f;
                    p[n][e] = pv;
                    ds[n][e] = pv * (ds[n][e] - sm.drow[col]) * scale;
                }
            flash_p_tile<D>(gv, p, sm.d, g, c);   // dV += Pᵀ·dO
            flash_p_tile<D>(gk, ds, sm.c, g, c);  // dK += dSᵀ·Q
        }
    if (dk) flash_put_rows<D>(dk, gk, j_lo, j_hi, end, Hkv, hk, c);
    if (dv) flash_put_rows<D>(dv, gv, j_lo, j_hi, end, Hkv, hk, c);
}

template <int D>
__global__ static void __launch_bounds__(NW * 32)
flash_dq(bf16_t *dq, const bf16_t *q, const bf16_t *k, const bf16_t *v, const bf16_t *dout, const float *lse,
         const float *drow, const int32_t *cu, int Hq, int Hkv, int causal, float scale) {
    extern __shared__ __align__(128) unsigned char raw[];
    BwdSmem<D> &sm = *reinterpret_cast<BwdSmem<D> *>(raw);
    int s = blockIdx.x, h = blockIdx.z, hk = h / (Hq / Hkv);
    int start = cu[s], end = cu[s + 1], q0 = start + blockIdx.y * FT;
    if (q0 >= end) return;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4, row0 = warp * 16;
    int t_lo = q0 + row0 + g, t_hi = t_lo + 8;
    flash_load_tile<D>(sm.a, q, q0, end, Hq, h);
    flash_load_tile<D>(sm.b, dout, q0, end, Hq, h);
    float lse_lo = t_lo < end ? lse[(size_t)t_lo * Hq + h] : INFINITY, lse_hi = t_hi < end ? lse[(size_t)t_hi * Hq + h] : INFINITY;
    float d_lo = t_lo < end ? drow[(size_t)t_lo * Hq + h] : 0.0f, d_hi = t_hi < end ? drow[(size_t)t_hi * Hq + h] : 0.0f;
    float gq[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; n++) gq[n][0] = gq[n][1] = gq[n][2] = gq[n][3] = 0.0f;
    int kend = causal ? min(end, q0 + FT) : end;
    for (int k0 = start; k0 < kend; k0 += FT) {
        __syncthreads();
        flash_load_tile<D>(sm.c, k, k0, end, Hkv, hk);
        flash_load_tile<D>(sm.d, v, k0, end, Hkv, hk);
        __syncthreads();
        float p[FT / 8][4], ds[FT / 8][4];
        flash_tile_tileT<D>(p, sm.a, row0, sm.c, g, c);   // S = Q·Kᵀ
        flash_tile_tileT<D>(ds, sm.b, row0, sm.d, g, c);  // dP = dO·Vᵀ
#pragma unroll
        for (int n = 0; n < FT / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int j = k0 + n * 8 + 2 * c + (e & 1), t = e < 2 ? t_lo : t_hi;
                int valid = j < end && t < end && (!causal || j <= t);
                float pv = valid ? __expf(p[n][e] * scale - (e < 2 ? lse_lo : lse_hi)) : 0.0f;
                ds[n][e] = pv * (ds[n][e] - (e < 2 ? d_lo : d_hi)) * scale;
            }
        flash_p_tile<D>(gq, ds, sm.c, g, c);  // dQ += dS·K
    }
    flash_put_rows<D>(dq, gq, t_lo, t_hi, end, Hq, h, c);
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
    int tiles = (max_len + FT - 1) / FT;
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
int cuda_flash_backward(int version, bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const float *lse, const float *drow,
                        const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu, int nseq, int max_len, int Hq, int Hkv,
                        int D, int causal) {
    // version 3 differs in the forward only; versions 4 and 5 (wgmma) are flash_wgmma.cu
    if (version >= 2 && D == 64) flash_bwd_launch<64, MmaSyncTiles, false>(dq, dk, dv, dout, lse, drow, q, k, v, cu, nseq, max_len, Hq, Hkv, causal);
    else if (version >= 2 && D == 128) flash_bwd_launch<128, MmaSyncTiles, false>(dq, dk, dv, dout, lse, drow, q, k, v, cu, nseq, max_len, Hq, Hkv, causal);
    else if (D == 64) launch<64>(dq, dk, dv, dout, lse, drow, q, k, v, cu, nseq, max_len, Hq, Hkv, causal);
    else if (D == 128) launch<128>(dq, dk, dv, dout, lse, drow, q, k, v, cu, nseq, max_len, Hq, Hkv, causal);
    else return -1;
    return 0;
}
