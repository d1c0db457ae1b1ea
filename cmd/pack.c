// pack: offline padding-free packing of raw WebDataset shards into training sequences.
#include <stdlib.h>

#include "../common/cli.h"
#include "../common/pack.h"
#include "../common/util.h"

static int64_t env_int(const char *name, int64_t def) {
    const char *v = getenv(name);
    char *end;
    if (!v || !*v) return def;
    long long x = strtoll(v, &end, 10);
    if (*end) die_input("$%s: expected an integer, got '%s'", name, v);
    return x;
}

int main(int argc, char **argv) {
    char *tokenizer = NULL, *out = NULL, *policy = "auto";
    int64_t max_len = 8192, min_pixels = 3136, max_pixels = 2560000, per_shard = 1000, threads = 2;
    int64_t shard_index = env_int("SLURM_ARRAY_TASK_ID", 0), num_shards = env_int("SLURM_ARRAY_TASK_COUNT", 1);
    const Opt opts[] = {
        {"tokenizer", OPT_STR, &tokenizer, "DIR", "Directory with tokenizer.json (the stage-0 checkpoint or synth's tokenizer/)."},
        {"out", OPT_STR, &out, "DIR", "Output directory for the packed shards and report.json."},
        {"max-len", OPT_INT, &max_len, "N", "Tokens per packed sequence at most; longer samples are dropped (over_length)."},
        {"min-pixels", OPT_INT, &min_pixels, "N", "smart_resize lower bound (the stage-0 processor's 3136)."},
        {"max-pixels", OPT_INT, &max_pixels, "N", "smart_resize upper bound (the stage-0 processor's 2560000)."},
        {"per-shard", OPT_INT, &per_shard, "N", "Packed sequences per output shard."},
        {"threads", OPT_INT, &threads, "N", "Worker threads; the output is byte-identical for any value."},
        {"policy", OPT_STR, &policy, "auto|caption|vqa|multiturn",
         "Label policy. auto: caption pairs (image + txt) -> caption, LLaVA conversations -> vqa, messages and "
         "MultiMixQA texts -> multiturn."},
        {"shard-index", OPT_INT, &shard_index, "I", "This job's slice: samples whose global index is I modulo K. Default: $SLURM_ARRAY_TASK_ID or 0."},
        {"num-shards", OPT_INT, &num_shards, "K", "Number of slices. Default: $SLURM_ARRAY_TASK_COUNT or 1."},
    };
    const Cli cli = {
        .name = "pack",
        .summary = "render, measure and bin-pack raw samples into padding-free training sequences",
        .synopsis = "pack --tokenizer DIR --out DIR [--max-len N] [--shard-index I --num-shards K] [--threads N] SHARD...",
        .description =
            "Reads raw WebDataset shards (LLaVA-558K style json with conversations plus one image, MultiMixQA json with "
            "texts/media/name plus its images, or caption pairs image + txt), renders each sample with the training "
            "chat template, computes its exact token count (image tokens from header-only image sizes and "
            "smart_resize, no decoding), and packs the samples best-fit-decreasing into sequences of at most "
            "--max-len tokens.\n"
            "Each packed sequence is one sample of the output shards: ids.i32, labels.i32 (-100 where no loss), "
            "cu_seqlens.i32 (sub-sample boundaries), json (sample keys, images with their resized height and width) "
            "and the original bytes of every image as img{k}.{ext}. Shards get .tar.idx files and, for a single "
            "slice, .nv-meta.\n"
            "OUT/report.json (report.sIofK.json for a slice) gives samples_in, samples_packed, dropped by reason "
            "(missing_image, bad_image_header, malformed_json, empty_conversation, image_placeholder_mismatch, "
            "over_length, no_text_member), sequences, tokens, fill_ratio = tokens / (sequences x max_len) and "
            "padding_compression = samples packed per sequence (the factor by which padding every sample to max_len "
            "would have grown the data). A damaged input shard stops the reading at the damage: what came before is "
            "packed and reported, the error names the shard and the byte offset, and the exit status is 2.",
        .opts = opts,
        .nopts = sizeof opts / sizeof opts[0],
        .min_pos = 1,
        .max_pos = 1 << 20,
        .examples = "pack --tokenizer data/tokenizer --out packed --max-len 2048 data/captions/*.tar\n"
                    "sbatch --array=0-7 --wrap 'pack --tokenizer tok --out packed --max-len 8192 raw/*.tar'",
    };
    char **pos;
    int n = cli_parse(&cli, argc, argv, &pos);
    cli_require(&cli, "tokenizer", tokenizer);
    cli_require(&cli, "out", out);
    if (per_shard < 1 || threads < 1 || threads > 256 || min_pixels < 1 || max_pixels < min_pixels)
        die_input("--per-shard, --threads, --min-pixels, --max-pixels: expected positive values and min <= max");
    PackOptions o = {.tokenizer = tokenizer, .out = out, .max_len = max_len, .min_pixels = min_pixels,
                     .max_pixels = max_pixels, .per_shard = per_shard, .shard_index = (int)shard_index,
                     .num_shards = (int)num_shards, .threads = (int)threads, .policy = policy, .inputs = pos, .ninputs = n};
    int rc = pack_run(&o);
    free(pos);
    return rc;
}
