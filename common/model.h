// model.h: the LLaVA-OV-1.5 graph (spec/model.md §1-§4) on the kernels of ops.h: RICE-ViT vision
// tower, 2×2 merger, Qwen3 decoder. Weights are held in fp32, one array per entry of the parameter
// table (params.h), loaded from an HF checkpoint of any float dtype. Forward, full backward with
// any tensor frozen, and a KV-cache forward for generation.
#pragma once
#include <stdint.h>

#include "../kernels/backend.h"
#include "arena.h"
#include "config.h"
#include "dtype.h"
#include "params.h"
#include "strmap.h"

typedef struct {
    ModelConfig cfg;
    ParamSpec *ps;
    int np;
    float **w;          // w[i]: tensor ps[i] in fp32, a view into flat
    float *flat;        // every weight, table order, each tensor starting at a multiple of PARAM_ALIGN floats
    size_t nflat;
    StrMap index;       // HF name -> i
    DType dtype;        // what the checkpoint stores (frozen tensors are saved back in it unchanged)
    const Backend *be;  // where the graph runs (backend_cpu after loading)
    Act **wb;           // [np] the weights in the backend's storage: w itself on cpu, bf16 copies on cuda
    void *wb_block;     // the backend allocation behind wb (NULL on cpu)
} Model;

// An HF directory, or an mcore checkpoint root (the tracker's iteration, or iter: "release",
// "iter_0000100" or a number).
int model_load(Model *m, const char *dir, Err *e);
int model_load_iter(Model *m, const char *dir, const char *iter, Err *e);
void model_free(Model *m);
// Runs the model on `be` from now on: uploads the weights in its storage type (bf16 on cuda).
void model_to_backend(Model *m, const Backend *be);
// The fp32 tensor of an HF name, or NULL.
const float *model_weight(const Model *m, const char *name);
int model_param_id(const Model *m, const char *name);  // index in the table, or -1

typedef struct {
    const int32_t *ids;          // [B, T] row-major (NULL: vision tower and merger only)
    int B, T;                    // B rows of T tokens; B = 0 is read as 1
    const int32_t *cu_seqlens;   // [nseq + 1] packed sub-sequences of a single row (NULL: one per row)
    int nseq;
    const float *pixels;         // [rows, C·14·14] in 2×2-block order
    int64_t rows;
    const int32_t *grid;         // [nimg, 3] = (1, h, w) in patches
    int nimg;
} ModelInput;

typedef struct {                 // in the backend's storage and memory (host fp32 on cpu)
    Act *logits;                 // [B·T, vocab] (model_loss_grads with logits_scratch: scratch)
    Act *vision_hidden;          // [rows, Dv]: last block output without the CLS rows
    Act *image_embeds;           // [rows/4, H]: merger output
} ModelOutput;

// What one step needs besides the weights: the activation arena (outputs live there too, valid
// until the next call with the same work) and counters the tests read.
typedef struct {
    Arena arena;                 // activations, in the backend's memory
    Arena host;                  // host-side index and angle tables of the step
    int recompute;               // decoder layers (from the first) whose activations the backward recomputes
    int fp32_residual;           // the residual stream in fp32 on a bf16 backend (--fp32-residual-connection)
    int logits_scratch;          // the caller of model_loss_grads reads only the loss: the head runs over the
                                 // counted positions alone, and their logits are overwritten by their gradient
                                 // (out->logits is then [counted, vocab] scratch)
    int text_layers_backward;    // decoder layers the last backward went through
    int vision_blocks_backward;  // vision blocks likewise (0 when the whole tower is frozen)
    // When set, the backward calls it as gradients become final: every tensor of table index >= first
    // has its whole gradient of this step (the trainer reduces them over the ranks meanwhile).
    void (*grads_final)(void *ctx, int first);
    void *grads_final_ctx;
    // model_grads_stale: the gradient buffers hold stale values (not zeroed) until each tensor's first write
    unsigned char *stale;        // [np]: 1 until tensor i's gradient is first written (NULL: none is stale)
    int nstale;                  // entries of stale
    float **stale_grads;         // the gradients model_grads_stale was given, until a backward has written them
    unsigned char *zeroed;       // [np]: zeroed by a backward before its first accumulation (model_grad_acc): the
                                 // next step zeroes them all in one call at its first (the graph is the same each step)
    int zero_pending;            // that call is still to come this step
} ModelWork;

// The optimizer's overlap with the next forward (optim.h, LLAVA_OVERLAP_OPT): the point of the forward from
// which tensor i is read, its mark: 0 before the forward starts (embeddings, the tower's stem and merger, the
// final norm, the head), 1 + b at vision block b, 1 + vision depth + l at decoder layer l (at most 255). The
// forward waits there for the mark (Backend.wait_mark), which the optimizer records once those tensors are
// updated.
int model_weight_mark(const Model *m, int i);

void model_work_init(ModelWork *w, const Backend *be);
void model_work_free(ModelWork *w);
// Before the first backward of a step whose gradient buffers were NOT zeroed (the trainer's fp32 buffer:
// 4 bytes per parameter less to write): in the next model_loss_grads each tensor's first write
// overwrites its gradient instead of accumulating (a product's dW with beta 0; an op that can only
// accumulate gets its tensor zeroed first), and a tensor the backward does not write (a frozen part's
// neighbour, the tower without images) is zeroed when the backward reports it final or ends. The results
// equal zeroing every buffer first; later backwards of the step accumulate as usual. With LLAVA_POISON=1
// (the arena's poisoning, `make asan`) the buffers are filled with NaNs first, so a gradient that is
// accumulated into instead of overwritten shows.
void model_grads_stale(const Model *m, ModelWork *w, float **grads);

// Errors: image-pad count ≠ merger outputs, grid sizes that do not match the pixel rows, ids
// outside the vocabulary, cu_seqlens not spanning the row.
int model_forward(const Model *m, ModelWork *w, const ModelInput *in, ModelOutput *out, Err *e);

// Mean cross-entropy of logits[B·T, V] where position t of a row predicts labels[t+1] of the same
// row (labels aligned with the ids, −100: no loss), over all counted positions of the batch, as
// Hugging Face shifts. *count receives the number of counted positions. With dlogits, also writes
// the gradient of grad_scale · loss there.
double model_shifted_loss(const float *logits, const int32_t *labels, int B, int T, int V, int64_t *count,
                          float *dlogits, float grad_scale);

// Forward, loss (as model_shifted_loss) and the gradient of grad_scale · loss, ACCUMULATED into
// grads[i] (fp32, in the backend's memory) for every tensor i whose grads[i] is not NULL. A NULL entry is a frozen tensor: nothing
// is computed for it, and the backward stops below the lowest trainable layer (the vision tower is
// not entered at all when only the merger or the language model train).
int model_loss_grads(const Model *m, ModelWork *w, const ModelInput *in, const int32_t *labels, float grad_scale,
                     float **grads, float *loss, ModelOutput *out, Err *e);

// Trainable sets. spec is a comma-separated list of modules (vision, merger, llm; "all") or HF
// name prefixes ("model.layers.3.", "lm_head."); trainable[i] is set for the tensors it covers.
// Returns -1 with an error for an item that covers no tensor.
int model_trainable(const Model *m, const char *spec, int *trainable, Err *e);

// ---- generation (model_generate.c) ----
// Keys (after QK-norm and RoPE) and values of every decoder layer for one sequence, in the backend's
// memory and storage type.
typedef struct {
    const Backend *be;
    int cap, len;
    Act *k, *v;                  // [layers, cap, nkv, hd]
    float *ang;                  // [cap, hd/2] RoPE angles of every position, as the full forward computes them
    Act *act;                    // one token's activations
    float *res;                  // its residual rows x and x_mid [2, H] when the stream is fp32
    int fp32_residual;           // ModelWork.fp32_residual of the prefill
    float *stats;                // and its norm statistics
    int32_t *id;                 // [1] the token being decoded
} KvCache;

// Prefill: runs the full forward of one row (images included) and fills the cache; writes the
// logits of the last position to logits_last[V].
int model_prefill(const Model *m, ModelWork *w, const ModelInput *in, KvCache *kv, int cap, float *logits_last, Err *e);
// One token at position kv->len: appends its keys/values and writes its logits[V].
int model_decode(const Model *m, KvCache *kv, int32_t id, float *logits, Err *e);
void kv_cache_free(KvCache *kv);
// The index of the largest of x[n], the first of equal maxima (as torch.argmax).
int32_t model_argmax(const float *x, int n);
// How far x[best] stands above the runner-up, in units of the RMS of x: a greedy choice whose margin
// is within the logits' tolerance of another precision (bf16: relative L2 2e-2, so margins below about
// twice that) may flip there.
float model_margin(const float *x, int n, int32_t best);
// Greedy decoding of up to n tokens after the prompt (stops after eos when eos >= 0); returns the
// number written to out, and (margin not NULL) each choice's margin.
int model_generate(const Model *m, ModelWork *w, const ModelInput *prompt, int n, int32_t eos, int32_t *out, float *margin, Err *e);
