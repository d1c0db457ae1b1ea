// model_internal.h: what model*.c share (not part of the model's interface).
#pragma once
#include "model.h"

// The fp32 tensor named by fmt with %d = layer; dies when absent (the table is built from the config).
const float *model_weight_fmt(const Model *m, const char *fmt, int layer);
int model_param_index(const Model *m, const char *fmt, int layer);
// The gradient buffer of that tensor, NULL when grads is NULL or the tensor is frozen.
float *model_grad_fmt(const Model *m, float **grads, const char *fmt, int layer);

// Activations of one decoder layer kept for the backward (shapes in model_text.c).
typedef struct {
    float *x_in, *rstd1, *h1, *q, *k, *v, *qrstd, *krstd, *qr, *kr, *att, *lse, *x_mid, *rstd2, *h2, *gu, *act;
} LayerActs;

typedef struct {
    int T, nseq;              // T: all tokens of the batch; nseq: attention blocks (rows or packed pieces)
    int32_t *cu, *ids;
    float *ang;
    LayerActs *L;
    float *x_final, *rstdf, *hf;
} TextTrace;

// The attention blocks of the text input: cu_seqlens, or one per row.
int32_t *text_blocks(const ModelInput *in, Arena *A, int *nseq);
void text_forward(const Model *m, Arena *A, const ModelInput *in, const float *image_embeds, float *logits, TextTrace *tr);
// grads[i] accumulates d loss / d m->w[i] (NULL entries are skipped: frozen); dembeds[rows/4, H]
// receives the gradient of the image embeddings (NULL: not needed). Returns the layers it went through.
int text_backward(const Model *m, Arena *A, const TextTrace *tr, const float *dlogits, float **grads, float *dembeds);
int model_forward_check_text(const Model *m, const ModelInput *in, Err *e);

// Activations of one vision block kept for the backward (model_vision.c).
typedef struct {
    float *x_in, *mean1, *rstd1, *h1, *q, *k, *v, *qr, *kr, *att, *lse, *x_mid, *mean2, *rstd2, *h2, *f1, *f1g;
} BlockActs;

typedef struct {
    int64_t S, rows;
    int nimg;
    int32_t *cu;
    float *ang;               // [S, hd/2]
    float *x0, *pre_mean, *pre_rstd;  // pre-LayerNorm input and statistics
    BlockActs *B;
    float *x_last;            // output of the last block
    float *ln_mean, *ln_rstd, *ln, *m1, *m1g;  // merger
    const float *pixels, *hidden;
} VisionTrace;

void vision_forward(const Model *m, Arena *A, const ModelInput *in, float *hidden_out, float *embeds_out, VisionTrace *tr);
// With tower = 0 only the merger's gradients are computed. Returns the blocks it went through.
int vision_backward(const Model *m, Arena *A, const VisionTrace *tr, const float *dembeds, float **grads, int tower);

// The forward of both parts into w's arena, keeping their activations in vt and tr.
int model_run_forward(const Model *m, ModelWork *w, const ModelInput *in, ModelOutput *out, VisionTrace *vt,
                      TextTrace *tr, Err *e);
