// merge.h: builds the stage-0 LLaVA-OV-1.5 HF checkpoint from a RICE-ViT (MLCD format) and a Qwen3
// checkpoint, as upstream's ds/merge_model.py does (spec/model.md §7.3).
#pragma once
#include <stdint.h>

#include "dtype.h"

typedef struct {
    const char *vit, *llm, *out;
    const char *adapter;     // optional: initial merger weights
    const char *tokenizer;   // directory whose tokenizer/processor files are copied (default: llm)
    DType dtype;             // DT_BF16 or DT_F32
    uint64_t seed;           // merger initialisation
    int64_t image_token_id, video_token_id;  // < 0: from tokenizer.json, else the Qwen2-VL ids
    uint64_t max_shard;      // bytes per safetensors shard
    int force;
} MergeOptions;

// Dies with a one-line message and exit 2 on bad input; leaves no partial output.
void merge_run(const MergeOptions *o);

// Looks up an added token's id in DIR/tokenizer.json; -1 when the file or the token is absent.
int tokenizer_special_id(const char *dir, const char *content);
