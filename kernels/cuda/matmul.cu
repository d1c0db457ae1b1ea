// matmul.cu: Linear layers through cuBLASLt (bf16 inputs, fp32 compute). Our tensors are row-major;
// cuBLASLt is column-major, so a row-major X[r, c] is the column-major Xᵀ with leading dimension c:
//   out[N,M] = inp[N,K]·w[M,K]ᵀ     <=>  outᵀ(M×N) = (w-buffer, K×M)ᵀ · (inp-buffer, K×N)
//   dinp[N,K] += dout[N,M]·w[M,K]   <=>  dinpᵀ(K×N) = (w-buffer, K×M) · (dout-buffer, M×N)
//   dw[M,K] += dout[N,M]ᵀ·inp[N,K]  <=>  dwᵀ(K×M) = (inp-buffer, K×N) · (dout-buffer, M×N)ᵀ
#include <stdio.h>

#include "common_cuda.cuh"
#include "ops_cuda.h"

#define LT_CHECK(x)                                                       \
    do {                                                                  \
        cublasStatus_t s_ = (x);                                          \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                \
            char b_[32];                                                  \
            snprintf(b_, sizeof b_, "status %d", (int)s_);                \
            cuda_note_error(#x, b_);                                      \
        }                                                                 \
    } while (0)

// D(m×n) = alpha·op(A)·op(B) + beta·C, column-major, C = D; an optional bias (bf16, length m) epilogue.
static void lt_matmul(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void *A, int lda,
                      const void *B, int ldb, void *D, cudaDataType_t dtype, int ldd, float beta, const void *bias) {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, ld;
    LT_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (bias) {
        cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
        cudaDataType_t bt = CUDA_R_16BF;
        LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
        LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
        LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
    }
    LT_CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, ta == CUBLAS_OP_N ? m : k, ta == CUBLAS_OP_N ? k : m, lda));
    LT_CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, tb == CUBLAS_OP_N ? k : n, tb == CUBLAS_OP_N ? n : k, ldb));
    LT_CHECK(cublasLtMatrixLayoutCreate(&ld, dtype, m, n, ldd));
    cublasLtMatmulPreference_t pref;
    LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &g_lt_workspace_bytes,
                                                  sizeof g_lt_workspace_bytes));
    cublasLtMatmulHeuristicResult_t h;
    int found = 0;
    LT_CHECK(cublasLtMatmulAlgoGetHeuristic(g_lt, op, la, lb, ld, ld, pref, 1, &h, &found));
    if (!found) {
        cuda_note_error("cublasLtMatmulAlgoGetHeuristic", "no algorithm for this shape");
    } else {
        float alpha = 1.0f;
        LT_CHECK(cublasLtMatmul(g_lt, op, &alpha, A, la, B, lb, &beta, D, ld, D, ld, &h.algo, g_lt_workspace,
                                g_lt_workspace_bytes, g_stream));
    }
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(ld);
    cublasLtMatmulDescDestroy(op);
}

extern "C" void cuda_matmul_forward(bf16 *out, const bf16 *inp, const bf16 *w, const bf16 *bias, int N, int K, int M) {
    lt_matmul(CUBLAS_OP_T, CUBLAS_OP_N, M, N, K, w, K, inp, K, out, CUDA_R_16BF, M, 0.0f, bias);
}

// dbias[m] += Σ_n dout[n, m]: one thread per column, rows summed in order (deterministic).
__global__ static void bias_grad_kernel(float *dbias, const bf16_t *dout, int N, int M) {
    int m = blockIdx.x * blockDim.x + threadIdx.x;
    if (m >= M) return;
    float s = 0.0f;
    for (int n = 0; n < N; n++) s += ld(dout, (size_t)n * M + m);
    dbias[m] += s;
}

extern "C" void cuda_matmul_backward(bf16 *dinp, float *dw, float *dbias, const bf16 *dout, const bf16 *inp, const bf16 *w,
                                     int N, int K, int M) {
    if (dinp) lt_matmul(CUBLAS_OP_N, CUBLAS_OP_N, K, N, M, w, K, dout, M, dinp, CUDA_R_16BF, K, 1.0f, NULL);
    if (dw) lt_matmul(CUBLAS_OP_N, CUBLAS_OP_T, K, M, N, inp, K, dout, M, dw, CUDA_R_32F, K, 1.0f, NULL);
    if (dbias) {
        bias_grad_kernel<<<(M + 255) / 256, 256, 0, g_stream>>>(dbias, (const bf16_t *)dout, N, M);
        LAUNCH_CHECK();
    }
}
