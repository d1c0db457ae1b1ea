// rope.c: rotary position embedding, non-interleaved rotate_half form (see ops.h).
#include <math.h>
#include <stdlib.h>

#include "../ops.h"

// dst rows [T, H·D] (dst_ld floats apart) = the rotation of src's (src_ld apart); in place where they agree
static void rotate(float *dst, size_t dst_ld, const float *src, size_t src_ld, const float *angles, int T, int H, int D, float sign) {
    int half = D / 2;
#pragma omp parallel
    {
        float *cs = malloc((size_t)D * sizeof(float));  // cos, sin of one token, shared by its heads
#pragma omp for schedule(static)
        for (int t = 0; t < T; t++) {
            const float *a = angles + (size_t)t * half;
            for (int j = 0; j < half; j++) { cs[j] = cosf(a[j]); cs[half + j] = sign * sinf(a[j]); }
            for (int h = 0; h < H; h++) {
                const float *u = src + (size_t)t * src_ld + (size_t)h * D;
                float *v = dst + (size_t)t * dst_ld + (size_t)h * D;
                for (int j = 0; j < half; j++) {
                    float c = cs[j], s = cs[half + j], x0 = u[j], x1 = u[j + half];
                    v[j] = x0 * c - x1 * s;
                    v[j + half] = x1 * c + x0 * s;
                }
            }
        }
        free(cs);
    }
}

void rope_forward(float *x, const float *angles, int T, int H, int D) { rotate(x, (size_t)H * D, x, (size_t)H * D, angles, T, H, D, 1.0f); }
// The rotation is orthogonal: its gradient is the inverse rotation applied to the upstream gradient.
void rope_backward(float *dx, const float *angles, int T, int H, int D) {
    rotate(dx, (size_t)H * D, dx, (size_t)H * D, angles, T, H, D, -1.0f);
}
void rope_forward_strided(float *dst, size_t dst_ld, const float *src, size_t src_ld, const float *angles, int T, int H, int D) {
    rotate(dst, dst_ld, src, src_ld, angles, T, H, D, 1.0f);
}
void rope_backward_strided(float *dst, size_t dst_ld, const float *src, size_t src_ld, const float *angles, int T, int H, int D) {
    rotate(dst, dst_ld, src, src_ld, angles, T, H, D, -1.0f);
}

void rope_angles_1d(float *angles, const int32_t *cu_seqlens, int nseq, int D, double theta) {
    int half = D / 2;
    // fp32 inv_freq as HF computes it, the product formed in fp32 (never in bf16)
    float *inv_freq = malloc((size_t)half * sizeof(float));
    for (int i = 0; i < half; i++) inv_freq[i] = (float)(1.0 / pow(theta, (double)(2 * i) / D));
    for (int s = 0; s < nseq; s++)
        for (int t = cu_seqlens[s]; t < cu_seqlens[s + 1]; t++) {
            int pos = t - cu_seqlens[s];  // positions restart in every packed sub-sequence
            for (int i = 0; i < half; i++) angles[(size_t)t * half + i] = (float)pos * inv_freq[i];
        }
    free(inv_freq);
}
