// attention.c: exact softmax attention over packed sub-sequences, fp32, with GQA (see ops.h).
// One pass per query row keeps only that row's scores; the log-sum-exp is saved so the backward
// can rebuild the probabilities without storing the T×T matrix.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../ops.h"

static int max_len(const int32_t *cu, int nseq) {
    int m = 1;
    for (int s = 0; s < nseq; s++) if (cu[s + 1] - cu[s] > m) m = cu[s + 1] - cu[s];
    return m;
}

void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *cu_seqlens,
                       int nseq, int Hq, int Hkv, int D, int causal) {
    int L = max_len(cu_seqlens, nseq), rep = Hq / Hkv;
    float scale = 1.0f / sqrtf((float)D);
#pragma omp parallel
    {
        float *p = malloc((size_t)L * sizeof(float));
#pragma omp for collapse(2) schedule(dynamic, 8)
        for (int t = 0; t < cu_seqlens[nseq]; t++)
            for (int h = 0; h < Hq; h++) {
                int s = 0;
                while (cu_seqlens[s + 1] <= t) s++;
                int start = cu_seqlens[s], end = causal ? t + 1 : cu_seqlens[s + 1], hk = h / rep;
                const float *qi = q + ((size_t)t * Hq + h) * D;
                float mx = -INFINITY;
                for (int j = start; j < end; j++) {
                    const float *kj = k + ((size_t)j * Hkv + hk) * D;
                    float d = 0.0f;
                    for (int e = 0; e < D; e++) d += qi[e] * kj[e];
                    p[j - start] = d * scale;
                    if (p[j - start] > mx) mx = p[j - start];
                }
                double sum = 0.0;
                for (int j = start; j < end; j++) sum += (p[j - start] = expf(p[j - start] - mx));
                float inv = (float)(1.0 / sum), *o = out + ((size_t)t * Hq + h) * D;
                memset(o, 0, (size_t)D * sizeof(float));
                for (int j = start; j < end; j++) {
                    const float *vj = v + ((size_t)j * Hkv + hk) * D;
                    float w = p[j - start] * inv;
                    for (int e = 0; e < D; e++) o[e] += w * vj[e];
                }
                lse[(size_t)t * Hq + h] = mx + (float)log(sum);
            }
        free(p);
    }
}

void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                        const float *q, const float *k, const float *v, const int32_t *cu_seqlens, int nseq, int Hq,
                        int Hkv, int D, int causal) {
    int rep = Hq / Hkv;
    float scale = 1.0f / sqrtf((float)D);
    // A task = (sub-sequence, kv head): it alone writes those rows of dk and dv.
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int s = 0; s < nseq; s++)
        for (int hk = 0; hk < Hkv; hk++) {
            int start = cu_seqlens[s], stop = cu_seqlens[s + 1];
            for (int h = hk * rep; h < (hk + 1) * rep; h++)
                for (int t = start; t < stop; t++) {
                    const float *qi = q + ((size_t)t * Hq + h) * D, *doi = dout + ((size_t)t * Hq + h) * D,
                                *oi = out + ((size_t)t * Hq + h) * D;
                    float Di = 0.0f, l = lse[(size_t)t * Hq + h];
                    for (int e = 0; e < D; e++) Di += doi[e] * oi[e];  // Σ_j p_j·dp_j = dout·out
                    int end = causal ? t + 1 : stop;
                    for (int j = start; j < end; j++) {
                        const float *kj = k + ((size_t)j * Hkv + hk) * D, *vj = v + ((size_t)j * Hkv + hk) * D;
                        float sdot = 0.0f, dp = 0.0f;
                        for (int e = 0; e < D; e++) { sdot += qi[e] * kj[e]; dp += doi[e] * vj[e]; }
                        float p = expf(sdot * scale - l), ds = p * (dp - Di) * scale;
                        if (dv) { float *dvj = dv + ((size_t)j * Hkv + hk) * D; for (int e = 0; e < D; e++) dvj[e] += p * doi[e]; }
                        if (dk) { float *dkj = dk + ((size_t)j * Hkv + hk) * D; for (int e = 0; e < D; e++) dkj[e] += ds * qi[e]; }
                        if (dq) { float *dqi = dq + ((size_t)t * Hq + h) * D; for (int e = 0; e < D; e++) dqi[e] += ds * kj[e]; }
                    }
                }
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
