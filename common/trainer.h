// trainer.h: the one trainer behind align, midtrain and instruct (spec/training.md). A stage preset
// says what trains and how; the trainer reads an mcore checkpoint and packed shards, takes AdamW
// steps with gradient accumulation over micro-batches (one packed sequence each) and data-parallel
// ranks (ZeRO-1 through comm.h), and writes mcore iteration checkpoints that it can resume from
// bit for bit.
#pragma once
#include <stdint.h>

#include "stage.h"

typedef struct {
    const char *program;       // "align", "midtrain", "instruct": the default preset and log prefix
    StagePreset stage;
    char *load, *data, *save;  // mcore checkpoint, packed shard directories (comma-separated), output root
    const char *device;        // cpu, cpu-bf16 or cuda
    double peak_tflops;        // MFU denominator; 0: a measured sgemm rate on the cpu, none elsewhere
    int64_t seed, workers, keep, max_skips;
    int64_t recompute;         // decoder layers (from the first) recomputed in the backward; >= the layer count: all
    int fp32_residual;         // --fp32-residual-connection: the residual stream in fp32 on a bf16 backend
    double comm_timeout;
    int overlap_grad_reduce;   // 1: reduce gradients in buckets during the backward; 0: after it; -1: on with NCCL
    int64_t ddp_bucket_size;   // elements per bucket (0: Megatron's max(40M, 1M · ranks))
    int log_every;             // progress line every N iterations (metrics.jsonl gets all)
} TrainOptions;

// Parses the program's command line (preset, then flags over it) and runs; returns the exit code.
int trainer_main(const char *program, int argc, char **argv);
// Runs a parsed configuration: 0 when done or stopped by a signal after saving, 2 on bad input.
int trainer_run(const TrainOptions *o);

// ---- checkpoints (train_ckpt.c) ----
typedef struct {
    int64_t iteration, consumed, skipped, adam_t;
    int world;
    int64_t cursor[256];       // loader cursor of each data-parallel rank (comm.c allows 256 ranks per node)
} TrainState;
