// optim.h: AdamW over the trainable tensors of a model (spec/training.md §4): decoupled weight
// decay on tensors with ndim >= 2 only, bias correction, eps added after the square root. Moments
// exist for trainable tensors only (a frozen tensor costs no optimizer memory); gradients live in
// one flat buffer laid out like the model's, trainable tensors only.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
} AdamHyper;

typedef struct {
    int np;
    float **grad;        // [np]: gradient of tensor i, NULL when frozen (what model_loss_grads takes)
    float **m, **v;      // [np]: moments, NULL when frozen
    float *flat_grad, *flat_m, *flat_v;
    size_t n;            // trainable elements (with 64-float alignment padding)
    int64_t t;           // optimizer steps taken
} Adam;

// trainable[i] != 0 for the tensors that train (model_trainable).
void adam_init(Adam *o, const Model *m, const int *trainable);
void adam_free(Adam *o);
void adam_zero_grad(Adam *o);
// Global L2 norm of the gradients (double accumulation).
double adam_grad_norm(const Adam *o, const Model *m);
// One step with hyper-parameters h on every trainable tensor; gradients are left as they are.
void adam_step(Adam *o, Model *m, const AdamHyper *h);
