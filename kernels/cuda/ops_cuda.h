// ops_cuda.h: the ops of kernels/ops.h on the GPU, in the CUDA backend's precision: bf16 weights and
// activations (stored as uint16_t bit patterns in this C interface), fp32 accumulation, fp32 norm and
// softmax statistics, fp32 gradient buffers for the weights and fp32 master weights in the optimizer.
// Every pointer is device memory. Backward functions ACCUMULATE into weight gradients (fp32) and
// into input gradients (bf16), like the CPU ops (but the attention backward, which writes dq, dk and dv
// whole); a NULL gradient pointer skips that work. All calls
// are asynchronous on the backend's stream; cuda_sync() waits and reports the first error.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "../backend.h"  // (AdamSeg)

#ifdef __cplusplus
extern "C" {
#endif

typedef uint16_t bf16;

// ---- runtime ----
int cuda_init(int device, char *err, size_t errlen);   // 0 on success
void cuda_set_errors_fatal(int on);  // 1 (the default): the first error ends the run, named; 0: kept for cuda_sync
int cuda_sync(char *err, size_t errlen);                // 0, or the first CUDA/cuBLAS error
void *cuda_alloc(size_t bytes);                         // dies on failure
void *cuda_try_alloc(size_t bytes);  // NULL where it does not fit (cuda_alloc ends the run)
void cuda_free(void *p);
size_t cuda_memory_peak(void);                          // the most device memory allocated at once, in bytes
// the device's name with '_' for blanks ("NVIDIA_H100_80GB_HBM3"): the tuners' keys in LLAVA_TUNE_FILE
const char *cuda_device_tag(void);
// LLAVA_GEMM=tune (matmul.cu): each product shape's first cuBLASLt candidates timed, the fastest kept; 1 on, 0 off,
// -1 the environment's
void cuda_matmul_set_tune(int on);
// the bias gradient in the dW product's epilogue (cuBLASLt's BGRADB) where dW and dbias are written over (1, the
// default) or summed by a kernel of ours (0, LLAVA_FUSED_DBIAS=0); -1 the environment's
void cuda_matmul_set_fused_dbias(int on);
void cuda_upload(void *dst, const void *src, size_t bytes);  // stream-ordered; src (pageable) reusable at return
// The pinned staging ring behind cuda_upload (runtime.cu): room for bytes (NULL: too large, copy directly), to
// be filled and handed to cuda_stage_upload before the next cuda_stage or cuda_upload.
void *cuda_stage(size_t bytes);
void cuda_stage_upload(void *dst, const void *p, size_t bytes);
void cuda_download(void *dst, const void *src, size_t bytes);  // waits for the stream (and the side stream's work)
// A side stream for work that may overlap the main stream's (Backend.side/mark/wait_mark/join): side(1)
// sends the calls that follow there, starting after all the main stream has been given; side(0) back.
// mark(k) (k < 256) records the point reached by the stream in use, wait_mark(k) holds the stream in use
// until the last recorded point k (nothing when k was never recorded); join holds the main stream until
// the side stream's work so far is done (cuda_sync and cuda_download join first).
void cuda_side(int on);
void cuda_mark(int k);
void cuda_wait_mark(int k);
void cuda_join(void);
void cuda_memset0(void *p, size_t bytes);
void cuda_memset_ff(void *p, size_t bytes);
void cuda_f32_to_bf16(bf16 *dst, const float *src, size_t n);   // device to device, round to nearest even
void cuda_bf16_to_f32(float *dst, const bf16 *src, size_t n);

// ---- data parallel over NCCL (nccl.cu; libnccl.so.2 opened at run time) ----
// Rank 0 makes the communicator's id (hex, 257 bytes with the NUL) for the others; then every rank joins.
int cuda_nccl_unique_id(char *hex, size_t hexlen, char *err, size_t errlen);
int cuda_nccl_init(int rank, int world, const char *hex, char *err, size_t errlen);
// In place on device fp32 vectors of world·per floats: chunk r (of rank r) = Σ_ranks chunk r · scale; and
// every chunk to every rank. Both wait for the result by polling; watch(ctx) returning nonzero (with a
// message in err) aborts the communicator: a dead rank cannot block the others for ever.
typedef int (*CudaNcclWatch)(void *ctx, char *err, size_t errlen);
int cuda_nccl_reduce_scatter(float *x, size_t per, float scale, CudaNcclWatch watch, void *ctx, char *err, size_t errlen);
// x[a, b) reduced to the ranks owning its elements (rank r owns [r·per, (r+1)·per)), scaled there; on
// the NCCL stream after everything queued so far on the backend's stream, which does not wait for it
int cuda_nccl_reduce_part_start(float *x, size_t a, size_t b, size_t per, float scale, char *err, size_t errlen);
// The backend's stream waits for every part started; then waits for that stream like the others.
int cuda_nccl_reduce_part_wait(CudaNcclWatch watch, void *ctx, char *err, size_t errlen);
// v[0..k) (k <= 16, host) summed over the ranks, in place
int cuda_nccl_allreduce_f64(double *v, int k, CudaNcclWatch watch, void *ctx, char *err, size_t errlen);
// count[i] bf16 elements at ptr[i] (device) from rank root[i] to every rank, in place: one broadcast
// each, in one group
int cuda_nccl_broadcast(void *const *ptr, const size_t *count, const int *root, int n, CudaNcclWatch watch, void *ctx, char *err,
                        size_t errlen);
void cuda_nccl_free(void);

// ---- matmul (cuBLASLt, fp32 compute) ----
// out[N,M] = inp[N,K] · w[M,K]ᵀ (+ bias[M]); bias bf16.
void cuda_matmul_forward(bf16 *out, const bf16 *inp, const bf16 *w, const bf16 *bias, int N, int K, int M);
// dinp[N,K] += dout·w (bf16); dw[M,K] += doutᵀ·inp (fp32); dbias[M] += Σ_n dout (fp32). set (backend.h's
// MM_SET_DINP = 1, MM_SET_DW = 2): dinp, or dw and dbias, overwritten instead (the product's beta 0: the old
// contents never read)
void cuda_matmul_backward(bf16 *dinp, float *dw, float *dbias, const bf16 *dout, const bf16 *inp, const bf16 *w, int N,
                          int K, int M, int set);

// ---- norms (statistics in fp32) ----
void cuda_rmsnorm_forward(bf16 *out, float *rstd, const bf16 *inp, const bf16 *w, int N, int C, float eps);
void cuda_rmsnorm_backward(bf16 *dinp, float *dw, const bf16 *dout, const bf16 *inp, const bf16 *w, const float *rstd,
                           int N, int C);
// the residual add before a norm, in the same pass: sum = a + b (bf16), out = norm(sum)
void cuda_add_rmsnorm_forward(bf16 *sum, bf16 *out, float *rstd, const bf16 *a, const bf16 *b, const bf16 *w, int N, int C,
                              float eps);
void cuda_add_layernorm_forward(bf16 *sum, bf16 *out, float *mean, float *rstd, const bf16 *a, const bf16 *b, const bf16 *w,
                                const bf16 *bias, int N, int C, float eps);
// out = RoPE(RMSNorm(inp)·w) per (token, head) row of [T, H, D], angles [T, D/2] (QK-norm then RoPE in one pass)
void cuda_rmsnorm_rope_forward(bf16 *out, float *rstd, const bf16 *inp, const bf16 *w, const float *angles, int T, int H, int D,
                               float eps);
// its backward: dinp (overwritten) from dout, the rotated output's gradient (dout is scratch); dw += Σ
void cuda_rmsnorm_rope_backward(bf16 *dinp, float *dw, bf16 *dout, const bf16 *inp, const bf16 *w, const float *rstd,
                                const float *angles, int T, int H, int D);
void cuda_layernorm_forward(bf16 *out, float *mean, float *rstd, const bf16 *inp, const bf16 *w, const bf16 *b, int N,
                            int C, float eps);
void cuda_layernorm_backward(bf16 *dinp, float *dw, float *db, const bf16 *dout, const bf16 *inp, const bf16 *w,
                             const float *mean, const float *rstd, int N, int C);
// the same with the residual rows in fp32 (inp, sum and a, dinp; the fp32 residual stream): the same kernels on float rows;
// the backwards also write dinp rounded to bf16 into dinp16 unless it is NULL
void cuda_rmsnorm_forward_r32(bf16 *out, float *rstd, const float *inp, const bf16 *w, int N, int C, float eps);
void cuda_rmsnorm_backward_r32(float *dinp, bf16 *dinp16, float *dw, const bf16 *dout, const float *inp, const bf16 *w,
                               const float *rstd, int N, int C);
void cuda_add_rmsnorm_forward_r32(float *sum, bf16 *out, float *rstd, const float *a, const bf16 *b, const bf16 *w, int N, int C,
                                  float eps);
void cuda_layernorm_forward_r32(bf16 *out, float *mean, float *rstd, const float *inp, const bf16 *w, const bf16 *b, int N,
                                int C, float eps);
void cuda_add_layernorm_forward_r32(float *sum, bf16 *out, float *mean, float *rstd, const float *a, const bf16 *b,
                                    const bf16 *w, const bf16 *bias, int N, int C, float eps);
void cuda_layernorm_backward_r32(float *dinp, bf16 *dinp16, float *dw, float *db, const bf16 *dout, const float *inp,
                                 const bf16 *w, const float *mean, const float *rstd, int N, int C);
// rows per warp of the one-pass norm backwards (C = 256·k): n, 0 (as few as fill the card once), -1 (2, the
// measured default) or -2 (LLAVA_NORM_RPW's); for ops_check's comparison
void cuda_norm_set_rows_per_warp(int n);
// the norm backwards' one-pass kernel (1, the default) or the two-pass form (0, LLAVA_NORM_FUSED=0); -1 the environment's
void cuda_norm_set_fused(int on);

// ---- activations ----
void cuda_gelu_forward(bf16 *out, const bf16 *inp, size_t n);
void cuda_gelu_backward(bf16 *dinp, const bf16 *dout, const bf16 *inp, size_t n);
void cuda_swiglu_forward(bf16 *out, const bf16 *gu, int N, int F);
void cuda_swiglu_backward(bf16 *dgu, const bf16 *dout, const bf16 *gu, int N, int F);

// ---- rotary embedding, angles fp32 [T, D/2], in place on x[T, H, D] ----
void cuda_rope_forward(bf16 *x, const float *angles, int T, int H, int D);
void cuda_rope_backward(bf16 *dx, const float *angles, int T, int H, int D);
void cuda_qkv_split_rope(bf16 *q, bf16 *k, bf16 *v, const bf16 *qkv, const float *angles, int T, int H, int D);
void cuda_qkv_merge_rope_backward(bf16 *dqkv, const bf16 *dq, const bf16 *dk, const bf16 *dv, const float *angles, int T, int H, int D);

// ---- attention over packed sub-sequences (cu_seqlens device int32 [nseq+1]); lse fp32 [T, Hq] ----
// max_len: the longest sub-sequence (sizes the launch).
void cuda_attention_forward(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu_seqlens,
                            int nseq, int T, int max_len, int Hq, int Hkv, int D, int causal);
// Head dims 64 and 128 use the tensor-core flash kernels: version 2 (cp.async double buffering, ldmatrix
// operands), 3 (version 2 with 32 query rows per warp in the forward), 4 (version 2's schedule with the
// tile products on Hopper's wgmma; version 2 where the GPU is not compute capability 9.0), 5 (version 4
// overlapping the next tile's products with this tile's softmax or gradient products), 6 (two warpgroups
// per block sharing the streamed tiles, Q in registers in the forward), 7 (6's forward over 128 keys a step;
// v4's dK/dV kernel with v6's dQ kernel), 8 (warp-specialised: a producer warpgroup streaming the tiles,
// two consumers taking turns at the tensor cores; forward, dQ, and dK/dV at head dim 64), 9 (a backward
// in one pass, dQ by atomics), 1 (the first, synchronous tiles), or 0 for the warp-per-row kernels (tests,
// timing), for both directions; -2, the default, takes the fastest measured (attention.cu's flash_for: the
// forward of 7 at head dim 128 and 6 at 64, the backward of 7 at 128 and 5 at 64). LLAVA_FLASH=N sets it for
// a run, LLAVA_FLASH=FB the forward's F and backward's B. FLASH_TUNE (LLAVA_FLASH=tune): each shape's first
// call times the candidate versions on its own inputs and keeps the fastest whose outputs agree with the
// default's (flash_tune.cu; for benchmarks: timings decide, so runs may differ in the last bits).
// FLASH_CUDNN (LLAVA_FLASH=cudnn): forward and backward through cuDNN's fused attention where it runs
// (cudnn_attn.cu), else the default versions.
enum { FLASH_TUNE = -3, FLASH_CUDNN = -4 };
void cuda_attention_set_flash(int version);
// cudnn_attn.cu: the attention forward by cuDNN (libcudnn.so.9 opened at run time) for one sequence
// (cu_seqlens {0, T}), nseq of one length (nseq·max_len = T: a batch), or packed sequences of different lengths
// (cuDNN's ragged layout, 9.6 or later; cu_seqlens on the device); 0 when it ran, -1 with the caller's buffers untouched
// (no library, a shape its engines decline); cuda_cudnn_status says what happened last (loaded, a plan built or declined, and why)
int cuda_cudnn_attention_forward(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu_seqlens, int nseq,
                                 int T, int max_len, int Hq, int Hkv, int D, int causal);
// the backward likewise (dq, dk, dv written whole; out is the forward's output, lse its log-sum-exp [T, Hq])
int cuda_cudnn_attention_backward(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const bf16 *out, const float *lse, const bf16 *q,
                                  const bf16 *k, const bf16 *v, const int32_t *cu_seqlens, int nseq, int T, int max_len, int Hq, int Hkv,
                                  int D, int causal);
const char *cuda_cudnn_status(void);
// the backward's form asked for first: 1 cuDNN's dQ summed in fp32 (order may vary), 0 its deterministic one (the
// default), -1 the environment's (LLAVA_CUDNN_DQ_ACCUM)
void cuda_cudnn_set_dq_accum(int on);
// without a GPU: the graphs of the benches' shapes and the ragged layout's built by cuDNN for the device of a
// properties file up to compiling their kernels (a line each in report; *total tried); how many compiled, or -1
// where cuDNN cannot be had
int cuda_cudnn_check_graphs(const char *device_json, char *report, size_t len, int *total);
// versions 6-8's forward and 4, 5, 7 and 8's backward with the softmax in one FFMA and ex2 per score (LLAVA_FLASH_EXP2=1);
// -1: the environment's
void cuda_flash_set_exp2(int on);
// whether one of version 8's mbarrier waits gave up (its outputs wrong) since the last call; clears it
int cuda_flash_ws_timed_out(void);
int cuda_flash_ws_unread(void);  // whether a v8 kernel ran since the flag was last read
// version 8's forward and dQ loading K and V by TMA (LLAVA_WS_TMA=1); -1: the environment's
void cuda_flash_set_ws_tma(int on);
// LLAVA_PROFILE (profile.cu): forget the op times recorded so far, e.g. at the end of a warm-up.
void cuda_profile_reset(void);
void cuda_attention_backward(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const bf16 *out, const float *lse,
                             const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu_seqlens, int nseq, int T,
                             int max_len, int Hq, int Hkv, int D, int causal);
// One query token per head (q [Hq, D]) against the first len positions of a KV cache ([len, Hkv, D]).
void cuda_attention_decode(bf16 *out, const bf16 *q, const bf16 *k, const bf16 *v, int len, int Hq, int Hkv, int D);

// ---- embedding and loss ----
void cuda_embedding_forward(bf16 *out, const int32_t *ids, const bf16 *table, int T, int C);
void cuda_embedding_backward(float *dtable, const bf16 *dout, const int32_t *ids_host, int T, int C);  // ids in host memory
// Per-row losses (fp32, 0 for ignored rows) without materialising probabilities; the backward writes
// dlogits = (softmax − onehot)·scale for counted rows and 0 elsewhere.
void cuda_cross_entropy_forward(float *losses, const bf16 *logits, const int32_t *targets, int T, int V);
void cuda_cross_entropy_backward(bf16 *dlogits, const bf16 *logits, const int32_t *targets, int T, int V, float scale);
// both: the rows' losses and dlogits (which may be logits) from one pass of row statistics
void cuda_cross_entropy_fused(float *losses, bf16 *dlogits, const bf16 *logits, const int32_t *targets, int T, int V, float scale);

// ---- optimizer: fp32 masters and moments, fp32 gradients, the bf16 weights rewritten (RNE) ----
// n[i] floats at p[i] zeroed, for i < k, in one launch (Backend.zero_floats)
void cuda_zero_floats(float *const *p, const size_t *n, int k);
// AdamW over segments of flat vectors in one launch (Backend.adamw_segments); the same bits as cuda_adamw_step per segment
void cuda_adamw_segments(float *master, const float *grad, float *m, float *v, const AdamSeg *seg, int nseg, float lr, float beta1,
                         float beta2, float eps, float grad_scale, int64_t t);
void cuda_adamw_step(float *master, bf16 *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1,
                     float beta2, float eps, float weight_decay, float grad_scale, int64_t t);

#ifdef __cplusplus
}
#endif
