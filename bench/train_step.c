// bench/train_step.c: training steps per second of a backend on one batch: forward, loss, full
// backward and an AdamW step, every tensor trainable (what `midtrain` does per micro-batch).
//   usage: train_step [--device cpu|cpu-bf16|cuda] [--recompute N] [--peak-tflops X] [--vision]
//                     [--zero-shards D] [--head-all] HF_DIR IN.safetensors STEPS
// After WARMUP untimed steps (2; they also size the activation arena) it times STEPS steps and prints
//   train_step: T tokens, I images, S steps, X ms/step, Y tokens/s, Z model TFLOP/s, MFU M%, peak P GiB, last loss L
// Model FLOPs are spec/performance.md's (flops.c); MFU is against --peak-tflops (the card's measured
// bf16 GEMM rate) when given; peak is the most backend memory held at once (not tracked on the cpu).
// --zero-shards D: the optimizer state (fp32 masters and moments) of rank 0 of D data-parallel ranks
// only, as ZeRO-1 leaves it (no communication: the steps update that shard), so that one GPU measures
// the memory each of D ranks needs.
// --vision: the vision tower and merger alone on the batch's images, forward and backward of
// ½·Σ image_embeds² (so the gradient handed to the backward is the embeddings themselves), no
// optimizer; its FLOPs are the tower's part of flops.c (spec/performance.md's ViT formula over the
// matmul parameters; the merger's ~1% is not counted).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/cli.h"
#include "../common/comm.h"
#include "../common/flops.h"
#include "../common/model.h"
#include "../common/model_internal.h"
#include "../common/optim.h"
#include "../common/safetensors.h"
#include "../common/util.h"

enum { WARMUP = 2 };

static const void *need(const StFile *f, const char *name) {
    const StTensor *t = st_find(f, name);
    if (!t) die_input("%s: no tensor '%s'", f->path, name);
    return t->data;
}

int main(int argc, char **argv) {
    util_set_prog(argv[0]);
    char *device = "cpu";
    int vision = 0, fp32_residual = 0, head_all = 0;
    int64_t recompute = 0, shards = 1;  // OPT_INT stores int64_t
    double peak_tflops = 0.0;
    const Opt opts[] = {
        {"device", OPT_STR, &device, "cpu", "Backend: cpu, cpu-bf16 or cuda."},
        {"recompute", OPT_INT, &recompute, "N", "Recompute the activations of the first N decoder layers in the backward."},
        {"peak-tflops", OPT_DOUBLE, &peak_tflops, "X", "MFU denominator in TFLOP/s (the card's measured bf16 GEMM rate)."},
        {"vision", OPT_FLAG, &vision, NULL, "The vision tower and merger alone, forward and backward, no optimizer."},
        {"fp32-residual-connection", OPT_FLAG, &fp32_residual, NULL, "The residual stream in fp32 (as the trainers' flag)."},
        {"zero-shards", OPT_INT, &shards, "D", "Hold the optimizer state of rank 0 of D ZeRO-1 ranks only (the memory of one of D GPUs)."},
        {"head-all", OPT_FLAG, &head_all, NULL, "The head and the cross-entropy over every position, as before the trainer skipped "
                                                "the positions whose label is -100 (to time the difference)."},
    };
    const Cli cli = {
        .name = "train_step",
        .summary = "time training steps of a backend on one batch (a benchmark)",
        .synopsis = "train_step [--device D] [--recompute N] [--peak-tflops X] [--vision] [--zero-shards D] [--fp32-residual-connection] "
                    "[--head-all] HF_DIR IN.safetensors STEPS",
        .description = "Two untimed warm-up steps, then STEPS timed ones; prints one line with tokens/s, model TFLOP/s, MFU "
                       "and peak backend memory (see the head of bench/train_step.c). With LLAVA_PROFILE=FILE on cuda, FILE gets "
                       "the device time of every op over the timed steps.",
        .opts = opts,
        .nopts = sizeof opts / sizeof opts[0],
        .min_pos = 3,
        .max_pos = 3,
    };
    char **pos;
    cli_parse(&cli, argc, argv, &pos);
    const char *model_dir = pos[0], *in_path = pos[1];
    int steps = atoi(pos[2]);
    free(pos);
    if (steps < 1) die_input("train_step: STEPS must be at least 1");
    if (shards < 1 || shards > 256) die_input("--zero-shards: expected 1 to 256 ranks, got %lld", (long long)shards);
    Err e;
    const Backend *be = backend_get(device, e.msg, sizeof e.msg);
    if (!be) die_input("--device %s: %s", device, e.msg);
    Model m;
    if (model_load(&m, model_dir, &e)) die_input("%s", e.msg);
    model_to_backend(&m, be);
    StFile f;
    if (st_open(&f, in_path, &e)) die_input("%s", e.msg);
    const StTensor *ids = st_find(&f, "input_ids"), *grid = st_find(&f, "grid_thw"), *cu = st_find(&f, "cu_seqlens"),
                   *px = st_find(&f, "pixel_values");
    ModelInput in = {0};
    if (!vision) in = (ModelInput){.ids = need(&f, "input_ids"), .B = 1, .T = (int)ids->shape[ids->ndim - 1]};
    if (cu && !vision) { in.cu_seqlens = (const int32_t *)cu->data; in.nseq = (int)cu->shape[0] - 1; }
    if (px) { in.pixels = (const float *)px->data; in.rows = px->shape[0]; in.grid = (const int32_t *)grid->data; in.nimg = (int)grid->shape[0]; }
    if (vision && !in.nimg) die_input("%s: --vision needs pixel_values and grid_thw", in_path);
    const int32_t *labels = vision ? NULL : need(&f, "labels");
    int *trainable = xcalloc((size_t)m.np, sizeof(int));
    for (int i = 0; i < m.np; i++) trainable[i] = !vision || m.ps[i].part != PART_TEXT;
    Adam opt;
    size_t lo, hi;  // rank 0's shard
    comm_shard_of(adam_layout_size(&m, trainable), (int)shards, 0, &lo, &hi);
    adam_init(&opt, &m, trainable, lo, hi);
    ModelWork w;
    model_work_init(&w, m.be);
    w.recompute = (int)recompute;
    w.fp32_residual = fp32_residual;
    w.logits_scratch = !head_all;  // (the trainer's setting: only the loss is read)
    AdamHyper h = {1e-4f, 0.9f, 0.999f, 1e-8f, 0.0f, 1.0f};
    ModelOutput out;
    float loss = 0.0f, sync;
    double t0 = 0.0;
    for (int s = 0; s < WARMUP + steps; s++) {
        if (s == WARMUP) {
            be->download(&sync, opt.flat_grad, sizeof sync);  // the stream drains before the clock starts
            backend_profile_reset();                            // LLAVA_PROFILE: the timed steps only
            t0 = now_seconds();
        }
        model_grads_stale(&m, &w, opt.grad);  // as the trainer: the backward overwrites the gradients
        if (vision) {
            VisionTrace vt;
            TextTrace tr;
            if (model_run_forward(&m, &w, &in, &out, &vt, &tr, NULL, 0, &e)) die_input("%s", e.msg);
            vision_backward(&m, &w, &vt, out.image_embeds, opt.grad, 1);  // d(½·Σ E²)/dE = E
        } else {
            if (model_loss_grads(&m, &w, &in, labels, 1.0f, opt.grad, &loss, &out, &e)) die_input("%s", e.msg);
            adam_step(&opt, &m, &h);
        }
    }
    be->download(&sync, opt.flat_grad, sizeof sync);
    double dt = (now_seconds() - t0) / steps;
    double flop = vision ? flops_vision_step(&m.cfg, &in) : flops_train_step(&m.cfg, &in);
    int64_t tokens = vision ? in.rows + in.nimg : in.T;
    printf("train_step: %lld tokens, %d images, %d steps, %.1f ms/step, %.0f tokens/s, %.1f model TFLOP/s, ", (long long)tokens,
           in.nimg, steps, dt * 1e3, tokens / dt, flop / dt / 1e12);
    if (peak_tflops > 0) printf("MFU %.1f%% of %.0f, ", 100.0 * flop / dt / 1e12 / peak_tflops, peak_tflops);
    if (be->memory_peak()) printf("peak %.1f GiB, ", be->memory_peak() / 1073741824.0);
    printf("%s %.4f\n", vision ? "vision only" : "last loss", loss);
    adam_free(&opt);
    model_work_free(&w);
    free(trainable);
    st_close(&f);
    model_free(&m);
    return 0;
}
