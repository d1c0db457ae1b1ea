// merge: stage-0 LLaVA-OV-1.5 checkpoint from a RICE-ViT and a Qwen3 checkpoint.
#include <stdlib.h>
#include <string.h>

#include "../common/cli.h"
#include "../common/merge.h"
#include "../common/util.h"

int main(int argc, char **argv) {
    char *vit = NULL, *llm = NULL, *out = NULL, *adapter = NULL, *tokenizer = NULL, *dtype = "bf16";
    int64_t seed = 42, image_id = -1, video_id = -1, max_shard = 5000000000LL;
    int force = 0;
    const Opt opts[] = {
        {"vit", OPT_STR, &vit, "DIR", "RICE-ViT checkpoint in MLCD format (names with or without the vision_model. prefix)."},
        {"llm", OPT_STR, &llm, "DIR", "Qwen3ForCausalLM checkpoint."},
        {"out", OPT_STR, &out, "DIR", "Output directory (must not exist unless --force)."},
        {"dtype", OPT_STR, &dtype, "bf16|fp32", "Storage dtype of the merged weights (fp32 -> bf16 rounds to nearest even)."},
        {"seed", OPT_INT, &seed, "S", "Seed of the merger's random initialisation."},
        {"adapter", OPT_STR, &adapter, "DIR",
         "Initial merger weights instead of the random ones: model.mm_projector.* (or visual.merger.*) tensors."},
        {"tokenizer", OPT_STR, &tokenizer, "DIR",
         "Directory whose tokenizer, processor and generation files are copied. Default: the --llm directory."},
        {"image-token-id", OPT_INT, &image_id, "ID",
         "Id of <|image_pad|>. Default: looked up in tokenizer.json, else 151655 (Qwen2-VL)."},
        {"video-token-id", OPT_INT, &video_id, "ID", "Id of <|video_pad|>. Default: from tokenizer.json, else 151656."},
        {"max-shard-size", OPT_SIZE, &max_shard, "SIZE", "Largest safetensors shard, as huggingface_hub (5GB)."},
        {"force", OPT_FLAG, &force, NULL, "Replace the output directory if it exists."},
    };
    const Cli cli = {
        .name = "merge",
        .summary = "build the stage-0 LLaVA-OV-1.5 checkpoint from a RICE-ViT and a Qwen3 LLM",
        .synopsis = "merge --vit DIR --llm DIR --out DIR [--dtype bf16|fp32] [--seed S] [--adapter DIR]",
        .description =
            "Does what upstream's ds/merge_model.py does. The vision tower is renamed from MLCD to the LLaVA-OV-1.5 "
            "names (visual.patch_embed.proj, visual.class_embedding, visual.class_pos_emb, visual.pre_layernorm, "
            "visual.blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}), with q, k and v fused into attn.qkv "
            "in that order; post_layernorm and rotary inv_freq buffers are dropped. The merger (visual.merger.ln_q, "
            "mlp.0, mlp.2; output width = the LLM hidden size) is initialised N(0, 0.02) with zero biases and a unit "
            "LayerNorm unless --adapter gives it. The LLM keeps its names; lm_head.weight is copied from the "
            "embedding when the LLM ties them, and is a separate tensor from then on.\n"
            "config.json is the merged Llavaonevision1_5Config with the real vocabulary size at the top level and "
            "vision_config.text_hidden_size set; tokenizer, generation and processor files are copied, and a "
            "Qwen2-VL preprocessor_config.json with temporal_patch_size 1 is written when none is found.\n"
            "Every input tensor is checked against the configs: a missing, unexpected or wrongly shaped tensor "
            "stops the merge before anything is written.",
        .opts = opts,
        .nopts = sizeof opts / sizeof opts[0],
        .examples = "mkckpt --preset 4b --out src && merge --vit src/vit --llm src/llm --out stage0",
    };
    char **pos;
    cli_parse(&cli, argc, argv, &pos);
    free(pos);
    cli_require(&cli, "vit", vit);
    cli_require(&cli, "llm", llm);
    cli_require(&cli, "out", out);
    MergeOptions o = {.vit = vit, .llm = llm, .out = out, .adapter = adapter, .tokenizer = tokenizer,
                      .seed = (uint64_t)seed, .image_token_id = image_id, .video_token_id = video_id,
                      .max_shard = (uint64_t)max_shard, .force = force};
    o.dtype = !strcmp(dtype, "bf16") ? DT_BF16 : !strcmp(dtype, "fp32") ? DT_F32 : DT_INVALID;
    if (o.dtype == DT_INVALID) die_input("--dtype: expected bf16 or fp32, got '%s'", dtype);
    if (max_shard <= 0) die_input("--max-shard-size: expected a positive size");
    merge_run(&o);
    return 0;
}
