// stage.h: a training stage preset (data-specs/stages/*.json): what trains and the optimiser,
// schedule and batch settings of the upstream recipe (spec/training.md §2). Every field can be
// overridden by the training programs' flags.
#pragma once
#include <stdint.h>

#include "util.h"

typedef struct {
    char stage[32];
    char trainable[256];       // model_trainable() set: modules or HF name prefixes
    char frozen[256];          // prefixes taken out of it (the CLS buffers Megatron never trains)
    double lr, min_lr, warmup_fraction, beta1, beta2, eps, weight_decay, clip_grad;
    int64_t global_batch, micro_batch, iterations, max_len, save_interval;
} StagePreset;

// Reads the preset; every field must be present with the right type. Errors name the file and field.
int stage_read(StagePreset *s, const char *path, Err *e);

// Megatron's learning rate after n consumed samples (spec/training.md §3): linear warmup from 0
// over warmup_fraction · decay samples, then cosine from lr to min_lr until decay = iterations · GBS.
double stage_lr(const StagePreset *s, int64_t n);
