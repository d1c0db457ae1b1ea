// backend_cuda.cu: the Backend table (kernels/backend.h) of the CUDA backend: bf16 activations and
// weights in device memory, the ops of ops_cuda.h, and the glue kernels the graph needs (residual adds,
// strided and indexed row copies, the CLS-angle gradient).
#include <stdlib.h>

#include "../backend.h"
#include "common_cuda.cuh"
#include "ops_cuda.h"

#define B(x) ((bf16_t *)(x))
#define CB(x) ((const bf16_t *)(x))
#define U(x) ((bf16 *)(x))
#define CU(x) ((const bf16 *)(x))

static unsigned nblocks(size_t n) { return (unsigned)((n + 255) / 256); }

// out = a + b, the residual add: R bf16, or fp32 for the fp32 residual stream (b, the branch, is bf16 either way)
template <typename R>
__global__ static void add_k(R *out, const R *a, const bf16_t *b, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) st(out, i, ld(a, i) + ld(b, i));
}
__global__ static void copy2d_k(bf16_t *dst, size_t dld, const bf16_t *src, size_t sld, size_t rows, size_t cols) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < rows * cols) dst[(i / cols) * dld + i % cols] = src[(i / cols) * sld + i % cols];
}
// the same 8 elements (16 bytes) a thread with 32-bit index arithmetic, for cols, strides and pointers in 16-byte
// units (the tower's q/k/v columns of qkv: the element-wise kernel, a 64-bit division per element, ran at ~1 TB/s)
__global__ static void copy2d_k8(uint4 *dst, unsigned dld8, const uint4 *src, unsigned sld8, unsigned rows, unsigned cols8) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * cols8) return;
    unsigned r = i / cols8, c = i % cols8;
    dst[(size_t)r * dld8 + c] = src[(size_t)r * sld8 + c];
}
__global__ static void gather_k(bf16_t *dst, const bf16_t *src, const int32_t *idx, int n, int C) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (size_t)n * C) dst[i] = src[(size_t)idx[i / C] * C + i % C];
}
__global__ static void scatter_k(bf16_t *dst, const bf16_t *src, const int32_t *idx, int n, int C) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (size_t)n * C) dst[(size_t)idx[i / C] * C + i % C] = src[i];
}
// both over 16-byte pieces (C8 = C / 8 of them a row) with 32-bit index arithmetic; SCATTER: dst[idx[i]] = src[i]
template <bool SCATTER>
__global__ static void rows_k8(uint4 *dst, const uint4 *src, const int32_t *idx, unsigned n, unsigned C8) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * C8) return;
    unsigned r = i / C8, c = i % C8;
    size_t far = (size_t)idx[r] * C8 + c;
    if (SCATTER) dst[far] = src[i];
    else dst[i] = src[far];
}
// the 16-byte kernels apply: C a multiple of 8, both pointers 16-byte aligned, n·C/8 under 2³¹
static bool rows8_ok(const void *a, const void *b, int n, int C) {
    return C % 8 == 0 && ((uintptr_t)a | (uintptr_t)b) % 16 == 0 && (size_t)n * C / 8 < (1u << 31) && !cuda_safe_kernels();
}
__global__ static void sum_rows_k(float *dst, const bf16_t *src, const int32_t *idx, int n, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += ld(src, (size_t)idx[i] * C + c);
    dst[c] += s;
}
// dang[j] += Σ_rows Σ_heads −dy_j·y_{j+D/2} + dy_{j+D/2}·y_j: thread (x, y) of a 64 × 8 block sums angle j = 64·block + x
// over heads y, y + 8, ...; the 8 sums are added in order (deterministic). (A head a thread left 16 dependent
// iterations at the tower's 16 heads: 8 µs a call, 48 calls a step.)
enum { RAG_GROUPS = 8 };
__global__ static void rope_angle_grad_k(float *dang, const bf16_t *y, const bf16_t *dy, const int32_t *idx, int n, int H, int D) {
    __shared__ float part[RAG_GROUPS][64];
    int j = blockIdx.x * 64 + threadIdx.x, half = D / 2;
    float s = 0.0f;
    if (j < half)
        for (int i = 0; i < n; i++)
            for (int h = threadIdx.y; h < H; h += RAG_GROUPS) {
                size_t b = ((size_t)idx[i] * H + h) * D;
                s += -ld(dy, b + j) * ld(y, b + j + half) + ld(dy, b + j + half) * ld(y, b + j);
            }
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y || j >= half) return;
    float t = 0.0f;
    for (int g = 0; g < RAG_GROUPS; g++) t += part[g][threadIdx.x];
    dang[j] += t;
}

static void *g_alloc(size_t bytes) { void *p = cuda_alloc(bytes); cuda_memset0(p, bytes); return p; }
static void g_release(void *p) { cuda_free(p); }
static void g_zero(void *p, size_t bytes) { PROF(cuda_memset0(p, bytes), "zero %zu bytes", bytes); }
static void g_poison(void *p, size_t bytes) { cuda_memset_ff(p, bytes); }
// (LLAVA_SAFE_KERNELS=1: one memset an array, as before session 19's one-launch kernel)
static void zero_each(float *const *p, const size_t *n, int k) {
    for (int i = 0; i < k; i++) cuda_memset0(p[i], n[i] * sizeof(float));
}
static void g_zero_floats(float *const *p, const size_t *n, int k) {
    PROF(cuda_safe_kernels() ? zero_each(p, n, k) : cuda_zero_floats(p, n, k), "zero %d small arrays", k);
}
static void g_upload(void *dst, const void *host, size_t bytes) { PROF(cuda_upload(dst, host, bytes), "upload"); }
static void g_download(void *host, const void *src, size_t bytes) { PROF(cuda_download(host, src, bytes), "download"); }
// Host fp32 <-> device bf16 converts on the host (round to nearest even), so no device temporary is
// allocated per call (the pixels of every step come this way: converted straight into the staging ring).
static void g_from_f32(Act *dst, const float *host, size_t n) {
    size_t bytes = n * sizeof(__nv_bfloat16);
    __nv_bfloat16 *staged = (__nv_bfloat16 *)cuda_stage(bytes), *tmp = staged ? staged : (__nv_bfloat16 *)xmalloc(bytes + 1);
    for (size_t i = 0; i < n; i++) tmp[i] = __float2bfloat16_rn(host[i]);
    if (staged) {
        PROF(cuda_stage_upload(dst, staged, bytes), "upload");
        return;
    }
    cuda_upload(dst, tmp, bytes);
    free(tmp);
}
static void g_to_f32(float *host, const Act *src, size_t n) {
    __nv_bfloat16 *tmp = (__nv_bfloat16 *)xmalloc(n * sizeof(__nv_bfloat16) + 1);
    cuda_download(tmp, src, n * sizeof(__nv_bfloat16));
    for (size_t i = 0; i < n; i++) host[i] = __bfloat162float(tmp[i]);
    free(tmp);
}
static void g_add(Act *out, const Act *a, const Act *b, size_t n) { if (n) PROF((add_k<bf16_t><<<nblocks(n), 256, 0, g_stream>>>(B(out), CB(a), CB(b), n)), "add %zu", n); LAUNCH_CHECK(); }
static void g_copy2d(Act *dst, size_t dld, const Act *src, size_t sld, size_t rows, size_t cols) {
    if (!rows || !cols) return;
    if (cols % 8 == 0 && dld % 8 == 0 && sld % 8 == 0 && ((uintptr_t)dst | (uintptr_t)src) % 16 == 0 && rows * cols / 8 < (1u << 31) &&
        dld / 8 < (1u << 31) && sld / 8 < (1u << 31) && !cuda_safe_kernels())
        PROF((copy2d_k8<<<nblocks(rows * cols / 8), 256, 0, g_stream>>>((uint4 *)dst, (unsigned)(dld / 8), (const uint4 *)src,
                                                                       (unsigned)(sld / 8), (unsigned)rows, (unsigned)(cols / 8))),
             "copy2d %zux%zu", rows, cols);
    else PROF((copy2d_k<<<nblocks(rows * cols), 256, 0, g_stream>>>(B(dst), dld, CB(src), sld, rows, cols)), "copy2d %zux%zu", rows, cols);
    LAUNCH_CHECK();
}
// gather_rows (dst[i] = src[idx[i]]) and scatter_rows (dst[idx[i]] = src[i])
template <bool SCATTER>
static void g_rows(Act *dst, const Act *src, const int32_t *idx, int n, int C) {
    if (!n) return;
    const char *what = SCATTER ? "scatter_rows %dx%d" : "gather_rows %dx%d";
    if (rows8_ok(dst, src, n, C))
        PROF((rows_k8<SCATTER><<<nblocks((size_t)n * C / 8), 256, 0, g_stream>>>((uint4 *)dst, (const uint4 *)src, idx, (unsigned)n,
                                                                               (unsigned)C / 8)), what, n, C);
    else if (SCATTER) PROF((scatter_k<<<nblocks((size_t)n * C), 256, 0, g_stream>>>(B(dst), CB(src), idx, n, C)), what, n, C);
    else PROF((gather_k<<<nblocks((size_t)n * C), 256, 0, g_stream>>>(B(dst), CB(src), idx, n, C)), what, n, C);
    LAUNCH_CHECK();
}
static void g_sum_rows(float *dst, const Act *src, const int32_t *idx, int n, int C) { PROF((sum_rows_k<<<(C + 127) / 128, 128, 0, g_stream>>>(dst, CB(src), idx, n, C)), "sum_rows %dx%d", n, C); LAUNCH_CHECK(); }
static void g_rope_angle_grad(float *dang, const Act *y, const Act *dy, const int32_t *idx, int n, int H, int D) {
    PROF((rope_angle_grad_k<<<(D / 2 + 63) / 64, dim3(64, RAG_GROUPS), 0, g_stream>>>(dang, CB(y), CB(dy), idx, n, H, D)),
         "rope_angle_grad %d rows", n);
    LAUNCH_CHECK();
}

static void mm_f(Act *out, const Act *inp, const Act *w, const Act *bias, int N, int K, int M) { PROF(cuda_matmul_forward(U(out), CU(inp), CU(w), CU(bias), N, K, M), "matmul_forward %dx%d.%dx%d^T%s", N, K, M, K, bias ? " +bias" : ""); }
static void mm_b(Act *dinp, float *dw, float *dbias, const Act *dout, const Act *inp, const Act *w, int N, int K, int M, int set) {
    PROF(cuda_matmul_backward(U(dinp), dw, dbias, CU(dout), CU(inp), CU(w), N, K, M, set), "matmul_backward %dx%d.%dx%d^T%s%s%s%s", N, K,
         M, K, dinp ? "" : " (no dinp)", dbias ? " +dbias" : "", set & MM_SET_DINP ? " (dinp set)" : "", set & MM_SET_DW ? " (dw set)" : "");
}
static void ln_f(Act *out, float *mean, float *rstd, const Act *inp, const Act *w, const Act *b, int N, int C, float eps) {
    PROF(cuda_layernorm_forward(U(out), mean, rstd, CU(inp), CU(w), CU(b), N, C, eps), "layernorm_forward %dx%d", N, C);
}
static void ln_b(Act *dinp, float *dw, float *db, const Act *dout, const Act *inp, const Act *w, const float *mean, const float *rstd, int N, int C) {
    PROF(cuda_layernorm_backward(U(dinp), dw, db, CU(dout), CU(inp), CU(w), mean, rstd, N, C), "layernorm_backward %dx%d", N, C);
}
static void rms_f(Act *out, float *rstd, const Act *inp, const Act *w, int N, int C, float eps) { PROF(cuda_rmsnorm_forward(U(out), rstd, CU(inp), CU(w), N, C, eps), "rmsnorm_forward %dx%d", N, C); }
static void rms_b(Act *dinp, float *dw, const Act *dout, const Act *inp, const Act *w, const float *rstd, int N, int C) {
    PROF(cuda_rmsnorm_backward(U(dinp), dw, CU(dout), CU(inp), CU(w), rstd, N, C), "rmsnorm_backward %dx%d", N, C);
}
static void add_rms_f(Act *sum, Act *out, float *rstd, const Act *a, const Act *b, const Act *w, int N, int C, float eps) {
    PROF(cuda_add_rmsnorm_forward(U(sum), U(out), rstd, CU(a), CU(b), CU(w), N, C, eps), "add_rmsnorm_forward %dx%d", N, C);
}
static void add_ln_f(Act *sum, Act *out, float *mean, float *rstd, const Act *a, const Act *b, const Act *w, const Act *bias, int N,
                     int C, float eps) {
    PROF(cuda_add_layernorm_forward(U(sum), U(out), mean, rstd, CU(a), CU(b), CU(w), CU(bias), N, C, eps), "add_layernorm_forward %dx%d", N, C);
}
static void rms_rope_f(Act *out, float *rstd, const Act *inp, const Act *w, const float *ang, int T, int H, int D, float eps) {
    PROF(cuda_rmsnorm_rope_forward(U(out), rstd, CU(inp), CU(w), ang, T, H, D, eps), "rmsnorm_rope_forward %dx%dx%d", T, H, D);
}
static void rms_rope_b(Act *dinp, float *dw, Act *dout, const Act *inp, const Act *w, const float *rstd, const float *ang, int T, int H,
                       int D) {
    PROF(cuda_rmsnorm_rope_backward(U(dinp), dw, U(dout), CU(inp), CU(w), rstd, ang, T, H, D), "rmsnorm_rope_backward %dx%dx%d", T, H, D);
}
// the fp32 residual stream's forms (backend.h)
static void g_widen(float *dst, const Act *src, size_t n) { PROF(cuda_bf16_to_f32(dst, CU(src), n), "widen %zu", n); }
static void g_narrow(Act *dst, const float *src, size_t n) { PROF(cuda_f32_to_bf16(U(dst), src, n), "narrow %zu", n); }
static void g_add_r32(float *out, const float *a, const Act *b, size_t n) {
    if (n) PROF((add_k<float><<<nblocks(n), 256, 0, g_stream>>>(out, a, CB(b), n)), "add_r32 %zu", n);
    LAUNCH_CHECK();
}
static void rms_f32(Act *out, float *rstd, const float *inp, const Act *w, int N, int C, float eps) {
    PROF(cuda_rmsnorm_forward_r32(U(out), rstd, inp, CU(w), N, C, eps), "rmsnorm_forward_r32 %dx%d", N, C);
}
static void add_rms_f32(float *sum, Act *out, float *rstd, const float *a, const Act *b, const Act *w, int N, int C, float eps) {
    PROF(cuda_add_rmsnorm_forward_r32(sum, U(out), rstd, a, CU(b), CU(w), N, C, eps), "add_rmsnorm_forward_r32 %dx%d", N, C);
}
static void rms_b32(float *dinp, Act *dinp_stored, float *dw, const Act *dout, const float *inp, const Act *w, const float *rstd, int N,
                    int C) {
    PROF(cuda_rmsnorm_backward_r32(dinp, U(dinp_stored), dw, CU(dout), inp, CU(w), rstd, N, C), "rmsnorm_backward_r32 %dx%d", N, C);
}
static void ln_f32(Act *out, float *mean, float *rstd, const float *inp, const Act *w, const Act *b, int N, int C, float eps) {
    PROF(cuda_layernorm_forward_r32(U(out), mean, rstd, inp, CU(w), CU(b), N, C, eps), "layernorm_forward_r32 %dx%d", N, C);
}
static void add_ln_f32(float *sum, Act *out, float *mean, float *rstd, const float *a, const Act *b, const Act *w, const Act *bias,
                       int N, int C, float eps) {
    PROF(cuda_add_layernorm_forward_r32(sum, U(out), mean, rstd, a, CU(b), CU(w), CU(bias), N, C, eps), "add_layernorm_forward_r32 %dx%d",
         N, C);
}
static void ln_b32(float *dinp, Act *dinp_stored, float *dw, float *db, const Act *dout, const float *inp, const Act *w,
                   const float *mean, const float *rstd, int N, int C) {
    PROF(cuda_layernorm_backward_r32(dinp, U(dinp_stored), dw, db, CU(dout), inp, CU(w), mean, rstd, N, C), "layernorm_backward_r32 %dx%d",
         N, C);
}
static void gelu_f(Act *out, const Act *inp, size_t n) { PROF(cuda_gelu_forward(U(out), CU(inp), n), "gelu_forward %zu", n); }
static void gelu_b(Act *dinp, const Act *dout, const Act *inp, size_t n) { PROF(cuda_gelu_backward(U(dinp), CU(dout), CU(inp), n), "gelu_backward %zu", n); }
static void swi_f(Act *out, const Act *gu, int N, int F) { PROF(cuda_swiglu_forward(U(out), CU(gu), N, F), "swiglu_forward %dx%d", N, F); }
static void swi_b(Act *dgu, const Act *dout, const Act *gu, int N, int F) { PROF(cuda_swiglu_backward(U(dgu), CU(dout), CU(gu), N, F), "swiglu_backward %dx%d", N, F); }
static void rope_f(Act *x, const float *ang, int T, int H, int D) { PROF(cuda_rope_forward(U(x), ang, T, H, D), "rope_forward %dx%dx%d", T, H, D); }
static void rope_b(Act *dx, const float *ang, int T, int H, int D) { PROF(cuda_rope_backward(U(dx), ang, T, H, D), "rope_backward %dx%dx%d", T, H, D); }
static void qkv_split(Act *q, Act *k, Act *v, const Act *qkv, const float *ang, int T, int H, int D) {
    PROF(cuda_qkv_split_rope(U(q), U(k), U(v), CU(qkv), ang, T, H, D), "qkv_split_rope %dx%dx%d", T, H, D);
}
static void qkv_merge_b(Act *dqkv, const Act *dq, const Act *dk, const Act *dv, const float *ang, int T, int H, int D) {
    PROF(cuda_qkv_merge_rope_backward(U(dqkv), CU(dq), CU(dk), CU(dv), ang, T, H, D), "qkv_merge_rope_backward %dx%dx%d", T, H, D);
}
static void att_f(Act *out, float *lse, const Act *q, const Act *k, const Act *v, const int32_t *cu, int nseq, int T, int max_len,
                  int Hq, int Hkv, int D, int causal) {
    PROF(cuda_attention_forward(U(out), lse, CU(q), CU(k), CU(v), cu, nseq, T, max_len, Hq, Hkv, D, causal),
         "attention_forward T %d (%d seq) %dq/%dkv d%d %s", T, nseq, Hq, Hkv, D, causal ? "causal" : "bidir");
}
static void att_b(Act *dq, Act *dk, Act *dv, const Act *dout, const Act *out, const float *lse, const Act *q, const Act *k, const Act *v,
                  const int32_t *cu, int nseq, int T, int max_len, int Hq, int Hkv, int D, int causal) {
    PROF(cuda_attention_backward(U(dq), U(dk), U(dv), CU(dout), CU(out), lse, CU(q), CU(k), CU(v), cu, nseq, T, max_len, Hq, Hkv, D, causal),
         "attention_backward T %d (%d seq) %dq/%dkv d%d %s", T, nseq, Hq, Hkv, D, causal ? "causal" : "bidir");
}
static void att_dec(Act *out, const Act *q, const Act *k, const Act *v, int len, int Hq, int Hkv, int D) {
    PROF(cuda_attention_decode(U(out), CU(q), CU(k), CU(v), len, Hq, Hkv, D), "attention_decode");
}
static void emb_f(Act *out, const int32_t *ids, const Act *table, int T, int C) { PROF(cuda_embedding_forward(U(out), ids, CU(table), T, C), "embedding_forward %dx%d", T, C); }
static void emb_b(float *dtable, const Act *dout, const int32_t *ids_host, int T, int C) { PROF(cuda_embedding_backward(dtable, CU(dout), ids_host, T, C), "embedding_backward %dx%d", T, C); }
static void ce_rows(float *losses, const Act *logits, const int32_t *targets, int T, int V) { PROF(cuda_cross_entropy_forward(losses, CU(logits), targets, T, V), "cross_entropy_forward %dx%d", T, V); }
static void ce_b(Act *dlogits, const Act *logits, const int32_t *targets, int T, int V, float scale) {
    PROF(cuda_cross_entropy_backward(U(dlogits), CU(logits), targets, T, V, scale), "cross_entropy_backward %dx%d", T, V);
}
static void ce_fused(float *losses, Act *dlogits, const Act *logits, const int32_t *targets, int T, int V, float scale) {
    PROF(cuda_cross_entropy_fused(losses, U(dlogits), CU(logits), targets, T, V, scale), "cross_entropy_fused %dx%d", T, V);
}

__global__ static void sumsq_k(double *part, const float *x, size_t n) {
    __shared__ double sh[256];
    double s = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) s += (double)x[i] * x[i];
    sh[threadIdx.x] = s;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if ((int)threadIdx.x < o) sh[threadIdx.x] += sh[threadIdx.x + o];
        __syncthreads();
    }
    if (threadIdx.x == 0) part[blockIdx.x] = sh[0];
}

static void o_adamw(float *master, Act *param, const float *grad, float *m, float *v, size_t n, float lr, float b1, float b2,
                    float eps, float wd, float gs, int64_t t) {
    PROF(cuda_adamw_step(master, U(param), grad, m, v, n, lr, b1, b2, eps, wd, gs, t), "adamw %zu", n);
}
static void o_adamw_segments(float *master, const float *grad, float *m, float *v, const AdamSeg *seg, int nseg, float lr, float b1,
                             float b2, float eps, float gs, int64_t t) {
    PROF(cuda_adamw_segments(master, grad, m, v, seg, nseg, lr, b1, b2, eps, gs, t), "adamw %d small tensors", nseg);
}
// Fixed grid, per-block partials summed on the host in block order: the same result on every run.
static double o_sum_squares(const float *x, size_t n) {
    enum { NB = 256 };
    double *part = (double *)cuda_scratch(NB * sizeof(double)), host[NB];
    PROF((sumsq_k<<<NB, 256, 0, g_stream>>>(part, x, n)), "sum_squares %zu", n);
    LAUNCH_CHECK();
    cuda_download(host, part, sizeof host);
    double s = 0.0;
    for (int i = 0; i < NB; i++) s += host[i];
    return s;
}

static Backend make_table(void) {
    Backend b = {};
    b.name = "cuda";
    b.esize = 2;
    b.alloc = g_alloc; b.release = g_release; b.zero = g_zero; b.zero_floats = g_zero_floats; b.poison = g_poison; b.upload = g_upload; b.download = g_download;
    b.from_f32 = g_from_f32; b.to_f32 = g_to_f32; b.memory_peak = cuda_memory_peak;
    b.side = cuda_side; b.mark = cuda_mark; b.wait_mark = cuda_wait_mark; b.join = cuda_join;
    b.add = g_add; b.copy2d = g_copy2d; b.gather_rows = g_rows<false>; b.scatter_rows = g_rows<true>; b.sum_rows = g_sum_rows;
    b.rope_angle_grad = g_rope_angle_grad;
    b.matmul_forward = mm_f; b.matmul_backward = mm_b; b.layernorm_forward = ln_f; b.layernorm_backward = ln_b;
    b.rmsnorm_forward = rms_f; b.rmsnorm_backward = rms_b;
    b.add_rmsnorm_forward = add_rms_f; b.add_layernorm_forward = add_ln_f; b.rmsnorm_rope_forward = rms_rope_f; b.rmsnorm_rope_backward = rms_rope_b; b.gelu_forward = gelu_f; b.gelu_backward = gelu_b;
    b.widen = g_widen; b.narrow = g_narrow; b.add_r32 = g_add_r32; b.rmsnorm_forward_r32 = rms_f32; b.add_rmsnorm_forward_r32 = add_rms_f32;
    b.rmsnorm_backward_r32 = rms_b32; b.layernorm_forward_r32 = ln_f32; b.add_layernorm_forward_r32 = add_ln_f32;
    b.layernorm_backward_r32 = ln_b32;
    b.swiglu_forward = swi_f; b.swiglu_backward = swi_b; b.rope_forward = rope_f; b.rope_backward = rope_b;
    b.qkv_split_rope = qkv_split; b.qkv_merge_rope_backward = qkv_merge_b;
    b.attention_forward = att_f; b.attention_backward = att_b; b.attention_decode = att_dec;
    b.embedding_forward = emb_f; b.embedding_backward = emb_b;
    b.cross_entropy_rows = ce_rows; b.cross_entropy_backward = ce_b; b.cross_entropy_fused = ce_fused;
    b.adamw = o_adamw; b.adamw_segments = o_adamw_segments; b.sum_squares = o_sum_squares;
    return b;
}

extern "C" const Backend *backend_cuda(void) {
    static Backend b = make_table();
    return &b;
}
