// mcore.h: the Megatron-Core checkpoint layout (spec/checkpoints.md §2-§6) as this project stores
// it: Megatron's tracker, iteration directories, mp_rank_XX[_YYY] folders and flat tensor names,
// with one model.safetensors per model-parallel rank instead of model_optim_rng.pt.
//
//   SAVE/latest_checkpointed_iteration.txt      "release" or the iteration in decimal
//   SAVE/release/ or SAVE/iter_0002500/
//       mp_rank_00/model.safetensors            PP == 1
//       mp_rank_00_001/model.safetensors        PP > 1
//   SAVE/hf/                                    config.json, tokenizer and processor files of the
//                                               HF checkpoint it came from (needed to go back)
#pragma once
#include <stdint.h>

#include "config.h"
#include "dtype.h"
#include "params.h"
#include "safetensors.h"

#define MCORE_TRACKER "latest_checkpointed_iteration.txt"
#define MCORE_HF_FILES "hf"
#define MCORE_VOCAB_DIVISOR 128  // Megatron make_vocab_size_divisible_by

typedef struct { int tp, pp; } Parallel;

// "mp_rank_03" (pp == 1) or "mp_rank_03_001".
void mcore_rank_dirname(char *buf, size_t len, int tp_rank, int pp_rank, int pp);
// "release" or "iter_0002500".
void mcore_iter_dirname(char *buf, size_t len, int64_t iteration /* < 0: release */);
// Reads the tracker: returns the iteration directory name in buf. Errors name the file.
int mcore_read_tracker(const char *root, char *buf, size_t len, Err *e);
// Writes the tracker last, by temp + rename (the commit marker, checkpoints.md §8).
int mcore_write_tracker(const char *root, const char *iter_name, Err *e);
// Finds the TP × PP grid from the mp_rank_* folders and checks it is complete.
int mcore_detect_parallel(const char *iter_dir, Parallel *p, Err *e);
// Padded vocabulary: ceil(V / (128·TP))·128·TP (checkpoints.md §6).
int64_t mcore_padded_vocab(int64_t vocab, int tp);
// Divisibility of heads, KV heads, FFN width and layers by the asked sizes.
int mcore_check_parallel(const ModelConfig *m, Parallel p, const char *what, Err *e);

// ---- HF <-> mcore tensor groups -----------------------------------------------------------------
// A group is the set of HF tensors that become one mcore tensor: q/k/v -> linear_qkv, gate/up ->
// linear_fc1, everything else one to one. "full" is the group's mcore tensor at TP = 1 without
// vocabulary padding; scatter/gather move between it and one TP rank's piece.

typedef enum { MAP_COPY, MAP_QKV_LLM, MAP_QKV_VIT, MAP_GATE_UP } MapKind;
typedef enum { SPLIT_REPL, SPLIT_COL, SPLIT_ROW, SPLIT_VOCAB } SplitKind;
typedef enum { STAGE_FIRST, STAGE_LAST, STAGE_LAYER } StageKind;

typedef struct {
    MapKind map;
    SplitKind split;
    StageKind stage;
    int layer;             // global decoder layer for STAGE_LAYER, else -1
    int n_hf;
    int hf[3];             // indices into the ParamSpec table, in fusion order
    char name[128];        // full mcore name, or the part after "language_model.decoder.layers.N."
    int ndim;
    int64_t shape[4];      // full shape (TP = 1, unpadded)
    // layout facts for the fused kinds
    int nkv, rep, head_dim;  // MAP_QKV_LLM: groups, queries per group, head dim; MAP_QKV_VIT: heads, -, head dim
} MGroup;

typedef struct {
    ModelConfig cfg;
    ParamSpec *ps;
    int np;
    MGroup *g;
    int ng;
} ModelMap;

void modelmap_init(ModelMap *mm, const ModelConfig *m);
void modelmap_free(ModelMap *mm);

int64_t mgroup_numel(const MGroup *g);
// Pipeline stage that holds the group.
int mgroup_stage(const MGroup *g, const ModelMap *mm, int pp);
// Megatron name on its stage (layer renumbered from 0 within the stage).
void mgroup_name(const MGroup *g, const ModelMap *mm, int pp, char *buf, size_t len);
// Shape of one TP rank's piece (vocabulary padded for SPLIT_VOCAB).
void mgroup_rank_shape(const MGroup *g, const ModelMap *mm, int tp, int64_t shape[4]);

// HF tensors (in g->hf order) -> full, and back. es = element size in bytes.
void mgroup_pack(const MGroup *g, const ModelMap *mm, const void *const *hf, size_t es, void *full);
void mgroup_unpack(const MGroup *g, const ModelMap *mm, const void *full, void *const *hf, size_t es);
// full -> piece of TP rank r, and back.
void mgroup_scatter(const MGroup *g, const ModelMap *mm, const void *full, int tp, int r, size_t es, void *piece);
void mgroup_gather(const MGroup *g, const ModelMap *mm, const void *piece, int tp, int r, size_t es, void *full);
