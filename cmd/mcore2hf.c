// mcore2hf: mcore checkpoint -> HF checkpoint.
#include <stdlib.h>

#include "../common/cli.h"
#include "../common/convert.h"
#include "../common/util.h"

int main(int argc, char **argv) {
    char *iter = NULL;
    int64_t max_shard = 5000000000LL;
    int force = 0;
    const Opt opts[] = {
        {"iter", OPT_STR, &iter, "K|release", "Iteration to export. Default: the tracker's (the last committed one)."},
        {"max-shard-size", OPT_SIZE, &max_shard, "SIZE", "Largest safetensors shard, as huggingface_hub (5GB)."},
        {"force", OPT_FLAG, &force, NULL, "Replace OUT if it exists."},
    };
    const Cli cli = {
        .name = "mcore2hf",
        .summary = "convert a Megatron-Core checkpoint back to a Hugging Face checkpoint",
        .synopsis = "mcore2hf IN OUT [--iter K]",
        .description =
            "The inverse of hf2mcore: merges every tensor- and pipeline-parallel shard of one iteration of IN, "
            "undoes the QKV and gate/up fusions, removes the vocabulary padding, and writes OUT with the released "
            "LLaVA-OV-1.5 tensor names (model.safetensors, or shards of at most --max-shard-size plus "
            "model.safetensors.index.json). The config, tokenizer and processor files kept in IN/hf are copied. "
            "A round trip HF -> mcore -> HF is bit-identical.\n"
            "Only committed checkpoints are read: the tracker names the iteration, and an iteration directory "
            "newer than the tracker is ignored unless asked for with --iter.",
        .opts = opts,
        .nopts = sizeof opts / sizeof opts[0],
        .min_pos = 2,
        .max_pos = 2,
        .examples = "mcore2hf instruct-out final-hf\nmcore2hf align-out hf-at-100 --iter 100",
    };
    char **pos;
    cli_parse(&cli, argc, argv, &pos);
    if (max_shard <= 0) die_input("--max-shard-size: expected a positive size");
    run_mcore2hf(pos[0], pos[1], iter, (uint64_t)max_shard, force);
    free(pos);
    return 0;
}
