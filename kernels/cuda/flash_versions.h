// flash_versions.h: the flash attention kernels behind cuda_attention_forward/backward (attention.cu), by
// version, and the tuner that picks among them by timing (LLAVA_FLASH=tune, flash_tune.cu).
#pragma once
#include "ops_cuda.h"

int cuda_flash_forward(int version, bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu,
                       int nseq, int max_len, int Hq, int Hkv, int D, int causal);
int cuda_flash_backward(int version, bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const float *lse, const float *drow,
                        const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu, int nseq, int max_len, int Hq, int Hkv,
                        int D, int causal);
// versions 4-8 (flash_wgmma.cu): -1 where the GPU is not compute capability 9.0 or the build has no sm_90a
int cuda_flash_wgmma_forward(int version, bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu, int nseq,
                             int T, int max_len, int Hq, int Hkv, int D, int causal);
int cuda_flash_wgmma_backward(int version, bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const float *lse, const float *drow, const bf16 *q,
                              const bf16 *k, const bf16 *v, const int32_t *cu, int nseq, int T, int max_len, int Hq, int Hkv, int D,
                              int causal);
// version 9 (flash_bwd_fused.cuh): dK, dV and dQ in one pass, dQ summed with atomics into dq_acc (fp32 [T, Hq, D],
// the caller's scratch); -1 where version 4 would be
int cuda_flash_fused_backward(float *dq_acc, bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const float *lse, const float *drow,
                              const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu, int nseq, int T, int max_len, int Hq,
                              int Hkv, int D, int causal);

// LLAVA_FLASH=tune: the call runs the version (and softmax, loads) picked for its shape -- on the first call of
// a shape, after timing every candidate on that call's inputs. false where nothing is tuned here (not compute
// capability 9.0, or a head dim other than 64 and 128): the caller runs its usual version.
bool flash_tuned_forward(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu, int nseq, int T,
                         int max_len, int Hq, int Hkv, int D, int causal);
bool flash_tuned_backward(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const bf16 *out, const float *lse, const float *drow, const bf16 *q,
                          const bf16 *k, const bf16 *v, const int32_t *cu, int nseq, int T, int max_len, int Hq, int Hkv, int D,
                          int causal);
// the version a call takes by default (attention.cu's flash_for without LLAVA_FLASH): the tuner's reference
int flash_default_version(int forward, int D);
