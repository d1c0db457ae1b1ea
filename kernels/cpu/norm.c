// norm.c: LayerNorm (vision tower, merger) and RMSNorm (Qwen3), forward and backward (see ops.h).
#include <math.h>

#include "../ops.h"

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w, const float *b, int N,
                       int C, float eps) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *y = out + (size_t)n * C;
        double m = 0.0, v = 0.0;
        for (int c = 0; c < C; c++) m += x[c];
        m /= C;
        for (int c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
        float s = (float)(1.0 / sqrt(v / C + eps));  // biased variance, as PyTorch
        for (int c = 0; c < C; c++) y[c] = ((x[c] - (float)m) * s) * w[c] + b[c];
        mean[n] = (float)m;
        rstd[n] = s;
    }
}

void layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp, const float *w,
                        const float *mean, const float *rstd, int N, int C) {
    // dx = rstd · (dnorm − mean(dnorm) − norm · mean(dnorm · norm)), dnorm = dy · w
    if (dinp) {
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
            float *dx = dinp + (size_t)n * C;
            double a = 0.0, bsum = 0.0;
            for (int c = 0; c < C; c++) {
                float norm = (x[c] - mean[n]) * rstd[n], dn = dy[c] * w[c];
                a += dn;
                bsum += dn * norm;
            }
            float ma = (float)(a / C), mb = (float)(bsum / C);
            for (int c = 0; c < C; c++) {
                float norm = (x[c] - mean[n]) * rstd[n];
                dx[c] += rstd[n] * (dy[c] * w[c] - ma - norm * mb);
            }
        }
    }
    if (dw || db) {
#pragma omp parallel for schedule(static)
        for (int c = 0; c < C; c++) {
            float sw = 0.0f, sb = 0.0f;
            for (int n = 0; n < N; n++) {
                float dy = dout[(size_t)n * C + c];
                sw += dy * (inp[(size_t)n * C + c] - mean[n]) * rstd[n];
                sb += dy;
            }
            if (dw) dw[c] += sw;
            if (db) db[c] += sb;
        }
    }
}

void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int N, int C, float eps) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        double ss = 0.0;
        for (int c = 0; c < C; c++) ss += (double)x[c] * x[c];
        float r = (float)(1.0 / sqrt(ss / C + eps));
        // normalise first, then scale by the weight (HF Qwen3RMSNorm's order)
        for (int c = 0; c < C; c++) out[(size_t)n * C + c] = (x[c] * r) * w[c];
        rstd[n] = r;
    }
}

void rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w, const float *rstd,
                      int N, int C) {
    // y = x·r·w, r = (mean(x²) + eps)^-½:  dx = r·(dy·w) − x·r³/C · Σ dy·w·x
    if (dinp) {
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
            double dot = 0.0;
            for (int c = 0; c < C; c++) dot += (double)dy[c] * w[c] * x[c];
            float r = rstd[n], k = (float)(dot / C) * r * r * r;
            for (int c = 0; c < C; c++) dinp[(size_t)n * C + c] += r * dy[c] * w[c] - x[c] * k;
        }
    }
    if (dw) {
#pragma omp parallel for schedule(static)
        for (int c = 0; c < C; c++) {
            float s = 0.0f;
            for (int n = 0; n < N; n++) s += dout[(size_t)n * C + c] * inp[(size_t)n * C + c] * rstd[n];
            dw[c] += s;
        }
    }
}
