// mkckpt: random source checkpoints (RICE-ViT in MLCD format + Qwen3) at a model preset.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/cli.h"
#include "../common/config.h"
#include "../common/presets.h"
#include "../common/source_ckpt.h"
#include "../common/util.h"

int main(int argc, char **argv) {
    char *preset = NULL, *out = NULL, *dtype = "bf16";
    int64_t seed = 1234, layers = -1, vit_layers = -1, llm_layers = -1;
    int rice_prefix = 0, force = 0;
    const Opt opts[] = {
        {"preset", OPT_STR, &preset, "NAME", "Model preset: tiny, 4b, 8b (data-specs/models/NAME.json), or a path to a preset file."},
        {"out", OPT_STR, &out, "DIR", "Output directory; receives DIR/vit and DIR/llm."},
        {"seed", OPT_INT, &seed, "S", "Seed of the random values; the same seed gives the same bytes."},
        {"layers", OPT_INT, &layers, "N", "Cut both the vision tower and the LLM to N layers (keeps the widths)."},
        {"vit-layers", OPT_INT, &vit_layers, "N", "Number of vision blocks (overrides --layers)."},
        {"llm-layers", OPT_INT, &llm_layers, "N", "Number of decoder layers (overrides --layers)."},
        {"dtype", OPT_STR, &dtype, "bf16|fp32", "Storage dtype of the tensors."},
        {"rice-prefix", OPT_FLAG, &rice_prefix, NULL,
         "Name the vision tensors with the vision_model. prefix, as the released RICE checkpoint does."},
        {"force", OPT_FLAG, &force, NULL, "Replace DIR if it exists."},
    };
    const Cli cli = {
        .name = "mkckpt",
        .summary = "write randomly initialised source checkpoints (RICE-ViT / MLCD and Qwen3)",
        .synopsis = "mkckpt --preset NAME --out DIR [--seed S] [--layers N] [--dtype bf16|fp32]",
        .description =
            "Writes the two checkpoints that the stage-0 merge starts from, in their upstream formats, with random "
            "values: DIR/vit is an MLCDVisionModel (config.json with model_type mlcd_vision_model; tensors "
            "embeddings.*, class_pos_emb, pre_layrnorm.*, encoder.layers.*, post_layernorm.*) and DIR/llm is a "
            "Qwen3ForCausalLM (config.json with model_type qwen3, generation_config.json, model.* tensors and "
            "lm_head.weight when the preset does not tie the embeddings).\n"
            "Weights are N(0, initializer_range), norm weights 1 + N(0, initializer_range) and biases "
            "N(0, initializer_range), so that every tensor is distinguishable. This lets the merge, the "
            "conversions, the tests and the tiny pipeline run without downloads.",
        .opts = opts,
        .nopts = sizeof opts / sizeof opts[0],
        .files = "data-specs/models/{tiny,4b,8b}.json: presets in the merged LLaVA-OV-1.5 config format; the directory "
                 "is found next to the executable or through $LLAVA_DATA_SPECS.",
        .examples = "mkckpt --preset tiny --out src\n"
                    "mkckpt --preset 4b --layers 2 --out src4b && merge --vit src4b/vit --llm src4b/llm --out stage0",
    };
    char **pos;
    cli_parse(&cli, argc, argv, &pos);
    free(pos);
    cli_require(&cli, "preset", preset);
    cli_require(&cli, "out", out);
    DType dt = !strcmp(dtype, "bf16") ? DT_BF16 : !strcmp(dtype, "fp32") ? DT_F32 : DT_INVALID;
    if (dt == DT_INVALID) die_input("--dtype: expected bf16 or fp32, got '%s'", dtype);

    char *path = data_spec_path("models", preset);
    if (!path) die_input("--preset: no preset '%s' (looked for data-specs/models/%s.json)", preset, preset);
    ModelConfig m;
    Err e;
    if (cfg_model_read(&m, path, &e)) die_input("%s", e.msg);
    if (!m.vision.present) die_input("%s: a preset needs both text_config and vision_config", path);
    if (vit_layers < 0) vit_layers = layers;
    if (llm_layers < 0) llm_layers = layers;
    if (vit_layers == 0 || llm_layers == 0 || vit_layers > 100000 || llm_layers > 100000)
        die_input("--layers: expected a positive layer count");
    if (vit_layers > 0) m.vision.depth = (int)vit_layers;
    if (llm_layers > 0) m.text.layers = (int)llm_layers;

    double t0 = now_seconds();
    OutDir o;
    outdir_begin(&o, out, force);
    if (write_source_checkpoints(&m, o.tmp, (uint64_t)seed, dt, rice_prefix, &e)) die_internal("%s", e.msg);
    outdir_commit(&o);
    fprintf(stderr, "mkckpt: wrote %s/vit (%d blocks) and %s/llm (%d layers) from %s in %.1f s\n", out, m.vision.depth, out,
            m.text.layers, path, now_seconds() - t0);
    free(path);
    return 0;
}
