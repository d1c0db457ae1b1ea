// hf2mcore: HF checkpoint (or mcore checkpoint) -> mcore release checkpoint at TP × PP.
#include <stdlib.h>

#include "../common/cli.h"
#include "../common/convert.h"
#include "../common/util.h"

int main(int argc, char **argv) {
    int64_t tp = 1, pp = 1;
    char *iter = NULL;
    int force = 0;
    const Opt opts[] = {
        {"tp", OPT_INT, &tp, "N", "Tensor-parallel size: must divide the attention heads, KV heads and FFN width."},
        {"pp", OPT_INT, &pp, "M", "Pipeline-parallel size: must divide the number of decoder layers."},
        {"iter", OPT_STR, &iter, "K|release", "With an mcore IN: the iteration to read. Default: the tracker's."},
        {"force", OPT_FLAG, &force, NULL, "Replace OUT if it exists."},
    };
    const Cli cli = {
        .name = "hf2mcore",
        .summary = "convert a checkpoint to the Megatron-Core layout (also the release step between stages)",
        .synopsis = "hf2mcore IN OUT [--tp N] [--pp M] [--iter K]",
        .description =
            "IN is a Hugging Face checkpoint (config.json + model.safetensors or an index of shards) or an mcore "
            "checkpoint written by this tool or by a training stage. OUT becomes an mcore checkpoint with tracker "
            "'release': OUT/latest_checkpointed_iteration.txt, OUT/release/mp_rank_XX[_YYY]/model.safetensors "
            "with Megatron's flat names, and OUT/hf/ holding IN's config, tokenizer and processor files.\n"
            "The LLM's q, k and v are fused into linear_qkv interleaved per GQA group ([q x rep, k, v] per group), "
            "the ViT's qkv re-interleaved per head, gate and up fused into linear_fc1 ([gate_r; up_r] per TP rank); "
            "column-parallel tensors are split on dim 0, row-parallel ones on dim 1, norms replicated; the "
            "embedding and output layer are padded to a multiple of 128 x TP rows by repeating the last row. The "
            "embedding, vision tower and adapter live on the first pipeline stage, the final norm and output "
            "layer on the last, decoder layers evenly in between, renumbered from 0 on each stage. The vision "
            "tower and adapter are replicated on every TP rank.\n"
            "With an mcore IN this is upstream's 'release' conversion: the model is re-sharded to the asked sizes "
            "and the optimizer, scheduler and iteration state are dropped, so the next stage starts fresh.\n"
            "Tensors are converted one group at a time: peak memory stays near the largest tensor group.",
        .opts = opts,
        .nopts = sizeof opts / sizeof opts[0],
        .min_pos = 2,
        .max_pos = 2,
        .examples = "hf2mcore stage0 stage0-mcore --tp 2 --pp 2\n"
                    "hf2mcore align-out stage1-release        (latest iteration of a training run)",
    };
    char **pos;
    cli_parse(&cli, argc, argv, &pos);
    if (tp < 1 || tp > 64 || pp < 1 || pp > 256) die_input("--tp/--pp: expected 1 <= tp <= 64 and 1 <= pp <= 256");
    Parallel par = {(int)tp, (int)pp};
    run_hf2mcore(pos[0], pos[1], par, iter, force);
    free(pos);
    return 0;
}
