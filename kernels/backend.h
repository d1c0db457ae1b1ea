// backend.h: the compute backend the model graph runs on, picked at run time (--device cpu|cuda).
// The graph (common/model*.c) is written once against this table; kernels/cpu implements it in fp32
// on host memory (the reference), kernels/cuda in bf16 on the GPU (fp32 statistics and gradients).
//
// Act is an activation or weight element of the backend's storage type (fp32 on cpu, bf16 on cuda);
// its size is esize, so a row offset is AT(x, i). Statistics (mean, rstd, lse), RoPE angles, losses
// and weight gradients are float on both. ids, targets and cu_seqlens are int32 in backend memory.
// Backward ops accumulate into their gradient outputs (the attention backward writes its own whole); a NULL
// gradient skips that work.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct Act Act;  // opaque: never dereferenced by the graph code
#define AT(be, x, i) ((Act *)((char *)(x) + (size_t)(i) * (be)->esize))

enum { MM_SET_DINP = 1, MM_SET_DW = 2 };  // Backend.matmul_backward's set flags
typedef struct {  // Backend.adamw_segments' segment: n elements at off of the flat vectors, weights at param
    size_t off, n;
    Act *param;
    float wd;
} AdamSeg;

typedef struct Backend {
    const char *name;
    size_t esize;
    // memory (host on cpu, device on cuda); alloc returns zeroed memory
    void *(*alloc)(size_t bytes);
    void (*release)(void *p);
    void (*zero)(void *p, size_t bytes);
    // n[i] floats at p[i] zeroed for each of k arrays, in one pass: the small gradients the backward
    // accumulates into, ~100-250 of them a step
    void (*zero_floats)(float *const *p, const size_t *n, int k);
    void (*poison)(void *p, size_t bytes);                          // 0xFF bytes: NaN as fp32 and bf16
    void (*upload)(void *dst, const void *host, size_t bytes);      // raw bytes
    void (*download)(void *host, const void *src, size_t bytes);
    void (*from_f32)(Act *dst, const float *host, size_t n);        // host fp32 -> backend storage
    void (*to_f32)(float *host, const Act *src, size_t n);          // backend storage -> host fp32
    size_t (*memory_peak)(void);    // the most memory the backend has held at once (0: not tracked, as on cpu)
    // glue
    void (*add)(Act *out, const Act *a, const Act *b, size_t n);
    // dst[r, :cols] = src[r, :cols] for r < rows, with row strides (in elements)
    void (*copy2d)(Act *dst, size_t dst_ld, const Act *src, size_t src_ld, size_t rows, size_t cols);
    void (*gather_rows)(Act *dst, const Act *src, const int32_t *idx, int n, int C);   // dst[i] = src[idx[i]]
    void (*scatter_rows)(Act *dst, const Act *src, const int32_t *idx, int n, int C);  // dst[idx[i]] = src[i]
    void (*sum_rows)(float *dst, const Act *src, const int32_t *idx, int n, int C);    // dst += Σ_i src[idx[i]]
    // d loss / d angle of rotated rows y = R(θ)x (rows idx, all heads), accumulated into dang[D/2]
    void (*rope_angle_grad)(float *dang, const Act *y, const Act *dy, const int32_t *idx, int n, int H, int D);
    // Overlap (the GPU; no-ops on the cpu, where every op runs in order): side(1) sends the ops that follow
    // to a second stream, which starts after everything issued so far; side(0) returns to the main one.
    // mark(k) (0 <= k < 256) records the point the stream in use has reached; wait_mark(k) holds the stream
    // in use until that point (nothing if k was never recorded); join holds the main stream until the side
    // stream's work so far is done (download joins first).
    void (*side)(int on);
    void (*mark)(int k);
    void (*wait_mark)(int k);
    void (*join)(void);
    // ops (math in kernels/ops.h)
    void (*matmul_forward)(Act *out, const Act *inp, const Act *w, const Act *bias, int N, int K, int M);
    // (set: MM_SET_DINP overwrites dinp, MM_SET_DW dw and dbias, instead of accumulating into them: for a
    // gradient that would be zeroed just before, one memory pass and one read of zeros less on the GPU)
    void (*matmul_backward)(Act *dinp, float *dw, float *dbias, const Act *dout, const Act *inp, const Act *w, int N, int K, int M,
                            int set);
    void (*layernorm_forward)(Act *out, float *mean, float *rstd, const Act *inp, const Act *w, const Act *b, int N, int C, float eps);
    void (*layernorm_backward)(Act *dinp, float *dw, float *db, const Act *dout, const Act *inp, const Act *w, const float *mean,
                               const float *rstd, int N, int C);
    void (*rmsnorm_forward)(Act *out, float *rstd, const Act *inp, const Act *w, int N, int C, float eps);
    void (*rmsnorm_backward)(Act *dinp, float *dw, const Act *dout, const Act *inp, const Act *w, const float *rstd, int N, int C);
    // fused forms (the separate ops in one pass): sum = a + b (in storage precision) and out = RMSNorm(sum)·w,
    // or LayerNorm; out = RoPE(RMSNorm(inp)·w) per head row of [T, H, D] (QK-norm then RoPE)
    void (*add_rmsnorm_forward)(Act *sum, Act *out, float *rstd, const Act *a, const Act *b, const Act *w, int N, int C, float eps);
    void (*add_layernorm_forward)(Act *sum, Act *out, float *mean, float *rstd, const Act *a, const Act *b, const Act *w,
                                  const Act *bias, int N, int C, float eps);
    void (*rmsnorm_rope_forward)(Act *out, float *rstd, const Act *inp, const Act *w, const float *angles, int T, int H, int D,
                                 float eps);
    // its backward: dinp (overwritten, not accumulated) = d inp from dout, the rotated output's gradient
    // (dout is scratch: it is left holding the un-rotated gradient or anything else); dw accumulates
    void (*rmsnorm_rope_backward)(Act *dinp, float *dw, Act *dout, const Act *inp, const Act *w, const float *rstd,
                                  const float *angles, int T, int H, int D);
    // The fp32 residual stream (ModelWork.fp32_residual; Megatron's --fp32-residual-connection): the norms with
    // the residual rows in fp32 instead of the storage type -- inp, the fused forms' sum and their input a, and
    // dinp -- while out, dout and the branch input b stay Act; the add likewise; and the conversions between the
    // two (narrow rounds to nearest even). The backwards also write dinp rounded to the storage type into
    // dinp_stored unless it is NULL (the copy the next products read, without a pass of its own). On cpu, where
    // Act is fp32, they are the plain ops.
    void (*widen)(float *dst, const Act *src, size_t n);
    void (*narrow)(Act *dst, const float *src, size_t n);
    void (*add_r32)(float *out, const float *a, const Act *b, size_t n);
    void (*rmsnorm_forward_r32)(Act *out, float *rstd, const float *inp, const Act *w, int N, int C, float eps);
    void (*add_rmsnorm_forward_r32)(float *sum, Act *out, float *rstd, const float *a, const Act *b, const Act *w, int N, int C,
                                    float eps);
    void (*rmsnorm_backward_r32)(float *dinp, Act *dinp_stored, float *dw, const Act *dout, const float *inp, const Act *w,
                                 const float *rstd, int N, int C);
    void (*layernorm_forward_r32)(Act *out, float *mean, float *rstd, const float *inp, const Act *w, const Act *b, int N, int C,
                                  float eps);
    void (*add_layernorm_forward_r32)(float *sum, Act *out, float *mean, float *rstd, const float *a, const Act *b, const Act *w,
                                      const Act *bias, int N, int C, float eps);
    void (*layernorm_backward_r32)(float *dinp, Act *dinp_stored, float *dw, float *db, const Act *dout, const float *inp,
                                   const Act *w, const float *mean, const float *rstd, int N, int C);
    void (*gelu_forward)(Act *out, const Act *inp, size_t n);
    void (*gelu_backward)(Act *dinp, const Act *dout, const Act *inp, size_t n);
    void (*swiglu_forward)(Act *out, const Act *gu, int N, int F);
    void (*swiglu_backward)(Act *dgu, const Act *dout, const Act *gu, int N, int F);
    void (*rope_forward)(Act *x, const float *angles, int T, int H, int D);
    void (*rope_backward)(Act *dx, const float *angles, int T, int H, int D);
    // the vision tower's split of its fused QKV product qkv [T, 3·H·D] = [Q | K | V]: q = RoPE(Q), k = RoPE(K),
    // v = V, each [T, H, D] (one pass instead of three strided copies and two in-place rotations); and its
    // backward, dqkv = [RoPEᵀ(dq) | RoPEᵀ(dk) | dv], written whole
    void (*qkv_split_rope)(Act *q, Act *k, Act *v, const Act *qkv, const float *angles, int T, int H, int D);
    void (*qkv_merge_rope_backward)(Act *dqkv, const Act *dq, const Act *dk, const Act *dv, const float *angles, int T, int H, int D);
    void (*attention_forward)(Act *out, float *lse, const Act *q, const Act *k, const Act *v, const int32_t *cu, int nseq, int T,
                              int max_len, int Hq, int Hkv, int D, int causal);
    // dq, dk, dv written whole (no zeroing before: see ops.h)
    void (*attention_backward)(Act *dq, Act *dk, Act *dv, const Act *dout, const Act *out, const float *lse, const Act *q,
                               const Act *k, const Act *v, const int32_t *cu, int nseq, int T, int max_len, int Hq, int Hkv,
                               int D, int causal);
    // one query token per head against the first len cached positions (keys/values [len, Hkv, D]); no mask
    void (*attention_decode)(Act *out, const Act *q, const Act *k, const Act *v, int len, int Hq, int Hkv, int D);
    void (*embedding_forward)(Act *out, const int32_t *ids, const Act *table, int T, int C);
    // ids in host memory here: the GPU groups the tokens by id on the host before adding rows in order
    void (*embedding_backward)(float *dtable, const Act *dout, const int32_t *ids_host, int T, int C);
    void (*cross_entropy_rows)(float *losses, const Act *logits, const int32_t *targets, int T, int V);  // 0 where ignored
    // dlogits may be logits itself (in place)
    void (*cross_entropy_backward)(Act *dlogits, const Act *logits, const int32_t *targets, int T, int V, float scale);
    // both at once, the rows' losses (0 where ignored) and dlogits (may be logits): on the GPU one pass of
    // statistics over the logits instead of two
    void (*cross_entropy_fused)(float *losses, Act *dlogits, const Act *logits, const int32_t *targets, int T, int V, float scale);
    // optimizer state is fp32 in backend memory; param (the weights in storage type) is rewritten from the
    // master when it is a separate copy (NULL: the master is the weight, as on cpu); the gradients are
    // read times grad_scale (gradient clipping)
    void (*adamw)(float *master, Act *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, float grad_scale, int64_t t);
    // the same for several tensors of a flat optimizer vector in one pass (NULL: one adamw call each): segment s
    // updates seg[s].n elements at offset seg[s].off of master, grad, m and v, its weights at seg[s].param, with
    // weight decay seg[s].wd (the optimizer's small tensors: one launch for the ~100-200 norm weights and biases
    // that each took a launch of a few microseconds)
    void (*adamw_segments)(float *master, const float *grad, float *m, float *v, const AdamSeg *seg, int nseg, float lr, float beta1,
                           float beta2, float eps, float grad_scale, int64_t t);
    double (*sum_squares)(const float *x, size_t n);  // in a fixed order: the same on every run
} Backend;

extern const Backend backend_cpu;
// The cpu ops with every activation and weight rounded to bf16 after each write: what bf16 storage alone
// costs in accuracy, measurable without a GPU (--device cpu-bf16).
extern const Backend backend_cpu_bf16;
// The CUDA backend (NULL in a build without it); cuda_init must have succeeded before it is used.
const Backend *backend_cuda(void);
// With LLAVA_PROFILE=FILE (CUDA: device time per op, written at exit), forget what was timed so far.
void backend_profile_reset(void);
// "cpu" or "cuda" -> the backend, initialising the device; NULL with a message in err otherwise.
const Backend *backend_get(const char *name, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
