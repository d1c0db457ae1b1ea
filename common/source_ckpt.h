// source_ckpt.h: the two upstream checkpoints the stage-0 merge starts from (spec/model.md §7):
// a RICE-ViT in MLCD format and a Qwen3ForCausalLM; their tensor lists, and random ones for
// running everything without downloads.
#pragma once
#include <stdint.h>

#include "config.h"
#include "dtype.h"
#include "params.h"

#define RICE_PREFIX "vision_model."  // released RICE files carry it; MLCD save_pretrained does not

typedef struct {
    char name[128];   // MLCD name without the optional prefix
    ParamKind kind;
    int ndim;
    int64_t shape[4];
    int hf;           // index of the merged ParamSpec it becomes; -1 when the merge drops it
    int slot;         // q/k/v position inside the fused attn.qkv (0, 1, 2), else 0
} SrcSpec;

// MLCD tensors of the vision tower described by m (with post_layernorm), mapped onto the merged
// parameter table ps (from params_hf(m)).
int mlcd_params(const ModelConfig *m, const ParamSpec *ps, int np, SrcSpec **out);

// Random initial values for a tensor of the given kind: weights N(0, std); norm weights
// 1 + N(0, std) and biases N(0, std) (random rather than 1 and 0 so that a mixed-up name mapping
// shows in the tests); class_embedding N(0, D^-1/2); class_pos_emb N(0, 1) as MLCD initialises it.
void init_param(float *x, int64_t n, ParamKind kind, uint64_t stream, double std, int width);

// Writes DIR/vit (MLCD config.json + model.safetensors) and DIR/llm (Qwen3 config.json,
// generation_config.json, model.safetensors) for the model m, values seeded by seed.
int write_source_checkpoints(const ModelConfig *m, const char *dir, uint64_t seed, DType dt, int rice_prefix, Err *e);
