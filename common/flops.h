// flops.h: model FLOPs of one training step (forward + backward, no recompute) as spec/performance.md
// §1 counts them: the LLM by Megatron's THD-aware formula (causal attention over the packed
// sub-sequences), plus the vision tower (bidirectional attention per image) and the merger by the
// same 6·(matmul parameters)·tokens + attention rule. MFU = these FLOPs per second / peak.
#pragma once
#include "model.h"

double flops_train_step(const ModelConfig *c, const ModelInput *in);
// The vision tower's share of that (patch embedding and blocks, without the merger).
double flops_vision_step(const ModelConfig *c, const ModelInput *in);
// A measured fp32 sgemm rate of this machine in FLOP/s (the CPU's MFU denominator): a few 1024³
// products on the threads OpenMP uses.
double flops_cpu_peak(void);
