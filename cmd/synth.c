// synth: synthetic image datasets, evaluation sets and a tokenizer for the tiny pipeline.
#include <stdio.h>
#include <stdlib.h>

#include "../common/cli.h"
#include "../common/synth.h"
#include "../common/util.h"

int main(int argc, char **argv) {
    char *out = NULL;
    int64_t seed = 1234, scale = 1;
    int force = 0;
    const Opt opts[] = {
        {"out", OPT_STR, &out, "DIR", "Output directory."},
        {"seed", OPT_INT, &seed, "S", "Seed; the same seed and scale give the same bytes."},
        {"scale", OPT_INT, &scale, "N", "Multiplies the sample counts (3000 captions, 2000 conversations, 200 per eval set)."},
        {"force", OPT_FLAG, &force, NULL, "Replace DIR if it exists."},
    };
    const Cli cli = {
        .name = "synth",
        .summary = "write the synthetic datasets, evaluation sets and tokenizer of the tiny pipeline",
        .synopsis = "synth --out DIR [--seed S] [--scale N]",
        .description =
            "Draws scenes of one to three coloured shapes (circle, square, triangle, diamond; 8 colours) on a 3x3 grid "
            "over one of 4 backgrounds, at 8 sizes and aspect ratios, and writes them as JPEG (or PNG, one in five) "
            "in WebDataset shards with every text derived from the scene:\n"
            "DIR/captions: LLaVA-558K style caption samples (json with conversations: human prompt with <image>, gpt "
            "caption), for the alignment and mid-training stages.\n"
            "DIR/instruct: MultiMixQA style conversations of 1 to 3 turns (colour, shape, count, position, yes/no, "
            "multiple choice), for instruction tuning.\n"
            "DIR/eval/mme (two yes/no questions per image), eval/mmbench (A-D columns, letter answer), eval/ai2d "
            "(options list, index answer), eval/docvqa (answers list, ANLS), eval/chartqa (numbers): held-out sets "
            "drawn from their own seeds.\n"
            "DIR/tokenizer: a byte-level BPE (1000 regular ids) learnt from all of that text, with the Qwen special "
            "tokens from id 1000 on and a chat template, so the tiny pipeline downloads nothing.",
        .opts = opts,
        .nopts = sizeof opts / sizeof opts[0],
        .examples = "synth --out data && shards ls data/captions/captions-000000.tar | head -3",
    };
    char **pos;
    cli_parse(&cli, argc, argv, &pos);
    free(pos);
    cli_require(&cli, "out", out);
    if (scale < 1 || scale > 1000) die_input("--scale: expected 1 to 1000");
    double t0 = now_seconds();
    OutDir o;
    outdir_begin(&o, out, force);
    Err e;
    if (synth_run(o.tmp, (uint64_t)seed, (int)scale, &e)) die_internal("%s", e.msg);
    outdir_commit(&o);
    fprintf(stderr, "synth: wrote %s in %.1f s\n", out, now_seconds() - t0);
    return 0;
}
