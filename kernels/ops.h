// ops.h: the backend-neutral operations the model graph is written against (spec/model.md).
// Row-major tensors; shapes in comments. Backward functions ACCUMULATE (+=) into their gradient
// outputs, so gradient accumulation over micro-batches and shared inputs need no extra code (except
// the activations' and attention's backwards, which overwrite: see gelu_backward, attention_backward); a
// NULL gradient pointer means "not needed" (a frozen input) and skips that work.
// kernels/cpu/ implements them in fp32 (OpenMP, OpenBLAS); kernels/cuda/ in bf16.
#pragma once
#include <stddef.h>
#include <stdint.h>

// out[N,M] = inp[N,K] · w[M,K]ᵀ (+ bias[M])
void matmul_forward(float *out, const float *inp, const float *w, const float *bias, int N, int K, int M);
// dinp[N,K] += dout·w; dw[M,K] += doutᵀ·inp; dbias[M] += Σ_n dout
void matmul_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp, const float *w, int N,
                     int K, int M);

// LayerNorm over C with biased variance; saves mean[N], rstd[N] for the backward.
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w, const float *b, int N,
                       int C, float eps);
void layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp, const float *w,
                        const float *mean, const float *rstd, int N, int C);

// RMSNorm: out = x · rsqrt(mean(x²) + eps) · w; saves rstd[N].
void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int N, int C, float eps);
void rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w, const float *rstd,
                      int N, int C);

// Exact GELU, 0.5·x·(1 + erf(x/√2)), elementwise over n. Unlike the other backward ops, the two activations'
// backwards overwrite their input gradient (every caller's buffer would be zeroed first: one memory pass less).
void gelu_forward(float *out, const float *inp, size_t n);
void gelu_backward(float *dinp, const float *dout, const float *inp, size_t n);

// SwiGLU on a fused [gate; up] row: out[N,F] = silu(gu[:, :F]) · gu[:, F:], gu[N, 2F] (F: FFN width).
void swiglu_forward(float *out, const float *gu, int N, int F);
void swiglu_backward(float *dgu, const float *dout, const float *gu, int N, int F);

// Rotary embedding, non-interleaved (rotate_half), in place on x[T, H, D] with angles[T, D/2]:
// (x_j, x_{j+D/2}) -> (x_j·c − x_{j+D/2}·s, x_{j+D/2}·c + x_j·s). The backward rotates by −angle.
void rope_forward(float *x, const float *angles, int T, int H, int D);
void rope_backward(float *dx, const float *angles, int T, int H, int D);
// The same from rows of src into rows of dst, each src_ld / dst_ld floats apart (the vision tower's Q and K
// columns of its fused [T, 3·H·D] QKV product, and their gradients back into it).
void rope_forward_strided(float *dst, size_t dst_ld, const float *src, size_t src_ld, const float *angles, int T, int H, int D);
void rope_backward_strided(float *dst, size_t dst_ld, const float *src, size_t src_ld, const float *angles, int T, int H, int D);
// 1-D LLM angles: angles[t, i] = pos_t · theta^(−2i/D), positions restarting at each cu_seqlens boundary.
void rope_angles_1d(float *angles, const int32_t *cu_seqlens, int nseq, int D, double theta);

// Attention over packed sub-sequences (cu_seqlens[nseq+1]): causal (LLM) or bidirectional (ViT)
// block-diagonal, GQA (query head h reads kv head h / (Hq/Hkv)), scale 1/√D. Saves lse[T, Hq]
// (log-sum-exp of each softmax row) for the backward, which writes dq, dk and dv whole (any of them
// NULL: not wanted; every row of [0, cu_seqlens[nseq]) belongs to a sub-sequence, so none is left as it was).
// q[T,Hq,D], k/v[T,Hkv,D], out[T,Hq,D]
void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *cu_seqlens,
                       int nseq, int Hq, int Hkv, int D, int causal);
void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                        const float *q, const float *k, const float *v, const int32_t *cu_seqlens, int nseq, int Hq,
                        int Hkv, int D, int causal);

// Token embedding: out[T,C] = table[ids[t]]; backward scatters into dtable[V,C].
void embedding_forward(float *out, const int32_t *ids, const float *table, int T, int C);
void embedding_backward(float *dtable, const float *dout, const int32_t *ids, int T, int C);

// Cross-entropy of logits[T,V] against targets[T] (−100: ignored), mean over the counted rows.
// Returns the mean loss and the count; the backward writes dlogits = (softmax − onehot)·scale for
// counted rows (scale = 1/count for the mean) and 0 elsewhere.
double cross_entropy_forward(const float *logits, const int32_t *targets, int T, int V, int64_t *count);
void cross_entropy_backward(float *dlogits, const float *logits, const int32_t *targets, int T, int V, float scale);

// AdamW (decoupled weight decay), step t ≥ 1 with bias correction, over n parameters.
// grad_scale multiplies every gradient first (the clipping coefficient: no separate pass over them)
void adamw_step(float *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1, float beta2,
                float eps, float weight_decay, float grad_scale, int64_t t);

// One new query token against a key/value cache (generation): q[Hq,D], k/v[len, Hkv, D] holding
// positions 0..len-1 (the new token's own key included), out[Hq,D]. Same math as the causal
// attention_forward row of the last position.
void attention_decode(float *out, const float *q, const float *k, const float *v, int len, int Hq, int Hkv, int D);

// Per-row cross-entropy losses (0 for ignored rows), the building block of the backends' loss.
void cross_entropy_rows(float *losses, const float *logits, const int32_t *targets, int T, int V);
