// backend_cpu.c: the fp32 reference backend: host memory and the ops of kernels/cpu/.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/util.h"
#include "../backend.h"
#include "../ops.h"

#define F(x) ((float *)(x))
#define CF(x) ((const float *)(x))

static void *cpu_alloc(size_t bytes) { return xcalloc(bytes ? bytes : 1, 1); }
static void cpu_release(void *p) { free(p); }
static void cpu_zero(void *p, size_t bytes) { memset(p, 0, bytes); }
static void cpu_zero_floats(float *const *p, const size_t *n, int k) {
    for (int i = 0; i < k; i++) memset(p[i], 0, n[i] * sizeof(float));
}
static void cpu_poison(void *p, size_t bytes) { memset(p, 0xFF, bytes); }
static void cpu_copy(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
static void cpu_from_f32(Act *dst, const float *host, size_t n) { memcpy(dst, host, n * sizeof(float)); }
static size_t cpu_memory_peak(void) { return 0; }
static void cpu_to_f32(float *host, const Act *src, size_t n) { memcpy(host, src, n * sizeof(float)); }

static void cpu_side(int on) { (void)on; }
static void cpu_mark(int k) { (void)k; }
static void cpu_join(void) {}
static void cpu_add(Act *out, const Act *a, const Act *b, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) F(out)[i] = CF(a)[i] + CF(b)[i];
}
static void cpu_copy2d(Act *dst, size_t dld, const Act *src, size_t sld, size_t rows, size_t cols) {
    for (size_t r = 0; r < rows; r++) memcpy(F(dst) + r * dld, CF(src) + r * sld, cols * sizeof(float));
}
static void cpu_gather(Act *dst, const Act *src, const int32_t *idx, int n, int C) {
    for (int i = 0; i < n; i++) memcpy(F(dst) + (size_t)i * C, CF(src) + (size_t)idx[i] * C, (size_t)C * sizeof(float));
}
static void cpu_scatter(Act *dst, const Act *src, const int32_t *idx, int n, int C) {
    for (int i = 0; i < n; i++) memcpy(F(dst) + (size_t)idx[i] * C, CF(src) + (size_t)i * C, (size_t)C * sizeof(float));
}
static void cpu_sum_rows(float *dst, const Act *src, const int32_t *idx, int n, int C) {
    for (int i = 0; i < n; i++)
        for (int c = 0; c < C; c++) dst[c] += CF(src)[(size_t)idx[i] * C + c];
}
// for y = R(θ)·x: dθ_j = Σ_heads dy_j·(−y_{j+D/2}) + dy_{j+D/2}·y_j
static void cpu_rope_angle_grad(float *dang, const Act *y, const Act *dy, const int32_t *idx, int n, int H, int D) {
    int half = D / 2;
    for (int i = 0; i < n; i++)
        for (int h = 0; h < H; h++) {
            const float *yy = CF(y) + ((size_t)idx[i] * H + h) * D, *dd = CF(dy) + ((size_t)idx[i] * H + h) * D;
            for (int j = 0; j < half; j++) dang[j] += -dd[j] * yy[j + half] + dd[j + half] * yy[j];
        }
}

static void mm_f(Act *out, const Act *inp, const Act *w, const Act *bias, int N, int K, int M) { matmul_forward(F(out), CF(inp), CF(w), CF(bias), N, K, M); }
// the set flags: the outputs zeroed, then accumulated into (the same values an overwrite gives)
static void mm_b(Act *dinp, float *dw, float *dbias, const Act *dout, const Act *inp, const Act *w, int N, int K, int M, int set) {
    if (dinp && (set & MM_SET_DINP)) memset(dinp, 0, (size_t)N * K * sizeof(float));
    if (dw && (set & MM_SET_DW)) memset(dw, 0, (size_t)M * K * sizeof(float));
    if (dbias && (set & MM_SET_DW)) memset(dbias, 0, (size_t)M * sizeof(float));
    matmul_backward(F(dinp), dw, dbias, CF(dout), CF(inp), CF(w), N, K, M);
}
static void ln_f(Act *out, float *mean, float *rstd, const Act *inp, const Act *w, const Act *b, int N, int C, float eps) {
    layernorm_forward(F(out), mean, rstd, CF(inp), CF(w), CF(b), N, C, eps);
}
static void ln_b(Act *dinp, float *dw, float *db, const Act *dout, const Act *inp, const Act *w, const float *mean, const float *rstd, int N, int C) {
    layernorm_backward(F(dinp), dw, db, CF(dout), CF(inp), CF(w), mean, rstd, N, C);
}
static void rms_f(Act *out, float *rstd, const Act *inp, const Act *w, int N, int C, float eps) { rmsnorm_forward(F(out), rstd, CF(inp), CF(w), N, C, eps); }
static void rms_b(Act *dinp, float *dw, const Act *dout, const Act *inp, const Act *w, const float *rstd, int N, int C) {
    rmsnorm_backward(F(dinp), dw, CF(dout), CF(inp), CF(w), rstd, N, C);
}
static void gelu_f(Act *out, const Act *inp, size_t n) { gelu_forward(F(out), CF(inp), n); }
static void gelu_b(Act *dinp, const Act *dout, const Act *inp, size_t n) { gelu_backward(F(dinp), CF(dout), CF(inp), n); }
static void swi_f(Act *out, const Act *gu, int N, int Fw) { swiglu_forward(F(out), CF(gu), N, Fw); }
static void swi_b(Act *dgu, const Act *dout, const Act *gu, int N, int Fw) { swiglu_backward(F(dgu), CF(dout), CF(gu), N, Fw); }
static void rope_f(Act *x, const float *ang, int T, int H, int D) { rope_forward(F(x), ang, T, H, D); }
static void rope_b(Act *dx, const float *ang, int T, int H, int D) { rope_backward(F(dx), ang, T, H, D); }
// the fused forms are the separate ops in sequence on the cpu (same results as calling them one by one)
static void add_rms_f(Act *sum, Act *out, float *rstd, const Act *a, const Act *b, const Act *w, int N, int C, float eps) {
    cpu_add(sum, a, b, (size_t)N * C);
    rms_f(out, rstd, sum, w, N, C, eps);
}
static void add_ln_f(Act *sum, Act *out, float *mean, float *rstd, const Act *a, const Act *b, const Act *w, const Act *bias, int N,
                     int C, float eps) {
    cpu_add(sum, a, b, (size_t)N * C);
    ln_f(out, mean, rstd, sum, w, bias, N, C, eps);
}
static void rms_rope_f(Act *out, float *rstd, const Act *inp, const Act *w, const float *ang, int T, int H, int D, float eps) {
    rms_f(out, rstd, inp, w, T * H, D, eps);
    rope_f(out, ang, T, H, D);
}
static void rms_rope_b(Act *dinp, float *dw, Act *dout, const Act *inp, const Act *w, const float *rstd, const float *ang, int T, int H,
                       int D) {
    rope_b(dout, ang, T, H, D);  // (in place: dout is scratch)
    memset(dinp, 0, (size_t)T * H * D * sizeof(float));
    rms_b(dinp, dw, dout, inp, w, rstd, T * H, D);
}
// the fp32 residual forms: on the cpu the residual already is fp32, so the plain ops on the same rows
#define A_(x) ((Act *)(x))
#define CA_(x) ((const Act *)(x))
static void widen(float *dst, const Act *src, size_t n) { memcpy(dst, src, n * sizeof(float)); }
static void narrow(Act *dst, const float *src, size_t n) { memcpy(dst, src, n * sizeof(float)); }
static void add_r32(float *out, const float *a, const Act *b, size_t n) { cpu_add(A_(out), CA_(a), b, n); }
static void rms_f32(Act *out, float *rstd, const float *inp, const Act *w, int N, int C, float eps) { rms_f(out, rstd, CA_(inp), w, N, C, eps); }
static void add_rms_f32(float *sum, Act *out, float *rstd, const float *a, const Act *b, const Act *w, int N, int C, float eps) {
    add_rms_f(A_(sum), out, rstd, CA_(a), b, w, N, C, eps);
}
static void rms_b32(float *dinp, Act *dinp_stored, float *dw, const Act *dout, const float *inp, const Act *w, const float *rstd, int N,
                    int C) {
    rms_b(A_(dinp), dw, dout, CA_(inp), w, rstd, N, C);
    if (dinp && dinp_stored) narrow(dinp_stored, dinp, (size_t)N * C);
}
static void ln_f32(Act *out, float *mean, float *rstd, const float *inp, const Act *w, const Act *b, int N, int C, float eps) {
    ln_f(out, mean, rstd, CA_(inp), w, b, N, C, eps);
}
static void add_ln_f32(float *sum, Act *out, float *mean, float *rstd, const float *a, const Act *b, const Act *w, const Act *bias,
                       int N, int C, float eps) {
    add_ln_f(A_(sum), out, mean, rstd, CA_(a), b, w, bias, N, C, eps);
}
static void ln_b32(float *dinp, Act *dinp_stored, float *dw, float *db, const Act *dout, const float *inp, const Act *w,
                   const float *mean, const float *rstd, int N, int C) {
    ln_b(A_(dinp), dw, db, dout, CA_(inp), w, mean, rstd, N, C);
    if (dinp && dinp_stored) narrow(dinp_stored, dinp, (size_t)N * C);
}
static void qkv_split(Act *q, Act *k, Act *v, const Act *qkv, const float *ang, int T, int H, int D) {
    size_t C = (size_t)H * D;
    rope_forward_strided(F(q), C, CF(qkv), 3 * C, ang, T, H, D);
    rope_forward_strided(F(k), C, CF(qkv) + C, 3 * C, ang, T, H, D);
    cpu_copy2d(v, C, (const Act *)(CF(qkv) + 2 * C), 3 * C, (size_t)T, C);
}
static void qkv_merge_b(Act *dqkv, const Act *dq, const Act *dk, const Act *dv, const float *ang, int T, int H, int D) {
    size_t C = (size_t)H * D;
    rope_backward_strided(F(dqkv), 3 * C, CF(dq), C, ang, T, H, D);
    rope_backward_strided(F(dqkv) + C, 3 * C, CF(dk), C, ang, T, H, D);
    cpu_copy2d((Act *)(F(dqkv) + 2 * C), 3 * C, dv, C, (size_t)T, C);
}
static void att_f(Act *out, float *lse, const Act *q, const Act *k, const Act *v, const int32_t *cu, int nseq, int T, int max_len,
                  int Hq, int Hkv, int D, int causal) {
    (void)T; (void)max_len;
    attention_forward(F(out), lse, CF(q), CF(k), CF(v), cu, nseq, Hq, Hkv, D, causal);
}
static void att_b(Act *dq, Act *dk, Act *dv, const Act *dout, const Act *out, const float *lse, const Act *q, const Act *k, const Act *v,
                  const int32_t *cu, int nseq, int T, int max_len, int Hq, int Hkv, int D, int causal) {
    (void)T; (void)max_len;
    attention_backward(F(dq), F(dk), F(dv), CF(dout), CF(out), lse, CF(q), CF(k), CF(v), cu, nseq, Hq, Hkv, D, causal);
}
static void att_dec(Act *out, const Act *q, const Act *k, const Act *v, int len, int Hq, int Hkv, int D) {
    attention_decode(F(out), CF(q), CF(k), CF(v), len, Hq, Hkv, D);
}
static void emb_f(Act *out, const int32_t *ids, const Act *table, int T, int C) { embedding_forward(F(out), ids, CF(table), T, C); }
static void emb_b(float *dtable, const Act *dout, const int32_t *ids_host, int T, int C) { embedding_backward(dtable, CF(dout), ids_host, T, C); }
static void ce_rows(float *losses, const Act *logits, const int32_t *targets, int T, int V) { cross_entropy_rows(losses, CF(logits), targets, T, V); }
static void ce_b(Act *dlogits, const Act *logits, const int32_t *targets, int T, int V, float scale) {
    cross_entropy_backward(F(dlogits), CF(logits), targets, T, V, scale);
}
static void ce_fused(float *losses, Act *dlogits, const Act *logits, const int32_t *targets, int T, int V, float scale) {
    ce_rows(losses, logits, targets, T, V);  // first: dlogits may be the logits
    ce_b(dlogits, logits, targets, T, V, scale);
}

// On the cpu the fp32 weights are the masters: there is no separate copy to rewrite (param is NULL).
static void opt_adamw(float *master, Act *param, const float *grad, float *m, float *v, size_t n, float lr, float b1, float b2,
                      float eps, float wd, float gs, int64_t t) {
    (void)param;
    adamw_step(master, grad, m, v, n, lr, b1, b2, eps, wd, gs, t);
}
static double opt_sum_squares(const float *x, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

const Backend backend_cpu = {
    .name = "cpu", .esize = sizeof(float),
    .alloc = cpu_alloc, .release = cpu_release, .zero = cpu_zero, .zero_floats = cpu_zero_floats, .poison = cpu_poison, .upload = cpu_copy, .download = cpu_copy,
    .side = cpu_side, .mark = cpu_mark, .wait_mark = cpu_mark, .join = cpu_join,
    .from_f32 = cpu_from_f32, .to_f32 = cpu_to_f32, .memory_peak = cpu_memory_peak,
    .add = cpu_add, .copy2d = cpu_copy2d, .gather_rows = cpu_gather, .scatter_rows = cpu_scatter, .sum_rows = cpu_sum_rows,
    .rope_angle_grad = cpu_rope_angle_grad,
    .matmul_forward = mm_f, .matmul_backward = mm_b, .layernorm_forward = ln_f, .layernorm_backward = ln_b,
    .rmsnorm_forward = rms_f, .rmsnorm_backward = rms_b,
    .add_rmsnorm_forward = add_rms_f, .add_layernorm_forward = add_ln_f, .rmsnorm_rope_forward = rms_rope_f,
    .rmsnorm_rope_backward = rms_rope_b,
    .widen = widen, .narrow = narrow, .add_r32 = add_r32, .rmsnorm_forward_r32 = rms_f32, .add_rmsnorm_forward_r32 = add_rms_f32,
    .rmsnorm_backward_r32 = rms_b32, .layernorm_forward_r32 = ln_f32, .add_layernorm_forward_r32 = add_ln_f32,
    .layernorm_backward_r32 = ln_b32,
    .gelu_forward = gelu_f, .gelu_backward = gelu_b,
    .swiglu_forward = swi_f, .swiglu_backward = swi_b, .rope_forward = rope_f, .rope_backward = rope_b,
    .qkv_split_rope = qkv_split, .qkv_merge_rope_backward = qkv_merge_b,
    .attention_forward = att_f, .attention_backward = att_b, .attention_decode = att_dec, .embedding_forward = emb_f, .embedding_backward = emb_b,
    .cross_entropy_rows = ce_rows, .cross_entropy_backward = ce_b, .cross_entropy_fused = ce_fused,
    .adamw = opt_adamw, .sum_squares = opt_sum_squares,
};

// ---- cpu-bf16: the fp32 ops with every activation and weight rounded to bf16 after each write ----
// An emulation of the CUDA backend's storage on the CPU (not of its arithmetic): it separates what bf16
// storage costs in accuracy from what the CUDA kernels add, and runs where no GPU is.
#include "../../common/dtype.h"

static void round_bf16(Act *x, size_t n) {
    float *f = F(x);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) f[i] = bf16_to_f32(f32_to_bf16(f[i]));
}
static void e_from_f32(Act *dst, const float *host, size_t n) { memcpy(dst, host, n * sizeof(float)); round_bf16(dst, n); }
static void e_add(Act *out, const Act *a, const Act *b, size_t n) { cpu_add(out, a, b, n); round_bf16(out, n); }
static void e_mm_f(Act *out, const Act *inp, const Act *w, const Act *bias, int N, int K, int M) { mm_f(out, inp, w, bias, N, K, M); round_bf16(out, (size_t)N * M); }
static void e_mm_b(Act *dinp, float *dw, float *dbias, const Act *dout, const Act *inp, const Act *w, int N, int K, int M, int set) {
    mm_b(dinp, dw, dbias, dout, inp, w, N, K, M, set);
    if (dinp) round_bf16(dinp, (size_t)N * K);
}
static void e_ln_f(Act *out, float *mean, float *rstd, const Act *inp, const Act *w, const Act *b, int N, int C, float eps) {
    ln_f(out, mean, rstd, inp, w, b, N, C, eps);
    round_bf16(out, (size_t)N * C);
}
static void e_ln_b(Act *dinp, float *dw, float *db, const Act *dout, const Act *inp, const Act *w, const float *mean, const float *rstd, int N, int C) {
    ln_b(dinp, dw, db, dout, inp, w, mean, rstd, N, C);
    if (dinp) round_bf16(dinp, (size_t)N * C);
}
static void e_rms_f(Act *out, float *rstd, const Act *inp, const Act *w, int N, int C, float eps) { rms_f(out, rstd, inp, w, N, C, eps); round_bf16(out, (size_t)N * C); }
static void e_rms_b(Act *dinp, float *dw, const Act *dout, const Act *inp, const Act *w, const float *rstd, int N, int C) {
    rms_b(dinp, dw, dout, inp, w, rstd, N, C);
    if (dinp) round_bf16(dinp, (size_t)N * C);
}
// as the CUDA kernels: the sum rounded, the norm taken of the rounded sum; norm and RoPE rounded once at the end
static void e_add_rms_f(Act *sum, Act *out, float *rstd, const Act *a, const Act *b, const Act *w, int N, int C, float eps) {
    e_add(sum, a, b, (size_t)N * C);
    e_rms_f(out, rstd, sum, w, N, C, eps);
}
static void e_add_ln_f(Act *sum, Act *out, float *mean, float *rstd, const Act *a, const Act *b, const Act *w, const Act *bias, int N,
                       int C, float eps) {
    e_add(sum, a, b, (size_t)N * C);
    e_ln_f(out, mean, rstd, sum, w, bias, N, C, eps);
}
static void e_rms_rope_f(Act *out, float *rstd, const Act *inp, const Act *w, const float *ang, int T, int H, int D, float eps) {
    rms_rope_f(out, rstd, inp, w, ang, T, H, D, eps);
    round_bf16(out, (size_t)T * H * D);
}
// as the CUDA kernel: the un-rotated gradient kept in fp32, d inp rounded once
static void e_rms_rope_b(Act *dinp, float *dw, Act *dout, const Act *inp, const Act *w, const float *rstd, const float *ang, int T, int H,
                         int D) {
    rms_rope_b(dinp, dw, dout, inp, w, rstd, ang, T, H, D);
    round_bf16(dinp, (size_t)T * H * D);
}
// the fp32 residual: the residual rows (sums, dinp) left unrounded, the norms' outputs rounded as before
static void e_narrow(Act *dst, const float *src, size_t n) { narrow(dst, src, n); round_bf16(dst, n); }
static void e_rms_f32(Act *out, float *rstd, const float *inp, const Act *w, int N, int C, float eps) { e_rms_f(out, rstd, CA_(inp), w, N, C, eps); }
static void e_add_rms_f32(float *sum, Act *out, float *rstd, const float *a, const Act *b, const Act *w, int N, int C, float eps) {
    add_r32(sum, a, b, (size_t)N * C);
    e_rms_f32(out, rstd, sum, w, N, C, eps);
}
static void e_ln_f32(Act *out, float *mean, float *rstd, const float *inp, const Act *w, const Act *b, int N, int C, float eps) {
    e_ln_f(out, mean, rstd, CA_(inp), w, b, N, C, eps);
}
static void e_rms_b32(float *dinp, Act *dinp_stored, float *dw, const Act *dout, const float *inp, const Act *w, const float *rstd,
                      int N, int C) {
    rms_b32(dinp, NULL, dw, dout, inp, w, rstd, N, C);
    if (dinp && dinp_stored) e_narrow(dinp_stored, dinp, (size_t)N * C);
}
static void e_ln_b32(float *dinp, Act *dinp_stored, float *dw, float *db, const Act *dout, const float *inp, const Act *w,
                     const float *mean, const float *rstd, int N, int C) {
    ln_b32(dinp, NULL, dw, db, dout, inp, w, mean, rstd, N, C);
    if (dinp && dinp_stored) e_narrow(dinp_stored, dinp, (size_t)N * C);
}
static void e_add_ln_f32(float *sum, Act *out, float *mean, float *rstd, const float *a, const Act *b, const Act *w, const Act *bias,
                         int N, int C, float eps) {
    add_r32(sum, a, b, (size_t)N * C);
    e_ln_f32(out, mean, rstd, sum, w, bias, N, C, eps);
}
// (V and dv are copies of rounded values: rounding the rotated parts is enough)
static void e_qkv_split(Act *q, Act *k, Act *v, const Act *qkv, const float *ang, int T, int H, int D) {
    qkv_split(q, k, v, qkv, ang, T, H, D);
    round_bf16(q, (size_t)T * H * D);
    round_bf16(k, (size_t)T * H * D);
}
static void e_qkv_merge_b(Act *dqkv, const Act *dq, const Act *dk, const Act *dv, const float *ang, int T, int H, int D) {
    qkv_merge_b(dqkv, dq, dk, dv, ang, T, H, D);
    round_bf16(dqkv, (size_t)T * 3 * H * D);
}
static void e_gelu_f(Act *out, const Act *inp, size_t n) { gelu_f(out, inp, n); round_bf16(out, n); }
static void e_gelu_b(Act *dinp, const Act *dout, const Act *inp, size_t n) { gelu_b(dinp, dout, inp, n); round_bf16(dinp, n); }
static void e_swi_f(Act *out, const Act *gu, int N, int Fw) { swi_f(out, gu, N, Fw); round_bf16(out, (size_t)N * Fw); }
static void e_swi_b(Act *dgu, const Act *dout, const Act *gu, int N, int Fw) { swi_b(dgu, dout, gu, N, Fw); round_bf16(dgu, (size_t)N * 2 * Fw); }
static void e_rope_f(Act *x, const float *ang, int T, int H, int D) { rope_f(x, ang, T, H, D); round_bf16(x, (size_t)T * H * D); }
static void e_rope_b(Act *dx, const float *ang, int T, int H, int D) { rope_b(dx, ang, T, H, D); round_bf16(dx, (size_t)T * H * D); }
static void e_att_f(Act *out, float *lse, const Act *q, const Act *k, const Act *v, const int32_t *cu, int nseq, int T, int max_len,
                    int Hq, int Hkv, int D, int causal) {
    att_f(out, lse, q, k, v, cu, nseq, T, max_len, Hq, Hkv, D, causal);
    round_bf16(out, (size_t)T * Hq * D);
}
static void e_att_b(Act *dq, Act *dk, Act *dv, const Act *dout, const Act *out, const float *lse, const Act *q, const Act *k, const Act *v,
                    const int32_t *cu, int nseq, int T, int max_len, int Hq, int Hkv, int D, int causal) {
    att_b(dq, dk, dv, dout, out, lse, q, k, v, cu, nseq, T, max_len, Hq, Hkv, D, causal);
    if (dq) round_bf16(dq, (size_t)T * Hq * D);
    if (dk) round_bf16(dk, (size_t)T * Hkv * D);
    if (dv) round_bf16(dv, (size_t)T * Hkv * D);
}
static void e_att_dec(Act *out, const Act *q, const Act *k, const Act *v, int len, int Hq, int Hkv, int D) {
    att_dec(out, q, k, v, len, Hq, Hkv, D);
    round_bf16(out, (size_t)Hq * D);
}
static void e_ce_b(Act *dlogits, const Act *logits, const int32_t *targets, int T, int V, float scale) {
    ce_b(dlogits, logits, targets, T, V, scale);
    round_bf16(dlogits, (size_t)T * V);
}
static void e_ce_fused(float *losses, Act *dlogits, const Act *logits, const int32_t *targets, int T, int V, float scale) {
    ce_rows(losses, logits, targets, T, V);
    e_ce_b(dlogits, logits, targets, T, V, scale);
}

static void e_adamw(float *master, Act *param, const float *grad, float *m, float *v, size_t n, float lr, float b1, float b2,
                    float eps, float wd, float gs, int64_t t) {
    adamw_step(master, grad, m, v, n, lr, b1, b2, eps, wd, gs, t);
    if (param) { memcpy(param, master, n * sizeof(float)); round_bf16(param, n); }
}

// one e_adamw per segment: the same results as the optimizer's calls one by one (tested: the segments cover
// what those calls did)
static void e_adamw_segments(float *master, const float *grad, float *m, float *v, const AdamSeg *seg, int nseg, float lr, float b1,
                             float b2, float eps, float gs, int64_t t) {
    for (int s = 0; s < nseg; s++)
        e_adamw(master + seg[s].off, seg[s].param, grad + seg[s].off, m + seg[s].off, v + seg[s].off, seg[s].n, lr, b1, b2, eps, seg[s].wd,
                gs, t);
}

const Backend backend_cpu_bf16 = {
    .name = "cpu-bf16", .esize = sizeof(float),
    .alloc = cpu_alloc, .release = cpu_release, .zero = cpu_zero, .zero_floats = cpu_zero_floats, .poison = cpu_poison, .upload = cpu_copy, .download = cpu_copy,
    .side = cpu_side, .mark = cpu_mark, .wait_mark = cpu_mark, .join = cpu_join,
    .from_f32 = e_from_f32, .to_f32 = cpu_to_f32, .memory_peak = cpu_memory_peak,
    .add = e_add, .copy2d = cpu_copy2d, .gather_rows = cpu_gather, .scatter_rows = cpu_scatter, .sum_rows = cpu_sum_rows,
    .rope_angle_grad = cpu_rope_angle_grad,
    .matmul_forward = e_mm_f, .matmul_backward = e_mm_b, .layernorm_forward = e_ln_f, .layernorm_backward = e_ln_b,
    .rmsnorm_forward = e_rms_f, .rmsnorm_backward = e_rms_b,
    .add_rmsnorm_forward = e_add_rms_f, .add_layernorm_forward = e_add_ln_f, .rmsnorm_rope_forward = e_rms_rope_f,
    .rmsnorm_rope_backward = e_rms_rope_b,
    .widen = widen, .narrow = e_narrow, .add_r32 = add_r32, .rmsnorm_forward_r32 = e_rms_f32, .add_rmsnorm_forward_r32 = e_add_rms_f32,
    .rmsnorm_backward_r32 = e_rms_b32, .layernorm_forward_r32 = e_ln_f32, .add_layernorm_forward_r32 = e_add_ln_f32,
    .layernorm_backward_r32 = e_ln_b32,
    .gelu_forward = e_gelu_f, .gelu_backward = e_gelu_b,
    .swiglu_forward = e_swi_f, .swiglu_backward = e_swi_b, .rope_forward = e_rope_f, .rope_backward = e_rope_b,
    .qkv_split_rope = e_qkv_split, .qkv_merge_rope_backward = e_qkv_merge_b,
    .attention_forward = e_att_f, .attention_backward = e_att_b, .attention_decode = e_att_dec, .embedding_forward = emb_f, .embedding_backward = emb_b,
    .cross_entropy_rows = ce_rows, .cross_entropy_backward = e_ce_b, .cross_entropy_fused = e_ce_fused,
    .adamw = e_adamw, .adamw_segments = e_adamw_segments, .sum_squares = opt_sum_squares,
};
