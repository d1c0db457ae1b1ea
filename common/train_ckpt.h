// train_ckpt.h: the trainer's checkpoints (spec/checkpoints.md §2, §8, §9 in safetensors form):
//   SAVE/latest_checkpointed_iteration.txt     the commit marker, written last
//   SAVE/hf/                                    config and tokenizer files of the model (from the input)
//   SAVE/iter_0000010/mp_rank_00/model.safetensors           weights, Megatron names, the input's dtype
//   SAVE/iter_0000010/mp_rank_00/optim_dp_000_of_002.safetensors  per data-parallel shard: fp32 master
//                                               weights "param" and Adam moments "exp_avg", "exp_avg_sq" of
//                                               that shard of the flat trainable vector (optim.h)
//   SAVE/iter_0000010/state.json                iteration, consumed samples, scheduler, Adam step, loader
//                                               cursor of every rank, the run's configuration
//   SAVE/metrics.jsonl                          one line per iteration
#pragma once
#include <stdio.h>

#include "comm.h"
#include "optim.h"
#include "trainer.h"

// 1 and *iteration when SAVE holds a committed iteration to resume, 0 when there is none.
int ckpt_find_resume(const char *save, int64_t *iteration, Err *e);
// Restores weights' fp32 masters, this rank's moments, the Adam step and the state; checks that the run
// is the same (world size, global batch, trainable set).
int ckpt_load_state(const char *save, int64_t iteration, const TrainOptions *o, Model *m, Adam *opt, TrainState *st,
                    int world, Err *e);
// Creates SAVE and SAVE/hf (from the input checkpoint's hf/) when they do not exist.
int ckpt_prepare_root(const char *save, const char *from, int resume, int64_t iteration, Err *e);
// SAVE/metrics.jsonl for appending, keeping only the lines up to `iteration` (a resumed run rewrites the rest).
FILE *ckpt_open_metrics(const char *save, int64_t iteration, Err *e);
// A collective save of st->iteration; commits by writing the tracker after every rank's files exist.
int ckpt_save(const TrainOptions *o, const Model *m, const Adam *opt, Comm *c, TrainState *st, int64_t my_cursor, Err *e);
