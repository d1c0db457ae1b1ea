// adamw.c: AdamW in PyTorch's order of operations (decay, moments, bias-corrected update).
#include <math.h>

#include "../ops.h"

void adamw_step(float *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1, float beta2,
                float eps, float weight_decay, float grad_scale, int64_t t) {
    float bc1 = 1.0f - powf(beta1, (float)t), bc2 = 1.0f - powf(beta2, (float)t);
    float step = lr / bc1, bc2_sqrt = sqrtf(bc2);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = grad[i] * grad_scale;
        param[i] *= 1.0f - lr * weight_decay;           // decoupled weight decay
        m[i] += (1.0f - beta1) * (g - m[i]);             // m.lerp_(g, 1 − β1)
        v[i] = beta2 * v[i] + (1.0f - beta2) * g * g;
        param[i] -= step * m[i] / (sqrtf(v[i]) / bc2_sqrt + eps);
    }
}
