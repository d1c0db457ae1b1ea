// config.h: model configurations as read from and written to config.json (spec/checkpoints.md §1.3,
// spec/model.md §4.1, §7.1): the MLCD vision config, the Qwen3 text config and the merged
// LLaVA-OV-1.5 config. Presets in data-specs/models/*.json use the merged format.
#pragma once
#include <jansson.h>

#include "util.h"

typedef struct {
    int present;            // 0 for a text-only (plain Qwen3) model
    int depth;              // MLCD num_hidden_layers / rice_vit depth
    int hidden;             // MLCD hidden_size / rice_vit embed_dim
    int intermediate;
    int heads;              // head_dim = hidden / heads
    int in_channels;
    int patch;              // 14
    int spatial_merge;      // 2
    int temporal_patch;     // 1
    int image_size;         // MLCD image_size (pretraining resolution; unused by the math)
    double layer_norm_eps;  // blocks, pre-LN (HF value) and merger ln_q
    double rope_theta;      // 2-D RoPE base, 10000
    double initializer_range;
    int text_hidden;        // merger output width = LLM hidden size (rice_vit text_hidden_size)
} VisionConfig;

typedef struct {
    int vocab;              // rows of embed_tokens / lm_head
    int hidden;
    int intermediate;
    int layers;
    int heads, kv_heads, head_dim;
    int max_pos;
    double rms_eps;
    double rope_theta;
    double initializer_range;
    int tie_word_embeddings;
    int bos_token_id, eos_token_id;   // -1 when absent
} TextConfig;

typedef struct {
    VisionConfig vision;
    TextConfig text;
    int image_token_id, video_token_id;  // -1 when absent (text-only)
    char dtype[16];                      // "bfloat16" / "float32"
} ModelConfig;

static inline int vision_head_dim(const VisionConfig *v) { return v->hidden / v->heads; }
// Width of one row of pixel_values: C · temporal_patch · patch² (588 for RICE-L/14).
static inline int vision_patch_dim(const VisionConfig *v) { return v->in_channels * v->temporal_patch * v->patch * v->patch; }

// Readers fill the struct from a parsed config and name `path` and the field in any error.
int cfg_vision_from_mlcd(VisionConfig *v, json_t *j, const char *path, Err *e);
int cfg_text_from_qwen3(TextConfig *t, json_t *j, const char *path, Err *e);
// A merged LLaVA-OV-1.5 config (model_type "llavaonevision1_5" or anything with text_config and
// vision_config), or a plain Qwen3 config (then vision.present = 0).
int cfg_model_from_json(ModelConfig *m, json_t *j, const char *path, Err *e);
// Reads and parses a JSON file; dies with exit 2 naming the file on bad JSON.
json_t *json_read_file(const char *path, Err *e);
int cfg_model_read(ModelConfig *m, const char *path, Err *e);
// Consistency rules the math relies on (divisibility, even grids, positive sizes).
int cfg_model_check(const ModelConfig *m, const char *path, Err *e);

// Writers return new JSON objects in the upstream layouts.
json_t *cfg_mlcd_json(const VisionConfig *v, const char *dtype);
json_t *cfg_qwen3_json(const TextConfig *t, const char *dtype);
// Merged config. `text_base` (may be NULL) is the source LLM config whose extra fields are kept,
// as upstream's text_config.update(llm_config.to_dict()) does.
json_t *cfg_llava_json(const ModelConfig *m, json_t *text_base);
// Writes a JSON object as a file (indent 2, trailing newline, temp + rename).
int json_write_file(const char *path, json_t *j, Err *e);
