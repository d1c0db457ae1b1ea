// model_internal.h: what model*.c share (not part of the model's interface).
#pragma once
#include "model.h"

// The backend's copy of the tensor named by fmt with %d = layer; dies when absent (the table is built
// from the config).
const Act *model_weight_fmt(const Model *m, const char *fmt, int layer);
int model_param_index(const Model *m, const char *fmt, int layer);
// The gradient buffer of that tensor, NULL when grads is NULL or the tensor is frozen.
float *model_grad_fmt(const Model *m, float **grads, const char *fmt, int layer);

// ModelWork.grads_final, when set, with the index of the tensor fmt/layer (stale tensors from that index
// on zeroed first: model_grads_stale).
void model_grads_final(const Model *m, ModelWork *w, const char *fmt, int layer);
// For an op that accumulates into the gradient of tensor fmt/layer: that gradient (NULL when frozen),
// zeroed first when it is still stale (model_grads_stale).
float *model_grad_acc(const Model *m, ModelWork *w, float **grads, const char *fmt, int layer);
// be->matmul_backward for the product with weight wfmt (bias bfmt, NULL: none) of layer `layer`: its dW
// and dbias accumulate, or are overwritten when still stale; dinp is overwritten when dinp_set.
void model_matmul_backward(const Model *m, ModelWork *w, float **grads, Act *dinp, int dinp_set, const char *wfmt, const char *bfmt,
                           int layer, const Act *dout, const Act *inp, int N, int K, int M);

// The residual stream -- each layer's input x_in, its x_mid, and the gradient flowing back along them -- in the
// backend's storage type, or in fp32 with ModelWork.fp32_residual (Megatron's --fp32-residual-connection; PyTorch
// autocast keeps it fp32 too, since the embeddings and the sums are fp32 there). A bf16 stream rounds every
// layer's sum, and the errors pile up over the layers: in the cpu-bf16 emulation the fp32 stream takes the mid
// presets from 68 gradients within 2e-2 of fp32 to 77-82 of 82. Res points at rows of either kind; the res_
// functions pick the backend's op for it.
typedef struct Res Res;
typedef struct {
    const Backend *be;
    int f32;
} Resid;
Resid model_resid(const Model *m, const ModelWork *w);
Res *res_alloc(const Resid *r, Arena *A, size_t n);   // uninitialised
Res *res_zeros(const Resid *r, Arena *A, size_t n);
// x (storage type) as residual rows: x itself, or an fp32 copy from A
Res *res_of(const Resid *r, Arena *A, Act *x, size_t n);
// the rows of x in the storage type, for the ops that read no other: x itself, or rounded into buf
const Act *res_stored(const Resid *r, Act *buf, const Res *x, size_t n);
void res_add(const Resid *r, Res *out, const Res *a, const Act *b, size_t n);
void res_rmsnorm(const Resid *r, Act *out, float *rstd, const Res *x, const Act *w, int N, int C, float eps);
void res_add_rmsnorm(const Resid *r, Res *sum, Act *out, float *rstd, const Res *a, const Act *b, const Act *w, int N, int C, float eps);
// The backwards: dinp += the input's gradient; they return dinp's rows in the storage type for the products that
// read it (dinp itself, or the rounded copy written into buf in the same pass; NULL when dinp is)
const Act *res_rmsnorm_backward(const Resid *r, Res *dinp, Act *buf, float *dw, const Act *dout, const Res *inp, const Act *w,
                                const float *rstd, int N, int C);
void res_layernorm(const Resid *r, Act *out, float *mean, float *rstd, const Res *x, const Act *w, const Act *b, int N, int C, float eps);
void res_add_layernorm(const Resid *r, Res *sum, Act *out, float *mean, float *rstd, const Res *a, const Act *b, const Act *w,
                       const Act *bias, int N, int C, float eps);
const Act *res_layernorm_backward(const Resid *r, Res *dinp, Act *buf, float *dw, float *db, const Act *dout, const Res *inp,
                                  const Act *w, const float *mean, const float *rstd, int N, int C);

// Activations of one decoder layer kept for the backward (shapes in model_text.c).
typedef struct {  // activations (Act: backend storage), residual rows (Res) and statistics (float) of one decoder layer
    Res *x_in, *x_mid;
    Act *h1, *q, *k, *v, *qr, *kr, *att, *h2, *gu, *act;
    float *rstd1, *qrstd, *krstd, *lse, *rstd2;
} LayerActs;

typedef struct {
    int T, nseq, max_len;     // T: all tokens of the batch; nseq: attention blocks (rows or packed pieces)
    int32_t *cu;              // [nseq + 1] in backend memory
    int32_t *ids;             // [T] in backend memory
    int32_t *pad_rows;        // [npad] positions of the image pads (backend memory)
    int32_t *text_rows;       // [ntext] the other positions (backend memory)
    const int32_t *text_ids;  // [ntext] their ids, on the host (the embedding gradient groups them there)
    int npad, ntext;
    float *ang;               // [T, hd/2] RoPE angles (backend memory)
    LayerActs *L;             // host array of per-layer pointers
    int recompute;            // layers 0 .. recompute-1 keep only x_in; their other activations are in shared
    LayerActs shared;
    Act *g, *u, *o;           // a layer's temporaries [T, I], [T, I], [T, H]
    Resid res;                // how the residual stream is kept
    Res *x_final;
    Act *hf;                  // [T, H] the final norm's output
    float *rstdf;
    int nhead;                // positions the head ran over: T, or the nhead of head_rows
    int32_t *head_rows;       // [nhead] those positions (backend memory; NULL: all, in order)
    Act *hhead;               // [nhead, H] their rows of hf (hf itself when all)
} TextTrace;

// A host table copied into backend memory from the arena.
void *model_upload(const Model *m, Arena *A, const void *host, size_t bytes);
// The attention blocks of the text input (host array): cu_seqlens, or one per row.
int32_t *text_blocks(const ModelInput *in, Arena *H, int *nseq);
// logits[nhead, V]: the head's outputs at positions head_rows (host; NULL: all T, nhead ignored)
void text_forward(const Model *m, ModelWork *w, const ModelInput *in, const Act *image_embeds, const int32_t *head_rows,
                  int nhead, Act *logits, TextTrace *tr);
// grads[i] accumulates d loss / d weight i (NULL entries are skipped: frozen); dembeds[rows/4, H]
// receives the gradient of the image embeddings (NULL: not needed). Returns the layers it went through.
int text_backward(const Model *m, ModelWork *w, const TextTrace *tr, const Act *dlogits, float **grads, Act *dembeds);
int model_forward_check_text(const Model *m, const ModelInput *in, Err *e);

// Activations of one vision block kept for the backward (model_vision.c).
typedef struct {
    Res *x_in, *x_mid;
    Act *h1, *v, *qr, *kr, *att, *h2, *f1, *f1g;
    float *mean1, *rstd1, *lse, *mean2, *rstd2;
} BlockActs;

typedef struct {
    int64_t S, rows;
    int nimg, max_len;
    int32_t *cu;              // [nimg + 1] (backend memory)
    int32_t *cls_rows, *patch_rows;  // [nimg], [rows]: where the CLS and patch rows sit (backend memory)
    float *ang;               // [S, hd/2] (backend memory)
    Act *x0;                  // pre-LayerNorm input
    float *pre_mean, *pre_rstd;
    BlockActs *B;
    Resid res;
    Res *x_last;              // output of the last block
    Act *ln, *m1, *m1g;       // merger
    float *ln_mean, *ln_rstd;
    const Act *pixels, *hidden;
} VisionTrace;

void vision_forward(const Model *m, ModelWork *w, const ModelInput *in, Act *hidden_out, Act *embeds_out, VisionTrace *tr);
// With tower = 0 only the merger's gradients are computed. Returns the blocks it went through.
int vision_backward(const Model *m, ModelWork *w, const VisionTrace *tr, const Act *dembeds, float **grads, int tower);

// The forward of both parts into w's arena, keeping their activations in vt and tr; out->logits holds the
// head's outputs at the nhead positions head_rows (host), or at every position (head_rows NULL).
int model_run_forward(const Model *m, ModelWork *w, const ModelInput *in, ModelOutput *out, VisionTrace *vt,
                      TextTrace *tr, const int32_t *head_rows, int nhead, Err *e);
