// flops.c: see flops.h.
#include "flops.h"

#include <cblas.h>
#include <stdlib.h>

#include "util.h"

double flops_train_step(const ModelConfig *c, const ModelInput *in) {
    const TextConfig *t = &c->text;
    double h = t->hidden, f = t->intermediate, q = (double)t->heads * t->head_dim, kv = (double)t->kv_heads * t->head_dim;
    double T = (double)(in->B ? in->B : 1) * in->T, S2 = 0.0;
    int nseq = in->cu_seqlens ? in->nseq : (in->B ? in->B : 1);
    for (int s = 0; s < nseq; s++) {
        double len = in->cu_seqlens ? in->cu_seqlens[s + 1] - in->cu_seqlens[s] : in->T;
        S2 += len * len;
    }
    double F = T * (6 * h * f * 3 * t->layers + 6 * t->layers * (h * (q + 2 * kv) + q * h) + 6 * h * t->vocab) + S2 * t->layers * 6 * q;
    if (in->nimg && c->vision.present) {
        double D = c->vision.hidden;
        F += flops_vision_step(c, in);
        F += 6 * ((double)in->rows / 4) * (16 * D * D + 4 * D * h);  // merger
    }
    return F;
}

double flops_vision_step(const ModelConfig *c, const ModelInput *in) {
    const VisionConfig *v = &c->vision;
    double D = v->hidden, Fv = v->intermediate, S = (double)in->rows + in->nimg, Sq = 0.0;
    for (int i = 0; i < in->nimg; i++) {
        double n = (double)in->grid[3 * i + 1] * in->grid[3 * i + 2] + 1;
        Sq += n * n;
    }
    double per_block = D * 3 * D + D * D + 2 * D * Fv;                // qkv, proj, fc1, fc2
    return 6 * S * (per_block * v->depth) + 12 * Sq * D * v->depth     // bidirectional: no halving
           + 6 * (double)in->rows * vision_patch_dim(v) * D;           // patch embedding
}

double flops_cpu_peak(void) {
    enum { N = 1024 };
    float *a = xcalloc((size_t)N * N, sizeof(float)), *b = xcalloc((size_t)N * N, sizeof(float)),
          *c = xcalloc((size_t)N * N, sizeof(float));
    for (size_t i = 0; i < (size_t)N * N; i++) a[i] = b[i] = (float)(i % 7) * 0.1f;
    double best = 0.0;
    for (int r = 0; r < 4; r++) {
        double t0 = now_seconds();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, N, N, 1.0f, a, N, b, N, 0.0f, c, N);
        double dt = now_seconds() - t0, rate = 2.0 * N * N * N / dt;
        if (r > 0 && rate > best) best = rate;  // the first call warms up
    }
    free(a); free(b); free(c);
    return best;
}
