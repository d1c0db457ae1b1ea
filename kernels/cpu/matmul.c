// matmul.c: Linear layers through OpenBLAS sgemm (see ops.h).
#include <cblas.h>

#include "../ops.h"

void matmul_forward(float *out, const float *inp, const float *w, const float *bias, int N, int K, int M) {
    // out[N,M] = inp[N,K] · w[M,K]ᵀ, bias broadcast first so sgemm can accumulate onto it (beta = 1)
    if (bias) {
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++)
            for (int m = 0; m < M; m++) out[(size_t)n * M + m] = bias[m];
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, M, K, 1.0f, inp, K, w, K, bias ? 1.0f : 0.0f, out, M);
}

void matmul_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp, const float *w, int N,
                     int K, int M) {
    if (dinp) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, K, M, 1.0f, dout, M, w, K, 1.0f, dinp, K);
    if (dw) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, K, N, 1.0f, dout, M, inp, K, 1.0f, dw, K);
    if (dbias) {
#pragma omp parallel for schedule(static)
        for (int m = 0; m < M; m++) {
            float s = 0.0f;
            for (int n = 0; n < N; n++) s += dout[(size_t)n * M + m];
            dbias[m] += s;
        }
    }
}
