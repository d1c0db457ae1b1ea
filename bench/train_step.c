// bench/train_step.c: training steps per second of the CPU backend on one batch: forward, loss,
// full backward and an AdamW step, every tensor trainable (what `midtrain` does per micro-batch).
//   usage: train_step HF_DIR IN.safetensors STEPS
// Prints "train_step: T tokens, S steps, X ms/step, Y tokens/s" after one untimed warm-up step
// (which also sizes the activation arena).
#include <stdio.h>
#include <stdlib.h>

#include "../common/model.h"
#include "../common/optim.h"
#include "../common/safetensors.h"
#include "../common/util.h"

static const void *need(const StFile *f, const char *name) {
    const StTensor *t = st_find(f, name);
    if (!t) die_input("%s: no tensor '%s'", f->path, name);
    return t->data;
}

int main(int argc, char **argv) {
    util_set_prog(argv[0]);
    if (argc != 4) die_input("usage: train_step HF_DIR IN.safetensors STEPS");
    int steps = atoi(argv[3]);
    Err e;
    Model m;
    if (model_load(&m, argv[1], &e)) die_input("%s", e.msg);
    StFile f;
    if (st_open(&f, argv[2], &e)) die_input("%s", e.msg);
    const StTensor *ids = st_find(&f, "input_ids"), *grid = st_find(&f, "grid_thw"), *cu = st_find(&f, "cu_seqlens"),
                   *px = st_find(&f, "pixel_values");
    ModelInput in = {.ids = need(&f, "input_ids"), .B = 1, .T = (int)ids->shape[ids->ndim - 1]};
    if (cu) { in.cu_seqlens = (const int32_t *)cu->data; in.nseq = (int)cu->shape[0] - 1; }
    if (px) { in.pixels = (const float *)px->data; in.rows = px->shape[0]; in.grid = (const int32_t *)grid->data; in.nimg = (int)grid->shape[0]; }
    const int32_t *labels = need(&f, "labels");
    int *trainable = xcalloc((size_t)m.np, sizeof(int));
    for (int i = 0; i < m.np; i++) trainable[i] = 1;
    Adam opt;
    adam_init(&opt, &m, trainable, 0, adam_layout_size(&m, trainable));
    ModelWork w;
    model_work_init(&w, m.be);
    AdamHyper h = {1e-4f, 0.9f, 0.999f, 1e-8f, 0.0f};
    ModelOutput out;
    float loss = 0.0f;
    double t0 = 0.0;
    for (int s = 0; s <= steps; s++) {
        if (s == 1) t0 = now_seconds();
        adam_zero_grad(&opt);
        if (model_loss_grads(&m, &w, &in, labels, 1.0f, opt.grad, &loss, &out, &e)) die_input("%s", e.msg);
        adam_step(&opt, &m, &h);
    }
    double dt = (now_seconds() - t0) / steps;
    printf("train_step: %d tokens, %d images, %d steps, %.1f ms/step, %.0f tokens/s, last loss %.4f\n", in.T, in.nimg,
           steps, dt * 1e3, in.T / dt, loss);
    adam_free(&opt);
    model_work_free(&w);
    free(trainable);
    st_close(&f);
    model_free(&m);
    return 0;
}
