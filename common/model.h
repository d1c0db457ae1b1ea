// model.h: the LLaVA-OV-1.5 graph (spec/model.md §1-§4) on the kernels of ops.h: RICE-ViT vision
// tower, 2×2 merger, Qwen3 decoder. Weights are held in fp32, one array per entry of the parameter
// table (params.h), loaded from an HF checkpoint of any float dtype. This first version is the
// forward pass; the backward, freezing and the KV cache build on the same activations.
#pragma once
#include <stdint.h>

#include "config.h"
#include "params.h"
#include "strmap.h"

typedef struct {
    ModelConfig cfg;
    ParamSpec *ps;
    int np;
    float **w;          // w[i]: tensor ps[i] in fp32
    StrMap index;       // HF name -> i
} Model;

int model_load(Model *m, const char *hf_dir, Err *e);
void model_free(Model *m);
// The fp32 tensor of an HF name, or NULL.
const float *model_weight(const Model *m, const char *name);

typedef struct {
    const int32_t *ids;          // [T] (NULL: vision tower and merger only)
    int T;
    const int32_t *cu_seqlens;   // [nseq + 1] packed sub-sequences of the row (NULL: one sequence)
    int nseq;
    const float *pixels;         // [rows, C·14·14] in 2×2-block order
    int64_t rows;
    const int32_t *grid;         // [nimg, 3] = (1, h, w) in patches
    int nimg;
} ModelInput;

typedef struct {
    float *logits;               // [T, vocab]
    float *vision_hidden;        // [rows, Dv]: last block output without the CLS rows
    float *image_embeds;         // [rows/4, H]: merger output
} ModelOutput;

// Allocates and fills the outputs (caller frees each). Errors: image-pad count ≠ merger outputs,
// grid sizes that do not match the pixel rows, ids outside the vocabulary.
int model_forward(const Model *m, const ModelInput *in, ModelOutput *out, Err *e);

// Loss and gradients: the mean cross-entropy over labels != −100 of position t against labels[t+1]
// (Hugging Face's shift), and its gradient accumulated into grads[i] for every tensor i whose
// grads[i] is not NULL (NULL: frozen, nothing computed for it): vision tower (CLS embedding and
// angles included), merger and language model.
// Mean cross-entropy of logits[T, V] where position t predicts labels[t+1] (labels aligned with the
// ids, −100: no loss), as Hugging Face shifts. With dlogits, also writes its gradient there.
double model_shifted_loss(const float *logits, const int32_t *labels, int T, int V, float *dlogits);

int model_loss_grads(const Model *m, const ModelInput *in, const int32_t *labels, float *loss, float **grads,
                     ModelOutput *out, Err *e);
