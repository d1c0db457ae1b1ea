// forward: one forward pass of a checkpoint on given inputs, for conformance checks.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/cli.h"
#include "../common/model.h"
#include "../common/safetensors.h"
#include "../common/util.h"
#include "../kernels/ops.h"

static const StTensor *get(const StFile *f, const char *name, DType dt) {
    const StTensor *t = st_find(f, name);
    if (t && t->dtype != dt) die_input("%s: tensor '%s' has dtype %s, expected %s", f->path, name, dtype_name(t->dtype), dtype_name(dt));
    return t;
}

int main(int argc, char **argv) {
    char *model_dir = NULL, *in_path = NULL, *out_path = NULL, *device = "cpu";
    int want_grads = 0;
    const Opt opts[] = {
        {"model", OPT_STR, &model_dir, "DIR", "HF checkpoint (merged LLaVA-OV-1.5, or a plain Qwen3)."},
        {"in", OPT_STR, &in_path, "FILE", "Inputs (safetensors): input_ids I32 [T] or [1,T]; optional labels (same shape), "
                                          "cu_seqlens I32, pixel_values F32 [N, 588], grid_thw I32 [n_img, 3]."},
        {"out", OPT_STR, &out_path, "FILE", "Outputs (safetensors ending in .safetensors): logits, loss, vision_hidden, image_embeds."},
        {"device", OPT_STR, &device, "cpu", "Backend (only cpu in this build of the model)."},
        {"grads", OPT_FLAG, &want_grads, NULL,
         "Also write grad.<HF name> of the loss for every tensor (vision tower, merger, language model); needs labels."},
    };
    const Cli cli = {
        .name = "forward",
        .summary = "run the model forward on given inputs and write its outputs (a conformance probe)",
        .synopsis = "forward --model HF_DIR --in IN.safetensors --out OUT.safetensors",
        .description =
            "Loads the checkpoint in fp32 and runs the LLaVA-OV-1.5 graph: patch embedding, per-image CLS, pre-LayerNorm, "
            "the vision blocks with 2-D RoPE and attention block-diagonal per image, CLS removal, the merger, image "
            "embeddings scattered into the <|image_pad|> positions in order, the Qwen3 decoder (RMSNorm, QK-norm, GQA, "
            "RoPE with positions restarting at every cu_seqlens boundary, SwiGLU), final norm and head.\n"
            "OUT receives logits F32 [T, vocab]; loss F32 [1] when labels are given (the mean cross-entropy of "
            "position t against labels[t+1] over labels != -100, as Hugging Face shifts); vision_hidden F32 [N, Dv] "
            "(last block, CLS rows removed) and image_embeds F32 [N/4, H]. Without input_ids only the vision tower "
            "and merger run.",
        .opts = opts,
        .nopts = sizeof opts / sizeof opts[0],
    };
    char **pos;
    cli_parse(&cli, argc, argv, &pos);
    free(pos);
    cli_require(&cli, "model", model_dir);
    cli_require(&cli, "in", in_path);
    cli_require(&cli, "out", out_path);
    if (strcmp(device, "cpu")) die_input("--device: only cpu is available for the model so far");
    Err e;
    Model m;
    if (model_load(&m, model_dir, &e)) die_input("%s", e.msg);
    StFile f;
    if (st_open(&f, in_path, &e)) die_input("%s", e.msg);
    const StTensor *ids = get(&f, "input_ids", DT_I32), *labels = get(&f, "labels", DT_I32), *cu = get(&f, "cu_seqlens", DT_I32),
                   *px = get(&f, "pixel_values", DT_F32), *grid = get(&f, "grid_thw", DT_I32);
    ModelInput in = {0};
    if (ids) {
        int64_t T = shape_numel(ids->ndim, ids->shape);
        if (ids->ndim == 2 && ids->shape[0] != 1) die_input("%s: input_ids: only one row ([T] or [1, T]) is supported", in_path);
        in.ids = (const int32_t *)ids->data;
        in.T = (int)T;
    }
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
    ModelOutput out;
    float **grads = NULL, grad_loss = 0.0f;
    if (want_grads) {
        if (!labels || !ids) die_input("%s: --grads needs input_ids and labels", in_path);
        if (shape_numel(labels->ndim, labels->shape) != in.T) die_input("%s: labels: expected %d values", in_path, in.T);
        grads = xcalloc((size_t)m.np, sizeof(float *));
        for (int i = 0; i < m.np; i++)
            grads[i] = xcalloc((size_t)param_numel(&m.ps[i]), sizeof(float));
        if (model_loss_grads(&m, &in, (const int32_t *)labels->data, &grad_loss, grads, &out, &e))
            die_input("%s: %s", in_path, e.msg);
    } else if (model_forward(&m, &in, &out, &e)) {
        die_input("%s: %s", in_path, e.msg);
    }
    StWriter *w = stw_new_file(out_path, &e);
    if (!w) die_input("--out: %s", e.msg);
    float loss = 0.0f;
    int V = m.cfg.text.vocab;
    if (out.logits) {
        int64_t s[2] = {in.T, V};
        stw_declare(w, "logits", DT_F32, 2, s, &e);
        if (labels) {
            if (shape_numel(labels->ndim, labels->shape) != in.T) die_input("%s: labels: expected %d values", in_path, in.T);
            loss = want_grads ? grad_loss : (float)model_shifted_loss(out.logits, (const int32_t *)labels->data, in.T, V, NULL);
            int64_t one[1] = {1};
            stw_declare(w, "loss", DT_F32, 1, one, &e);
        }
    }
    if (out.vision_hidden) {
        int64_t a[2] = {in.rows, m.cfg.vision.hidden}, b[2] = {in.rows / 4, m.cfg.text.hidden};
        stw_declare(w, "vision_hidden", DT_F32, 2, a, &e);
        stw_declare(w, "image_embeds", DT_F32, 2, b, &e);
    }
    for (int i = 0; grads && i < m.np; i++)
        if (grads[i]) {
            char name[160];
            snprintf(name, sizeof name, "grad.%s", m.ps[i].name);
            stw_declare(w, name, DT_F32, m.ps[i].ndim, m.ps[i].shape, &e);
        }
    if (stw_open(w, &e) || (out.logits && stw_write(w, "logits", out.logits, &e)) || (out.logits && labels && stw_write(w, "loss", &loss, &e)) ||
        (out.vision_hidden && (stw_write(w, "vision_hidden", out.vision_hidden, &e) || stw_write(w, "image_embeds", out.image_embeds, &e))) ||
        0)
        die_input("%s", e.msg);
    for (int i = 0; grads && i < m.np; i++)
        if (grads[i]) {
            char name[160];
            snprintf(name, sizeof name, "grad.%s", m.ps[i].name);
            if (stw_write(w, name, grads[i], &e)) die_input("%s", e.msg);
            free(grads[i]);
        }
    free(grads);
    if (stw_finish(w, &e)) die_input("%s", e.msg);
    stw_free(w);
    free(out.logits); free(out.vision_hidden); free(out.image_embeds);
    st_close(&f);
    model_free(&m);
    return 0;
}
