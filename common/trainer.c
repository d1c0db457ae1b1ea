// trainer.c: the training loop (see trainer.h). One iteration:
//   for each of M = GBS / world micro-batches: one packed sequence -> loss_m, grads += d(loss_m / M)
//   reduce-scatter the gradients over the ranks (mean; in buckets during the last backward when
//   overlapping), global norm, clip, AdamW on this rank's shard
//   (lr from the schedule at (iteration − 1)·GBS samples), gather the updated weights
// so the optimised objective is (1/(M·D)) Σ loss_{d,m} (spec/training.md §5).
#include "trainer.h"

#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm.h"
#include "convert.h"
#include "flops.h"
#include "grad_buckets.h"
#include "loader.h"
#include "model.h"
#include "optim.h"
#include "train_ckpt.h"

static volatile sig_atomic_t stop_requested;
static void on_stop_signal(int sig) { (void)sig; stop_requested = 1; }

// Sorted list of the *.tar shards of comma-separated directories.
static int list_shards(const char *dirs, char ***out, Err *e) {
    char *s = xstrdup(dirs), *save = NULL;
    char **list = NULL;
    int n = 0;
    for (char *d = strtok_r(s, ",", &save); d; d = strtok_r(NULL, ",", &save)) {
        DIR *dh = opendir(d);
        if (!dh) { err_set(e, "%s: cannot open the packed-data directory", d); free(s); return -1; }
        int before = n;
        for (struct dirent *de; (de = readdir(dh));)
            if (str_ends_with(de->d_name, ".tar")) {
                list = xrealloc(list, (size_t)(n + 1) * sizeof(char *));
                list[n++] = path_join(d, de->d_name);
            }
        closedir(dh);
        if (n == before) { err_set(e, "%s: no .tar shards (expected the output of pack)", d); free(s); return -1; }
    }
    free(s);
    for (int i = 1; i < n; i++)  // insertion sort: shard order must not depend on readdir
        for (int j = i; j > 0 && strcmp(list[j - 1], list[j]) > 0; j--) { char *t = list[j]; list[j] = list[j - 1]; list[j - 1] = t; }
    *out = list;
    return n;
}

static void format_eta(char *buf, size_t len, double s) {
    if (s < 0 || !isfinite(s)) s = 0;
    long t = (long)s;
    if (t >= 3600) snprintf(buf, len, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else snprintf(buf, len, "%ldm%02lds", t / 60, t % 60);
}

// The trainable set of the stage: its modules/prefixes minus the frozen prefixes.
static int trainable_set(const Model *m, const StagePreset *st, int *trainable, Err *e) {
    if (model_trainable(m, st->trainable, trainable, e)) return -1;
    if (!st->frozen[0]) return 0;
    int *frozen = xcalloc((size_t)m->np, sizeof(int));
    int rc = model_trainable(m, st->frozen, frozen, e);
    for (int i = 0; i < m->np && !rc; i++) if (frozen[i]) trainable[i] = 0;
    free(frozen);
    return rc;
}

int trainer_run(const TrainOptions *o) {
    const StagePreset *st = &o->stage;
    const char *P = o->program;
    Err e;
    if (st->micro_batch != 1) die_input("--micro-batch: %lld: a micro-batch is one packed sequence (1), as upstream with packing", (long long)st->micro_batch);
    if (st->global_batch < 1 || st->iterations < 1 || st->save_interval < 1) die_input("--global-batch, --iterations and --save-interval must be positive");

    // where to start: our own last committed iteration (resume), else the given checkpoint
    TrainState state = {0};
    int resume = ckpt_find_resume(o->save, &state.iteration, &e);
    if (resume < 0) die_input("%s", e.msg);
    const char *from = resume ? o->save : o->load;
    if (!from) die_input("--load: an mcore checkpoint to start from is required (nothing to resume in %s)", o->save);
    char iter_name[64];
    if (resume) mcore_iter_dirname(iter_name, sizeof iter_name, state.iteration);
    if (!dir_is_mcore(from)) die_input("%s: expected an mcore checkpoint (with %s); convert an HF checkpoint with hf2mcore", from, MCORE_TRACKER);
    const Backend *be = backend_get(o->device, e.msg, sizeof e.msg);
    if (!be) die_input("--device %s: %s", o->device, e.msg);
    Model m;
    if (model_load_iter(&m, from, resume ? iter_name : NULL, &e)) die_input("%s", e.msg);
    model_to_backend(&m, be);
    int *trainable = xcalloc((size_t)m.np, sizeof(int));
    if (trainable_set(&m, st, trainable, &e)) die_input("%s: %s", P, e.msg);
    size_t n = adam_layout_size(&m, trainable);
    int on_device = be != &backend_cpu && be != &backend_cpu_bf16;  // the vectors live in GPU memory
    Comm *comm = comm_init(on_device ? 0 : n, o->comm_timeout, &e);
    if (!comm) die_input("%s", e.msg);
    int rank = comm_rank(comm), world = comm_world(comm);
    // on the GPU the gradients and the updated weights go through NCCL (LLAVA_NCCL=1 takes that path with one rank too)
    int nccl = on_device && (world > 1 || getenv("LLAVA_NCCL"));
    if (nccl && comm_use_nccl(comm, &e)) die_input("rank %d: %s", rank, e.msg);
    if (st->global_batch % world) die_input("--global-batch %lld is not a multiple of the %d data-parallel ranks", (long long)st->global_batch, world);
    int M = (int)(st->global_batch / world);
    size_t lo, hi;
    comm_shard(comm, n, &lo, &hi);
    Adam opt;
    adam_init(&opt, &m, trainable, lo, hi);
    if (resume) {
        if (ckpt_load_state(o->save, state.iteration, o, &m, &opt, &state, world, &e)) die_input("%s", e.msg);
        adam_sync_backend(&opt, &m);  // the restored masters and moments into the backend's memory
    } else {
        state.world = world;
    }
    char **shards = NULL;
    int nshards = list_shards(o->data, &shards, &e);
    if (nshards < 0) die_input("--data: %s", e.msg);
    LoaderOptions lo_opt = {.shards = shards, .nshards = nshards, .rank = rank, .world = world, .seed = (uint64_t)o->seed,
                            .workers = (int)o->workers, .prefetch = 0, .start = state.cursor[rank]};
    Loader *loader = loader_open(&lo_opt, &e);
    if (!loader) die_input("%s", e.msg);
    // everything checked: only now does the output directory appear
    if (rank == 0 && ckpt_prepare_root(o->save, from, resume, state.iteration, &e)) die_input("%s", e.msg);

    int64_t ntrain = 0, nall = 0;
    for (int i = 0; i < m.np; i++) {
        nall += param_numel(&m.ps[i]);
        ntrain += trainable[i] ? param_numel(&m.ps[i]) : 0;
    }
    // gradient buckets reduced during the last micro-batch's backward (on by default where NCCL runs)
    int overlap = o->overlap_grad_reduce >= 0 ? o->overlap_grad_reduce : nccl;
    size_t bucket = o->ddp_bucket_size > 0 ? (size_t)o->ddp_bucket_size : 1000000 * (size_t)(world > 40 ? world : 40);
    GradBuckets buckets;
    grad_buckets_init(&buckets, comm, &opt, overlap ? bucket : 0, 1.0f / (float)world);
    char reduce_text[96];
    if (overlap) snprintf(reduce_text, sizeof reduce_text, "in %d buckets of >= %zu during the backward", buckets.nb, bucket);
    else snprintf(reduce_text, sizeof reduce_text, "after the backward");
    int recompute = o->recompute < m.cfg.text.layers ? (int)o->recompute : m.cfg.text.layers;  // decoder layers recomputed
    double peak = o->peak_tflops > 0 ? o->peak_tflops * 1e12 : be == &backend_cpu ? flops_cpu_peak() : 0.0;
    if (rank == 0)
        fprintf(stderr, "%s: %s %s iteration %lld; %lld of %lld parameters train (%s minus %s); %d rank%s x %d micro-batches; "
                "%lld packed sequences per rank per epoch; device %s, MFU against %.1f GFLOP/s; %d of %d decoder layers "
                "recomputed%s; gradients reduced %s\n",
                P, resume ? "resuming" : "starting from", from, (long long)state.iteration, (long long)ntrain,
                (long long)nall, st->trainable, st->frozen[0] ? st->frozen : "nothing", world, world > 1 ? "s" : "", M,
                (long long)loader_epoch_size(loader), be->name, peak / 1e9,
                recompute, m.cfg.text.layers, o->fp32_residual ? "; residual stream in fp32" : "", reduce_text);
    struct sigaction sa = {0};
    sa.sa_handler = on_stop_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    ModelWork work;
    model_work_init(&work, m.be);
    work.recompute = recompute;
    work.fp32_residual = o->fp32_residual;
    work.logits_scratch = 1;  // only the loss is read
    FILE *metrics = rank == 0 ? ckpt_open_metrics(o->save, state.iteration, &e) : NULL;
    if (rank == 0 && !metrics) die_input("%s", e.msg);
    int consecutive_skips = 0, rc = 0;
    double t_start = now_seconds();
    int64_t first_iter = state.iteration;
    while (state.iteration < st->iterations) {
        int64_t it = state.iteration + 1;
        double t0 = now_seconds(), lr = stage_lr(st, (it - 1) * st->global_batch);
        AdamHyper hyper = {(float)lr, (float)st->beta1, (float)st->beta2, (float)st->eps, (float)st->weight_decay, 1.0f};
        model_grads_stale(&m, &work, opt.grad);  // the first micro-batch's backward overwrites them: no zeroing pass
        double loss_sum = 0.0, flops = 0.0, tokens = 0.0;
        char keys[256] = "";
        for (int mb = 0; mb < M; mb++) {
            Batch b;
            if (loader_next(loader, &b, &e)) die_input("%s", e.msg);
            if (b.n > st->max_len) die_input("%s: packed sequence %s has %d tokens, more than --max-len %lld", P, b.key, b.n, (long long)st->max_len);
            ModelInput in = {.ids = b.ids, .B = 1, .T = b.n, .cu_seqlens = b.cu_seqlens, .nseq = b.nseq,
                             .pixels = b.pixels, .rows = b.rows, .grid = b.grid_thw, .nimg = b.nimg};
            ModelOutput out;
            float loss = 0.0f;
            int last = mb == M - 1;  // its backward completes the gradients: reduce them as they come
            if (last && overlap) grad_buckets_begin(&buckets);
            work.grads_final = last && overlap ? grad_buckets_final : NULL;
            work.grads_final_ctx = &buckets;
            if (model_loss_grads(&m, &work, &in, b.labels, 1.0f / (float)M, opt.grad, &loss, &out, &e))
                die_input("%s: packed sequence %s: %s", P, b.key, e.msg);
            loss_sum += loss;
            flops += flops_train_step(&m.cfg, &in);
            tokens += b.n;
            if (strlen(keys) + strlen(b.key) + 2 < sizeof keys) { if (keys[0]) strcat(keys, ","); strcat(keys, b.key); }
            batch_free(&b);
        }
        if (overlap ? grad_buckets_finish(&buckets, &e) : comm_reduce_scatter(comm, opt.flat_grad, n, 1.0f / (float)world, &e))
            die_internal("%s", e.msg);
        if (rank == 0 && overlap && it == first_iter + 1)
            fprintf(stderr, "%s: iteration %lld: %d of %d gradient buckets reduced during the backward\n", P, (long long)it,
                    buckets.overlapped, buckets.nb);
        double red[5] = {loss_sum, adam_shard_sq_norm(&opt), (double)stop_requested, flops, tokens};
        if (comm_allreduce_f64(comm, red, 5, &e)) die_internal("%s", e.msg);
        double loss = red[0] / (double)(M * world), norm = sqrt(red[1]);
        int stop = red[2] > 0, skipped = !isfinite(loss) || !isfinite(norm);
        if (skipped) {
            state.skipped++;
            consecutive_skips++;
            fprintf(stderr, "%s: rank %d: iteration %lld: non-finite %s (loss %g, grad norm %g) on batch %s; step skipped (%lld so far)\n",
                    P, rank, (long long)it, isfinite(loss) ? "gradient norm" : "loss", loss, norm, keys, (long long)state.skipped);
            if (consecutive_skips > o->max_skips) {
                fprintf(stderr, "%s: %d non-finite steps in a row (more than --max-skips %lld): stopping without saving\n", P,
                        consecutive_skips, (long long)o->max_skips);
                rc = EXIT_BAD_INPUT;
                break;
            }
        } else {
            consecutive_skips = 0;
            double coeff = st->clip_grad / (norm + 1e-6);
            if (st->clip_grad > 0 && coeff < 1.0) hyper.grad_scale = (float)coeff;  // applied as AdamW reads the gradients
            adam_step(&opt, &m, &hyper);
            // every rank's updated weights to every rank (the backend's copies: bf16 on GPUs)
            if (adam_gather_params(&opt, comm, &e)) die_internal("%s", e.msg);
        }
        state.iteration = it;
        state.consumed += st->global_batch;
        double dt = now_seconds() - t0, elapsed = now_seconds() - t_start;
        if (rank == 0) {
            double tps = red[4] / dt, tflops = red[3] / dt / 1e12, mfu = peak > 0 ? red[3] / dt / (peak * world) : 0;
            char eta[32];
            format_eta(eta, sizeof eta, elapsed / (double)(it - first_iter) * (double)(st->iterations - it));
            size_t mem = be->memory_peak();  // device memory held at most so far (0 on the cpu: not tracked)
            char mem_text[32] = "";
            if (mem) snprintf(mem_text, sizeof mem_text, " | peak %.1f GiB", mem / 1073741824.0);
            if (it % o->log_every == 0 || it == st->iterations || it == first_iter + 1)
                fprintf(stderr, "%s: iteration %lld/%lld | loss %.4f | grad norm %.3f | lr %.3e | %.0f tokens/s | %.4f TFLOP/s | MFU %.1f%%%s | ETA %s\n",
                        P, (long long)it, (long long)st->iterations, loss, norm, lr, tps, tflops, 100 * mfu, mem_text, eta);
            fprintf(metrics, "{\"iteration\": %lld, \"loss\": %.9g, \"grad_norm\": %.9g, \"lr\": %.9g, \"tokens\": %.0f, "
                    "\"tokens_per_s\": %.1f, \"tflops\": %.6f, \"mfu\": %.6f, \"skipped\": %d, \"consumed_samples\": %lld, \"seconds\": %.4f, "
                    "\"peak_memory_bytes\": %zu}\n",
                    (long long)it, loss, norm, lr, red[4], tps, tflops, mfu, skipped, (long long)state.consumed, dt, mem);
            fflush(metrics);
        }
        if (stop || it % st->save_interval == 0 || it == st->iterations) {
            state.adam_t = opt.t;
            state.world = world;
            int64_t cursor = loader_cursor(loader);
            adam_sync_host(&opt, &m, rank == 0);  // masters, moments (and on rank 0 the weights) to the host copies a checkpoint writes
            if (ckpt_save(o, &m, &opt, comm, &state, cursor, &e)) die_internal("%s", e.msg);
            if (rank == 0) fprintf(stderr, "%s: saved iteration %lld in %s\n", P, (long long)it, o->save);
        }
        if (stop) {
            if (rank == 0) fprintf(stderr, "%s: stopped by a signal after iteration %lld (saved)\n", P, (long long)it);
            break;
        }
    }
    if (metrics) fclose(metrics);
    loader_close(loader);
    for (int i = 0; i < nshards; i++) free(shards[i]);
    free(shards);
    grad_buckets_free(&buckets);
    model_work_free(&work);
    adam_free(&opt);
    free(trainable);
    comm_free(comm);
    model_free(&m);
    return rc;
}
