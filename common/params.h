// params.h: the parameter table of the merged model — every tensor's HF name and shape, in the
// canonical order of spec/model.md §6 — derived from a ModelConfig. Loading, saving, conversion
// and (later) freezing and gradient dumps all walk this one list.
#pragma once
#include <stdint.h>

#include "config.h"

typedef enum {
    PART_VISION,   // visual.patch_embed / class_* / pre_layernorm / blocks.*
    PART_MERGER,   // visual.merger.*
    PART_TEXT,     // model.* and lm_head
} ParamPart;

typedef enum {  // what a tensor is, independent of its layer: drives conversion and initialisation
    K_PATCH_EMBED, K_CLS_EMB, K_CLS_POS, K_NORM_W, K_NORM_B, K_LINEAR_W, K_LINEAR_B,
    K_VIT_QKV_W, K_VIT_QKV_B,
    K_EMBED, K_HEAD, K_Q, K_K, K_V, K_GATE, K_UP,
} ParamKind;

typedef struct {
    char name[96];
    ParamPart part;
    ParamKind kind;
    int layer;          // block / decoder layer index, -1 for the others
    int ndim;
    int64_t shape[4];
} ParamSpec;

// Fills *out (caller frees) with the HF tensors of the model; returns their count.
// A config without vision gives the plain Qwen3 names (with lm_head unless tied).
int params_hf(const ModelConfig *m, ParamSpec **out);
int64_t param_numel(const ParamSpec *p);
// Where tensors start in the backend's copy of the weights and in the optimizer's flat vectors: at a
// multiple of PARAM_ALIGN elements (256 bytes in bf16), so that a run of consecutive trainable
// tensors is laid out alike in both and the weights can be gathered run by run.
enum { PARAM_ALIGN = 128 };
size_t param_padded(const ParamSpec *p);
