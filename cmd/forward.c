// forward: one forward pass (and optionally the backward, a few AdamW steps or greedy generation)
// of a checkpoint on given inputs, for conformance checks against reference implementations.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/backend_info.h"
#include "../common/cli.h"
#include "../common/convert.h"
#include "../common/model.h"
#include "../common/optim.h"
#include "../common/safetensors.h"
#include "../common/util.h"

typedef struct {  // the tensors forward writes, in order
    char name[160];
    DType dt;
    int ndim;
    int64_t shape[4];
    const void *data;
} OutTensor;

typedef struct {
    OutTensor *t;
    int n, cap;
} OutList;

static void out_add(OutList *o, const char *name, DType dt, int ndim, const int64_t *shape, const void *data) {
    if (o->n == o->cap) o->t = xrealloc(o->t, (size_t)(o->cap = o->cap ? 2 * o->cap : 16) * sizeof(OutTensor));
    OutTensor *t = &o->t[o->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dt = dt;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof(int64_t));
    t->data = data;
}

static void out_write(const OutList *o, const char *path) {
    Err e;
    StWriter *w = stw_new_file(path, &e);
    if (!w) die_input("--out: %s", e.msg);
    for (int i = 0; i < o->n; i++) stw_declare(w, o->t[i].name, o->t[i].dt, o->t[i].ndim, o->t[i].shape, &e);
    if (stw_open(w, &e)) die_input("%s", e.msg);
    for (int i = 0; i < o->n; i++)
        if (stw_write(w, o->t[i].name, o->t[i].data, &e)) die_input("%s", e.msg);
    if (stw_finish(w, &e)) die_input("%s", e.msg);
    stw_free(w);
}

static const StTensor *get(const StFile *f, const char *name, DType dt) {
    const StTensor *t = st_find(f, name);
    if (t && t->dtype != dt) die_input("%s: tensor '%s' has dtype %s, expected %s", f->path, name, dtype_name(t->dtype), dtype_name(dt));
    return t;
}

int main(int argc, char **argv) {
    char *model_dir = NULL, *in_path = NULL, *out_path = NULL, *device = "cpu", *trainable_spec = "all", *grad_names = "hf";
    int want_grads = 0, no_cache = 0, fp32_residual = 0, no_logits = 0;
    int64_t steps = 0, generate = 0, eos = -1, recompute = 0;  // OPT_INT stores int64_t
    double lr = 1e-3, wd = 0.0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
    const Opt opts[] = {
        {"model", OPT_STR, &model_dir, "DIR", "HF checkpoint (merged LLaVA-OV-1.5, or a plain Qwen3)."},
        {"in", OPT_STR, &in_path, "FILE", "Inputs (safetensors): input_ids I32 [T] or [B,T]; optional labels (same shape), "
                                          "cu_seqlens I32 (one row only), pixel_values F32 [N, 588], grid_thw I32 [n_img, 3]."},
        {"out", OPT_STR, &out_path, "FILE", "Outputs (a safetensors file)."},
        {"device", OPT_STR, &device, "cpu", "Backend: cpu (fp32, the reference), cpu-bf16 (bf16 storage emulated on the cpu) "
                                            "or cuda (bf16 weights and activations, fp32 statistics and gradients)."},
        {"recompute", OPT_INT, &recompute, "N", "Keep only the input of the first N decoder layers and run their forward again "
                                                "in the backward (N >= the layer count: all). The outputs do not change; a line on "
                                                "stderr gives the activation memory of the step."},
        {"fp32-residual-connection", OPT_FLAG, &fp32_residual, NULL,
         "Keep the residual stream (each layer's input and sum, and their gradients) in fp32 on a bf16 backend, as Megatron's "
         "flag of that name and PyTorch autocast do; the norms' outputs and the products stay bf16. No effect on cpu."},
        {"grads", OPT_FLAG, &want_grads, NULL,
         "Also write grad.<HF name> of the loss for every trainable tensor; needs labels."},
        {"no-logits", OPT_FLAG, &no_logits, NULL,
         "With --grads: leave the logits out of OUT, and run the head and the cross-entropy over the counted positions "
         "(labels != -100) only, as the trainer and --steps do. The loss and the gradients are the same up to rounding."},
        {"grad-names", OPT_STR, &grad_names, "hf",
         "With --grads: hf writes grad.<HF name>; mcore writes grad.<Megatron name> in the layout of a TP 1, PP 1 release "
         "checkpoint (fused linear_qkv and linear_fc1, padded vocabulary), through the same map as hf2mcore."},
        {"trainable", OPT_STR, &trainable_spec, "SET",
         "Tensors that get gradients: modules vision, merger, llm, all, or HF name prefixes, comma-separated (default all). "
         "The others are frozen: nothing is computed for them."},
        {"steps", OPT_INT, &steps, "N", "Take N AdamW steps on this one batch and write losses F32 [N] (the loss before each step)."},
        {"lr", OPT_DOUBLE, &lr, "1e-3", "AdamW learning rate for --steps."},
        {"weight-decay", OPT_DOUBLE, &wd, "0", "AdamW decoupled weight decay (tensors with ndim >= 2 only)."},
        {"beta1", OPT_DOUBLE, &beta1, "0.9", "AdamW beta1."},
        {"beta2", OPT_DOUBLE, &beta2, "0.999", "AdamW beta2."},
        {"eps", OPT_DOUBLE, &eps, "1e-8", "AdamW epsilon (added after the square root)."},
        {"generate", OPT_INT, &generate, "N", "Greedy-decode up to N tokens after the prompt with the KV cache; writes generated I32 [n] "
                                             "and generated_margin F32 [n] (each chosen logit minus the runner-up, over the RMS of its logits)."},
        {"no-cache", OPT_FLAG, &no_cache, NULL, "With --generate: run the full forward over the whole sequence for every token instead."},
        {"eos", OPT_INT, &eos, "ID", "With --generate: stop after this token."},
    };
    const Cli cli = {
        .name = "forward",
        .summary = "run the model on given inputs and write its outputs (a conformance probe)",
        .synopsis = "forward --model HF_DIR --in IN.safetensors --out OUT.safetensors [--grads] [--steps N] [--generate N]",
        .description =
            "Loads the checkpoint in fp32 and runs the LLaVA-OV-1.5 graph: patch embedding, per-image CLS, pre-LayerNorm, "
            "the vision blocks with 2-D RoPE and attention block-diagonal per image, CLS removal, the merger, image "
            "embeddings scattered into the <|image_pad|> positions in order, the Qwen3 decoder (RMSNorm, QK-norm, GQA, "
            "RoPE with positions restarting at every cu_seqlens boundary and at every row, SwiGLU), final norm and head.\n"
            "OUT receives logits F32 [B*T, vocab]; loss F32 [1] when labels are given (the mean cross-entropy of "
            "position t against labels[t+1] of the same row over labels != -100, all rows together, as Hugging Face "
            "shifts); vision_hidden F32 [N, Dv] (last block, CLS rows removed) and image_embeds F32 [N/4, H]. Without "
            "input_ids only the vision tower and merger run.\n"
            "With --grads, grad.<name> for each trainable tensor; the backward goes no lower than the lowest trainable "
            "layer, and a line on stderr says how many decoder layers and vision blocks it went through. With --steps, "
            "the losses of N AdamW steps on the batch (the final weights are not saved; the head runs over the counted "
            "positions only, as in the trainer). With --generate, the greedy "
            "continuation of a one-row prompt.",
        .opts = opts,
        .nopts = sizeof opts / sizeof opts[0],
    };
    char **pos;
    cli_parse(&cli, argc, argv, &pos);
    free(pos);
    cli_require(&cli, "model", model_dir);
    cli_require(&cli, "in", in_path);
    cli_require(&cli, "out", out_path);
    if (!str_ends_with(out_path, ".safetensors")) die_input("--out: %s: expected a file name ending in .safetensors", out_path);
    if (no_logits && !want_grads) die_input("--no-logits: only with --grads");
    if (strcmp(grad_names, "hf") && strcmp(grad_names, "mcore")) die_input("--grad-names: expected hf or mcore, got '%s'", grad_names);
    if (steps < 0 || generate < 0 || steps > 1000000 || generate > 1000000) die_input("--steps and --generate take a count from 0 to 1000000");
    if (recompute < 0 || recompute > 1000000) die_input("--recompute: expected a layer count from 0 to 1000000, got %lld", (long long)recompute);
    Err e;
    const Backend *be = backend_get(device, e.msg, sizeof e.msg);
    if (!be) die_input("--device %s: %s", device, e.msg);
    Model m;
    if (model_load(&m, model_dir, &e)) die_input("%s", e.msg);
    model_to_backend(&m, be);
    StFile f;
    if (st_open(&f, in_path, &e)) die_input("%s", e.msg);
    const StTensor *ids = get(&f, "input_ids", DT_I32), *labels = get(&f, "labels", DT_I32), *cu = get(&f, "cu_seqlens", DT_I32),
                   *px = get(&f, "pixel_values", DT_F32), *grid = get(&f, "grid_thw", DT_I32);
    ModelInput in = {0};
    if (ids) {
        if (ids->ndim != 1 && ids->ndim != 2) die_input("%s: input_ids: expected [T] or [B, T]", in_path);
        in.B = ids->ndim == 2 ? (int)ids->shape[0] : 1;
        in.T = (int)ids->shape[ids->ndim - 1];
        in.ids = (const int32_t *)ids->data;
    }
    if (labels && (!ids || labels->ndim != ids->ndim || shape_numel(labels->ndim, labels->shape) != (int64_t)in.B * in.T))
        die_input("%s: labels: expected the shape of input_ids", in_path);
    if (cu) { in.cu_seqlens = (const int32_t *)cu->data; in.nseq = (int)shape_numel(cu->ndim, cu->shape) - 1; }
    if (px) {
        if (px->ndim != 2 || px->shape[1] != vision_patch_dim(&m.cfg.vision)) die_input("%s: pixel_values: expected [N, %d]", in_path, vision_patch_dim(&m.cfg.vision));
        in.pixels = (const float *)px->data;
        in.rows = px->shape[0];
    }
    if (grid) {
        if (grid->ndim != 2 || grid->shape[1] != 3) die_input("%s: grid_thw: expected [n_img, 3]", in_path);
        in.grid = (const int32_t *)grid->data;
        in.nimg = (int)grid->shape[0];
    }
    if (!!px != !!grid) die_input("%s: pixel_values and grid_thw go together", in_path);
    if ((want_grads || steps) && !labels) die_input("%s: --grads and --steps need input_ids and labels", in_path);
    const int32_t *lab = labels ? (const int32_t *)labels->data : NULL;

    int *trainable = xcalloc((size_t)m.np, sizeof(int));
    if (model_trainable(&m, trainable_spec, trainable, &e)) die_input("--trainable: %s: %s", model_dir, e.msg);
    ModelMap mm;
    modelmap_init(&mm, &m.cfg);
    for (int gi = 0; want_grads && !strcmp(grad_names, "mcore") && gi < mm.ng; gi++) {
        int given = 0;  // a fused mcore tensor needs all of its HF tensors
        for (int k = 0; k < mm.g[gi].n_hf; k++) given += trainable[mm.g[gi].hf[k]] != 0;
        if (given && given != mm.g[gi].n_hf) {
            char name[192];
            mgroup_name(&mm.g[gi], &mm, 1, name, sizeof name);
            die_input("--grad-names mcore: --trainable %s: mcore tensor '%s' fuses %d HF tensors but only %d are trainable",
                      trainable_spec, name, mm.g[gi].n_hf, given);
        }
    }
    Adam opt;
    adam_init(&opt, &m, trainable, 0, adam_layout_size(&m, trainable));
    ModelWork work;
    model_work_init(&work, m.be);
    work.recompute = (int)recompute;
    work.fp32_residual = fp32_residual;
    // gradients live in the backend's memory; they come back to the host for writing
    float *host_grad = xcalloc(opt.n + 1, sizeof(float)), **grads = xcalloc((size_t)m.np, sizeof(float *));
    for (int i = 0; i < m.np; i++) if (opt.grad[i]) grads[i] = host_grad + (opt.grad[i] - opt.flat_grad);
    float *host_logits = NULL, *host_hidden = NULL, *host_embeds = NULL;
    ModelOutput out;
    OutList ol = {0};
    int V = m.cfg.text.vocab;
    float loss = 0.0f, *losses = xcalloc((size_t)steps + 1, sizeof(float));
    int32_t *gen = xcalloc((size_t)generate + 1, sizeof(int32_t));
    float *margin = xcalloc((size_t)generate + 1, sizeof(float));
    AdamHyper hyper = {(float)lr, (float)beta1, (float)beta2, (float)eps, (float)wd, 1.0f};  // no clipping
    work.logits_scratch = 1;  // the steps read only the loss (as the trainer)
    for (int s = 0; s < steps; s++) {  // the weights move; the outputs below are those after the last step
        model_grads_stale(&m, &work, opt.grad);  // (as the trainer: overwritten by the backward, not zeroed)
        if (model_loss_grads(&m, &work, &in, lab, 1.0f, opt.grad, &losses[s], &out, &e)) die_input("%s: %s", in_path, e.msg);
        adam_step(&opt, &m, &hyper);
    }
    if (steps) out_add(&ol, "losses", DT_F32, 1, (int64_t[]){steps}, losses);
    int ngen = 0, n_mcore = 0;
    float **mcore_grads = NULL;
    e.msg[0] = 0;
    if (generate) {
        if (no_cache) {  // reference path: the whole sequence again for every new token
            int32_t *seq = xmalloc((size_t)(in.T + generate) * sizeof(int32_t));
            memcpy(seq, in.ids, (size_t)in.T * sizeof(int32_t));
            float *row = xmalloc((size_t)V * sizeof(float));
            ModelInput g = in;
            g.ids = seq;
            g.cu_seqlens = NULL;
            for (; ngen < generate; ngen++) {
                if (model_forward(&m, &work, &g, &out, &e)) die_input("%s: %s", in_path, e.msg);
                be->to_f32(row, AT(be, out.logits, (size_t)(g.T - 1) * V), (size_t)V);
                int32_t best = model_argmax(row, V);
                margin[ngen] = model_margin(row, V, best);
                gen[ngen] = seq[g.T++] = best;
                if (best == eos) { ngen++; break; }
            }
            free(row);
            free(seq);
        } else if ((ngen = model_generate(&m, &work, &in, (int)generate, (int32_t)eos, gen, margin, &e)) < 0) {
            die_input("%s: %s", in_path, e.msg);
        }
        out_add(&ol, "generated", DT_I32, 1, (int64_t[]){ngen}, gen);
        out_add(&ol, "generated_margin", DT_F32, 1, (int64_t[]){ngen}, margin);
    } else {
        if (want_grads) {
            work.logits_scratch = no_logits;
            model_grads_stale(&m, &work, opt.grad);
            if (model_loss_grads(&m, &work, &in, lab, 1.0f, opt.grad, &loss, &out, &e)) die_input("%s: %s", in_path, e.msg);
            adam_grads_to_host(&opt, host_grad);
            fprintf(stderr, "forward: backward through %d of %d decoder layers and %d of %d vision blocks\n",
                    work.text_layers_backward, m.cfg.text.layers, work.vision_blocks_backward, m.cfg.vision.depth);
            fprintf(stderr, "forward: activation memory %zu bytes (%d decoder layers recomputed)\n", work.arena.high,
                    recompute < m.cfg.text.layers ? (int)recompute : m.cfg.text.layers);
        } else if (model_forward(&m, &work, &in, &out, &e)) {
            die_input("%s: %s", in_path, e.msg);
        }
        if (out.logits && !no_logits) {  // outputs come back to the host in fp32 (the backend's values, widened)
            size_t n = (size_t)(in.B ? in.B : 1) * in.T;
            be->to_f32(host_logits = xmalloc(n * V * sizeof(float)), out.logits, n * V);
            out_add(&ol, "logits", DT_F32, 2, (int64_t[]){(int64_t)n, V}, host_logits);
            if (lab && !want_grads) loss = (float)model_shifted_loss(host_logits, lab, in.B, in.T, V, NULL, NULL, 1.0f);
            if (lab) out_add(&ol, "loss", DT_F32, 1, (int64_t[]){1}, &loss);
        } else if (no_logits) {
            out_add(&ol, "loss", DT_F32, 1, (int64_t[]){1}, &loss);
        }
        if (out.vision_hidden) {
            be->to_f32(host_hidden = xmalloc((size_t)in.rows * m.cfg.vision.hidden * sizeof(float)), out.vision_hidden, (size_t)in.rows * m.cfg.vision.hidden);
            be->to_f32(host_embeds = xmalloc((size_t)(in.rows / 4) * m.cfg.text.hidden * sizeof(float)), out.image_embeds, (size_t)(in.rows / 4) * m.cfg.text.hidden);
            out_add(&ol, "vision_hidden", DT_F32, 2, (int64_t[]){in.rows, m.cfg.vision.hidden}, host_hidden);
            out_add(&ol, "image_embeds", DT_F32, 2, (int64_t[]){in.rows / 4, m.cfg.text.hidden}, host_embeds);
        }
        if (want_grads && !strcmp(grad_names, "mcore")) {
            mcore_grads = xcalloc((size_t)mm.ng, sizeof(float *));
            for (int gi = 0; gi < mm.ng; gi++) {
                char name[192], full[200];
                int ndim = 0;
                int64_t shape[4];
                if (!(mcore_grads[gi] = mcore_group_fp32(&mm, gi, grads, name, sizeof name, &ndim, shape, &e))) {
                    if (e.msg[0]) die_internal("%s", e.msg);  // checked before the step
                    continue;
                }
                snprintf(full, sizeof full, "grad.%s", name);
                out_add(&ol, full, DT_F32, ndim, shape, mcore_grads[gi]);
            }
            n_mcore = mm.ng;
        } else {
            for (int i = 0; want_grads && i < m.np; i++)
                if (grads[i]) {
                    char name[160];
                    snprintf(name, sizeof name, "grad.%s", m.ps[i].name);
                    out_add(&ol, name, DT_F32, m.ps[i].ndim, m.ps[i].shape, grads[i]);
                }
        }
    }
    out_write(&ol, out_path);
    free(ol.t);
    free(host_logits); free(host_hidden); free(host_embeds);
    free(host_grad);
    free(grads);
    for (int i = 0; i < n_mcore; i++) free(mcore_grads[i]);
    free(mcore_grads);
    modelmap_free(&mm);
    free(losses);
    free(gen);
    free(margin);
    free(trainable);
    adam_free(&opt);
    model_work_free(&work);
    st_close(&f);
    model_free(&m);
    return 0;
}
