// loss.c: token embedding and the masked cross-entropy (see ops.h).
#include <math.h>
#include <string.h>

#include "../ops.h"

void embedding_forward(float *out, const int32_t *ids, const float *table, int T, int C) {
#pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) memcpy(out + (size_t)t * C, table + (size_t)ids[t] * C, (size_t)C * sizeof(float));
}

void embedding_backward(float *dtable, const float *dout, const int32_t *ids, int T, int C) {
    // serial over tokens: the same id may repeat; parallel over channels instead
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++)
        for (int t = 0; t < T; t++) dtable[(size_t)ids[t] * C + c] += dout[(size_t)t * C + c];
}

double cross_entropy_forward(const float *logits, const int32_t *targets, int T, int V, int64_t *count) {
    double total = 0.0;
    int64_t n = 0;
#pragma omp parallel for reduction(+ : total, n) schedule(static)
    for (int t = 0; t < T; t++) {
        if (targets[t] < 0) continue;
        const float *x = logits + (size_t)t * V;
        float mx = -INFINITY;
        for (int i = 0; i < V; i++) if (x[i] > mx) mx = x[i];
        double s = 0.0;
        for (int i = 0; i < V; i++) s += exp((double)(x[i] - mx));
        total += log(s) + mx - x[targets[t]];
        n++;
    }
    *count = n;
    return n ? total / (double)n : 0.0;
}

void cross_entropy_backward(float *dlogits, const float *logits, const int32_t *targets, int T, int V, float scale) {
#pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        float *d = dlogits + (size_t)t * V;
        if (targets[t] < 0) { memset(d, 0, (size_t)V * sizeof(float)); continue; }
        const float *x = logits + (size_t)t * V;
        float mx = -INFINITY;
        for (int i = 0; i < V; i++) if (x[i] > mx) mx = x[i];
        double s = 0.0;
        for (int i = 0; i < V; i++) s += exp((double)(x[i] - mx));
        float inv = (float)(1.0 / s);
        for (int i = 0; i < V; i++) d[i] = expf(x[i] - mx) * inv * scale;
        d[targets[t]] -= scale;
    }
}

void cross_entropy_rows(float *losses, const float *logits, const int32_t *targets, int T, int V) {
#pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        if (targets[t] < 0) { losses[t] = 0.0f; continue; }
        const float *x = logits + (size_t)t * V;
        float mx = -INFINITY;
        for (int i = 0; i < V; i++) if (x[i] > mx) mx = x[i];
        double s = 0.0;
        for (int i = 0; i < V; i++) s += exp((double)(x[i] - mx));
        losses[t] = (float)(log(s) + mx - x[targets[t]]);
    }
}
