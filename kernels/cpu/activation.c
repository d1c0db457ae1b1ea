// activation.c: exact GELU and SwiGLU (see ops.h).
#include <math.h>

#include "../ops.h"

#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

void gelu_forward(float *out, const float *inp, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = 0.5f * inp[i] * (1.0f + erff(inp[i] * INV_SQRT2));
}

void gelu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
    // d/dx [x·Φ(x)] = Φ(x) + x·φ(x)
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        dinp[i] = dout[i] * (0.5f * (1.0f + erff(x * INV_SQRT2)) + x * INV_SQRT_2PI * expf(-0.5f * x * x));
    }
}

void swiglu_forward(float *out, const float *gu, int N, int F) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        for (int i = 0; i < F; i++) {
            float g = gu[(size_t)n * 2 * F + i], u = gu[(size_t)n * 2 * F + F + i];
            out[(size_t)n * F + i] = g / (1.0f + expf(-g)) * u;  // silu(g) · u
        }
}

void swiglu_backward(float *dgu, const float *dout, const float *gu, int N, int F) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        for (int i = 0; i < F; i++) {
            float g = gu[(size_t)n * 2 * F + i], u = gu[(size_t)n * 2 * F + F + i], d = dout[(size_t)n * F + i];
            float sg = 1.0f / (1.0f + expf(-g));
            dgu[(size_t)n * 2 * F + i] = d * u * sg * (1.0f + g * (1.0f - sg));
            dgu[(size_t)n * 2 * F + F + i] = d * g * sg;
        }
}
