// trainer_cli.c: the command line shared by align, midtrain and instruct: the stage preset first,
// then every flag that was given over it.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "presets.h"
#include "trainer.h"

static const char *summary_of(const char *p) {
    if (!strcmp(p, "align")) return "stage 1: train the adapter (merger) on caption data, vision tower and LLM frozen";
    if (!strcmp(p, "midtrain")) return "stage 1.5: train the whole model on packed caption data";
    return "stage 2: instruction-tune the whole model on packed conversations";
}

int trainer_main(const char *program, int argc, char **argv) {
    util_set_prog(program);
    TrainOptions o = {.program = program, .seed = 1234, .workers = 2, .keep = 0, .max_skips = 5, .comm_timeout = 600, .log_every = 1};
    char *stage = (char *)program, *trainable = NULL, *frozen = NULL, *device = "cpu";
    double lr = NAN, min_lr = NAN, warmup = NAN, beta1 = NAN, beta2 = NAN, eps = NAN, wd = NAN, clip = NAN;
    int overlap_on = 0, overlap_off = 0;
    int64_t gbs = -1, mbs = -1, iters = -1, max_len = -1, save_interval = -1, log_every = 1;
    const Opt opts[] = {
        {"load", OPT_STR, &o.load, "DIR", "mcore checkpoint to start from (its tracker's iteration: release after hf2mcore)."},
        {"data", OPT_STR, &o.data, "DIR[,DIR]", "Packed shards (the output of pack); every *.tar in the directories."},
        {"save", OPT_STR, &o.save, "DIR", "Output: mcore iteration checkpoints, hf/, metrics.jsonl. If it already holds a "
                                          "committed iteration, training resumes from it (and --load is not read)."},
        {"stage", OPT_STR, &stage, "NAME|FILE", "Stage preset: data-specs/stages/NAME.json (default: the program's own)."},
        {"trainable", OPT_STR, &trainable, "SET", "Override: modules (vision, merger, llm, all) or HF name prefixes, comma-separated."},
        {"frozen", OPT_STR, &frozen, "PREFIXES", "Override: HF name prefixes taken out of the trainable set (\"\" for none)."},
        {"lr", OPT_DOUBLE, &lr, "X", "Override: peak learning rate."},
        {"min-lr", OPT_DOUBLE, &min_lr, "X", "Override: learning rate at the end of the cosine decay."},
        {"warmup-fraction", OPT_DOUBLE, &warmup, "X", "Override: linear warmup over this fraction of the samples."},
        {"beta1", OPT_DOUBLE, &beta1, "X", "Override: Adam beta1."},
        {"beta2", OPT_DOUBLE, &beta2, "X", "Override: Adam beta2."},
        {"eps", OPT_DOUBLE, &eps, "X", "Override: Adam epsilon (added after the square root)."},
        {"weight-decay", OPT_DOUBLE, &wd, "X", "Override: decoupled weight decay (weights with ndim >= 2 only)."},
        {"clip-grad", OPT_DOUBLE, &clip, "X", "Override: global gradient-norm clipping threshold (0: none)."},
        {"global-batch", OPT_INT, &gbs, "N", "Override: packed sequences per optimizer step, all ranks together."},
        {"micro-batch", OPT_INT, &mbs, "N", "Override: packed sequences per forward pass (1, as upstream with packing)."},
        {"iterations", OPT_INT, &iters, "N", "Override: optimizer steps (also the length of the LR decay)."},
        {"max-len", OPT_INT, &max_len, "N", "Override: longest packed sequence accepted."},
        {"save-interval", OPT_INT, &save_interval, "N", "Override: save every N iterations (and at the end)."},
        {"keep", OPT_INT, &o.keep, "N", "Keep only the newest N iteration checkpoints (0: all)."},
        {"seed", OPT_INT, &o.seed, "S", "Seed of the data order."},
        {"workers", OPT_INT, &o.workers, "N", "Image decoding threads of the loader."},
        {"max-skips", OPT_INT, &o.max_skips, "N", "Stop after more than N non-finite steps in a row."},
        {"comm-timeout", OPT_DOUBLE, &o.comm_timeout, "SECONDS", "Give up waiting for the other ranks after this long (at start-up, in PMI2's fences and NCCL's set-up, too)."},
        {"overlap-grad-reduce", OPT_FLAG, &overlap_on, NULL, "Reduce-scatter the gradients in buckets while the backward "
                                                              "goes on, each bucket as soon as the backward has finished its tensors "
                                                              "(the default on --device cuda with NCCL; on the cpu's shared memory "
                                                              "it gives the same bits as one reduction after the backward)."},
        {"no-overlap-grad-reduce", OPT_FLAG, &overlap_off, NULL, "One reduce-scatter of all gradients after the backward."},
        {"ddp-bucket-size", OPT_INT, &o.ddp_bucket_size, "N", "Elements per gradient bucket, at least (cut at tensor starts; "
                                                             "0: Megatron's max(40000000, 1000000 x ranks))."},
        {"log-every", OPT_INT, &log_every, "N", "Progress line every N iterations (metrics.jsonl has every one)."},
        {"device", OPT_STR, &device, "cpu", "Backend: cpu (fp32), cpu-bf16 (bf16 storage emulated) or cuda (bf16 weights and "
                                            "activations, fp32 masters, moments and gradients; under srun each rank takes the GPU of its local rank, "
                                            "gradients and masters go through NCCL)."},
        {"recompute", OPT_INT, &o.recompute, "N", "Activation recomputation: keep only the input of the first N decoder layers "
                                                   "and run their forward again in the backward (N >= the layer count: every layer, "
                                                   "which is what Megatron's --recompute-granularity full --recompute-method uniform "
                                                   "does for any --recompute-num-layers). Losses do not change; memory falls by N-1 "
                                                   "layers of activations for one more forward of N layers."},
        {"fp32-residual-connection", OPT_FLAG, &o.fp32_residual, NULL,
         "Keep the residual stream (each layer's input and sum, and their gradients) in fp32 on a bf16 device, as Megatron's "
         "flag of that name: closer to fp32 training (the errors of a bf16 stream add up over the layers) for 4 bytes more "
         "per token and hidden unit in each layer whose activations are kept. No effect on cpu."},
        {"peak-tflops", OPT_DOUBLE, &o.peak_tflops, "X", "MFU denominator in TFLOP/s (default: a measured sgemm rate on the cpu; "
                                                          "none on other devices)."},
    };
    char synopsis[160];
    snprintf(synopsis, sizeof synopsis, "%s --load MCORE_DIR --data PACKED_DIR --save DIR [--stage NAME] [overrides]", program);
    const Cli cli = {
        .name = program,
        .summary = summary_of(program),
        .synopsis = synopsis,
        .description =
            "Trains the model on packed sequences with AdamW as the upstream recipe does (spec/training.md): a stage preset "
            "from data-specs/stages/ gives the trainable set, learning rate, cosine schedule with linear warmup (Megatron's, "
            "in samples; the first iteration runs at lr 0), betas, eps, weight decay on weights with ndim >= 2, gradient "
            "clipping, global batch and iterations; any flag overrides it. One micro-batch is one packed sequence; the loss "
            "of each is the mean over its supervised tokens, and an optimizer step averages them over the micro-batches "
            "and ranks.\n"
            "Under `srun --mpi=pmi2 -n N` the N ranks split every global batch, reduce gradients and shard the optimizer "
            "(ZeRO-1: each rank keeps the fp32 masters and Adam moments of its shard only, and sends its updated "
            "weights to the others): on the cpu through the shared memory of one node; on --device cuda through NCCL, "
            "also across nodes (one GPU per rank, the gradients reduced in buckets while the backward runs, the NCCL id "
            "through PMI2). A rank that dies stops the others within seconds.\n"
            "A progress line per iteration goes to stderr (loss, gradient norm, lr, tokens/s, model TFLOP/s, MFU against a "
            "measured sgemm rate or --peak-tflops, peak device memory on the GPU, ETA) and a JSON line to SAVE/metrics.jsonl. A non-finite loss or gradient norm is reported "
            "with the batch and the step is skipped.\n"
            "Checkpoints are mcore iterations: mp_rank_00/model.safetensors, one optimizer shard per rank, state.json, "
            "committed by the tracker written last. SIGTERM, SIGUSR1 (Slurm --signal) or SIGINT save at the next step "
            "boundary and exit 0; started again with the same --save, training continues bit for bit.",
        .opts = opts,
        .nopts = sizeof opts / sizeof opts[0],
        .files = "data-specs/stages/{align,midtrain,instruct}.json  the upstream 4B quick-start recipes\n"
                 "LLAVA_OVERLAP_OPT=1  (cuda) the optimizer's updates on a second stream under the next forward (same results)\n"
                 "LLAVA_FLASH=N, FB or tune  (cuda) the attention kernels' version (README; 9 and tune: not bit-reproducible)\n"
                 "LLAVA_GEMM=tune  (cuda) each product's cuBLASLt algorithm timed on first use (not bit-reproducible)\n"
                 "LLAVA_TUNE_FILE=PATH  (cuda) the tuners' picks kept from run to run: with it, tuned runs repeat bit for bit\n"
                 "LLAVA_SAVE_PAUSE=SECONDS  (tests) wait this long before committing a checkpoint",
        .examples = "align --load runs/stage0-mcore --data runs/packed/captions --save runs/align\n"
                    "srun --mpi=pmi2 -n 2 midtrain --load runs/align-release --data packed --save runs/mid --global-batch 16",
    };
    char **pos;
    cli_parse(&cli, argc, argv, &pos);
    free(pos);
    cli_require(&cli, "data", o.data);
    cli_require(&cli, "save", o.save);
    o.device = device;
    if (overlap_on && overlap_off) die_input("--overlap-grad-reduce and --no-overlap-grad-reduce contradict each other");
    o.overlap_grad_reduce = overlap_on ? 1 : overlap_off ? 0 : -1;
    if (o.ddp_bucket_size < 0) die_input("--ddp-bucket-size: expected an element count >= 0, got %lld", (long long)o.ddp_bucket_size);
    if (o.recompute < 0) die_input("--recompute: expected a layer count >= 0, got %lld", (long long)o.recompute);
    char *path = data_spec_path("stages", stage);
    if (!path) die_input("--stage: no preset '%s' (data-specs/stages/%s.json)", stage, stage);
    Err e;
    if (stage_read(&o.stage, path, &e)) die_input("%s", e.msg);
    free(path);
    StagePreset *s = &o.stage;
    if (trainable) snprintf(s->trainable, sizeof s->trainable, "%s", trainable);
    if (frozen) snprintf(s->frozen, sizeof s->frozen, "%s", frozen);
    double *dd[] = {&s->lr, &s->min_lr, &s->warmup_fraction, &s->beta1, &s->beta2, &s->eps, &s->weight_decay, &s->clip_grad};
    double dv[] = {lr, min_lr, warmup, beta1, beta2, eps, wd, clip};
    for (int i = 0; i < 8; i++) if (!isnan(dv[i])) *dd[i] = dv[i];
    int64_t *ii[] = {&s->global_batch, &s->micro_batch, &s->iterations, &s->max_len, &s->save_interval};
    int64_t iv[] = {gbs, mbs, iters, max_len, save_interval};
    for (int i = 0; i < 5; i++) if (iv[i] >= 0) *ii[i] = iv[i];
    o.log_every = log_every > 0 ? (int)log_every : 1;
    return trainer_run(&o);
}
