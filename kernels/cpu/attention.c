// attention.c: exact softmax attention over packed sub-sequences, fp32, with GQA (see ops.h).
// Blocks of query rows go through sgemm (scores, then probabilities times values); only one block's
// scores exist at a time, and the log-sum-exp is saved so the backward rebuilds the probabilities
// without storing the T×T matrix. OpenBLAS runs single-threaded inside the OpenMP tasks.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "../ops.h"

static int max_len(const int32_t *cu, int nseq) {
    int m = 1;
    for (int s = 0; s < nseq; s++) if (cu[s + 1] - cu[s] > m) m = cu[s + 1] - cu[s];
    return m;
}

enum { BQ = 64 };  // query rows per block: the score block S[BQ, len] stays in cache

// S[m, n] = scale · Q[r0.., h] · K[start.., hk]ᵀ for one block, rows of Q and K strided by heads.
static void scores(float *S, const float *q, const float *k, int r0, int m, int start, int n, int h, int hk, int Hq,
                   int Hkv, int D, float scale) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, D, scale, q + ((size_t)r0 * Hq + h) * D, Hq * D,
                k + ((size_t)start * Hkv + hk) * D, Hkv * D, 0.0f, S, n);
}

// Keys a query row t sees: [start, t] causal, [start, stop) otherwise.
static int row_end(int t, int stop, int causal) { return causal ? t + 1 : stop; }

void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *cu_seqlens,
                       int nseq, int Hq, int Hkv, int D, int causal) {
    int L = max_len(cu_seqlens, nseq), rep = Hq / Hkv, nblk = (L + BQ - 1) / BQ;
    float scale = 1.0f / sqrtf((float)D);
    // A task = (sub-sequence, query head, block of BQ query rows); sgemm runs single-threaded inside.
#pragma omp parallel
    {
        float *S = malloc((size_t)BQ * L * sizeof(float));
#pragma omp for collapse(3) schedule(dynamic, 1)
        for (int s = 0; s < nseq; s++)
            for (int h = 0; h < Hq; h++)
                for (int b = 0; b < nblk; b++) {
                    int start = cu_seqlens[s], stop = cu_seqlens[s + 1], r0 = start + b * BQ;
                    if (r0 >= stop) continue;
                    int m = stop - r0 < BQ ? stop - r0 : BQ, n = row_end(r0 + m - 1, stop, causal) - start, hk = h / rep;
                    scores(S, q, k, r0, m, start, n, h, hk, Hq, Hkv, D, scale);
                    for (int i = 0; i < m; i++) {  // softmax of each row over the keys it sees
                        float *row = S + (size_t)i * n, mx = -INFINITY;
                        int len = row_end(r0 + i, stop, causal) - start;
                        for (int j = 0; j < len; j++) mx = row[j] > mx ? row[j] : mx;
                        double sum = 0.0;
                        for (int j = 0; j < len; j++) sum += (row[j] = expf(row[j] - mx));
                        float inv = (float)(1.0 / sum);
                        for (int j = 0; j < len; j++) row[j] *= inv;
                        for (int j = len; j < n; j++) row[j] = 0.0f;
                        lse[(size_t)(r0 + i) * Hq + h] = mx + (float)log(sum);
                    }
                    // O[r0.., h] = P · V[start.., hk]
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, D, n, 1.0f, S, n,
                                v + ((size_t)start * Hkv + hk) * D, Hkv * D, 0.0f, out + ((size_t)r0 * Hq + h) * D, Hq * D);
                }
        free(S);
    }
}

void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                        const float *q, const float *k, const float *v, const int32_t *cu_seqlens, int nseq, int Hq,
                        int Hkv, int D, int causal) {
    int L = max_len(cu_seqlens, nseq), rep = Hq / Hkv;
    float scale = 1.0f / sqrtf((float)D);
    // A task = (sub-sequence, kv head): it alone writes those rows of dk and dv, and of dq for the heads of
    // the group; it zeroes them first (the outputs are written whole). Per block of query rows: P = exp(S − lse)
    // rebuilt from the saved log-sum-exp, dP = dO·Vᵀ, dS = P∘(dP − rowsum(dO∘O))·scale, then dQ += dS·K,
    // dK += dSᵀ·Q, dV += Pᵀ·dO.
#pragma omp parallel
    {
        float *P = malloc((size_t)BQ * L * sizeof(float)), *dP = malloc((size_t)BQ * L * sizeof(float));
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (int s = 0; s < nseq; s++)
            for (int hk = 0; hk < Hkv; hk++) {
                int start = cu_seqlens[s], stop = cu_seqlens[s + 1];
                const float *ks = k + ((size_t)start * Hkv + hk) * D, *vs = v + ((size_t)start * Hkv + hk) * D;
                for (int t = start; t < stop; t++) {
                    if (dq) memset(dq + ((size_t)t * Hq + hk * rep) * D, 0, (size_t)rep * D * sizeof(float));  // the group's heads
                    if (dk) memset(dk + ((size_t)t * Hkv + hk) * D, 0, (size_t)D * sizeof(float));
                    if (dv) memset(dv + ((size_t)t * Hkv + hk) * D, 0, (size_t)D * sizeof(float));
                }
                for (int h = hk * rep; h < (hk + 1) * rep; h++)
                    for (int r0 = start; r0 < stop; r0 += BQ) {
                        int m = stop - r0 < BQ ? stop - r0 : BQ, n = row_end(r0 + m - 1, stop, causal) - start;
                        const float *qb = q + ((size_t)r0 * Hq + h) * D, *dob = dout + ((size_t)r0 * Hq + h) * D;
                        scores(P, q, k, r0, m, start, n, h, hk, Hq, Hkv, D, scale);
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, D, 1.0f, dob, Hq * D, vs, Hkv * D, 0.0f, dP, n);
                        for (int i = 0; i < m; i++) {
                            int t = r0 + i, len = row_end(t, stop, causal) - start;
                            const float *doi = dout + ((size_t)t * Hq + h) * D, *oi = out + ((size_t)t * Hq + h) * D;
                            float Di = 0.0f, l = lse[(size_t)t * Hq + h], *p = P + (size_t)i * n, *dp = dP + (size_t)i * n;
                            for (int e = 0; e < D; e++) Di += doi[e] * oi[e];  // Σ_j p_j·dp_j = dout·out
                            for (int j = 0; j < len; j++) {
                                p[j] = expf(p[j] - l);
                                dp[j] = p[j] * (dp[j] - Di) * scale;
                            }
                            for (int j = len; j < n; j++) p[j] = dp[j] = 0.0f;
                        }
                        if (dq)
                            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, D, n, 1.0f, dP, n, ks, Hkv * D, 1.0f,
                                        dq + ((size_t)r0 * Hq + h) * D, Hq * D);
                        if (dk)
                            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, D, m, 1.0f, dP, n, qb, Hq * D, 1.0f,
                                        dk + ((size_t)start * Hkv + hk) * D, Hkv * D);
                        if (dv)
                            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, D, m, 1.0f, P, n, dob, Hq * D, 1.0f,
                                        dv + ((size_t)start * Hkv + hk) * D, Hkv * D);
                    }
            }
        free(P);
        free(dP);
    }
}

void attention_decode(float *out, const float *q, const float *k, const float *v, int len, int Hq, int Hkv, int D) {
    int rep = Hq / Hkv;
    float scale = 1.0f / sqrtf((float)D);
#pragma omp parallel
    {
        float *p = malloc((size_t)len * sizeof(float));
#pragma omp for schedule(static)
        for (int h = 0; h < Hq; h++) {
            int hk = h / rep;
            const float *qi = q + (size_t)h * D;
            float mx = -INFINITY;
            for (int j = 0; j < len; j++) {
                const float *kj = k + ((size_t)j * Hkv + hk) * D;
                float d = 0.0f;
                for (int e = 0; e < D; e++) d += qi[e] * kj[e];
                p[j] = d * scale;
                if (p[j] > mx) mx = p[j];
            }
            double sum = 0.0;
            for (int j = 0; j < len; j++) sum += (p[j] = expf(p[j] - mx));
            float inv = (float)(1.0 / sum), *o = out + (size_t)h * D;
            memset(o, 0, (size_t)D * sizeof(float));
            for (int j = 0; j < len; j++) {
                const float *vj = v + ((size_t)j * Hkv + hk) * D;
                float w = p[j] * inv;
                for (int e = 0; e < D; e++) o[e] += w * vj[e];
            }
        }
        free(p);
    }
}
