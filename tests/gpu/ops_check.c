// ops_check: every CUDA op (kernels/cuda/ops_cuda.h) against the fp32 CPU op of kernels/ops.h on the
// same inputs (random values that are exact in bf16, so both sides start from identical numbers), then
// timings at the 4B shapes. Exit status 1 when any check fails.
//   usage: ops_check [--no-time]
// Tolerances (relative L2 error ‖gpu − cpu‖ / ‖cpu‖): 2e-2 for bf16 outputs (one bf16 rounding is
// 2^-9 ≈ 2e-3 per element; chained ops in bf16 storage add a few), 1e-3 for fp32 outputs computed from
// bf16-exact inputs with fp32 accumulation (only the order of the sums differs).
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/dtype.h"
#include "../../common/rng.h"
#include "../../common/util.h"
#include "../../kernels/backend.h"
#include "../../kernels/cuda/ops_cuda.h"
#include "../../kernels/ops.h"

static int failures;
static uint64_t seed = 1;

static float *host_rand(size_t n, float scale) {  // bf16-exact values
    float *x = xmalloc(n * sizeof(float));
    rng_fill_normal(x, n, seed++, 0, scale);
    for (size_t i = 0; i < n; i++) x[i] = bf16_to_f32(f32_to_bf16(x[i]));
    return x;
}
static bf16 *dev_bf16(const float *x, size_t n) {
    float *d32 = cuda_alloc(n * sizeof(float));
    bf16 *d = cuda_alloc(n * sizeof(bf16));
    cuda_upload(d32, x, n * sizeof(float));
    cuda_f32_to_bf16(d, d32, n);
    cuda_free(d32);
    return d;
}
static float *dev_f32(const float *x, size_t n) {
    float *d = cuda_alloc(n * sizeof(float));
    if (x) cuda_upload(d, x, n * sizeof(float));
    else cuda_memset0(d, n * sizeof(float));
    return d;
}
static float *back_bf16(const bf16 *d, size_t n) {
    float *d32 = cuda_alloc(n * sizeof(float)), *h = xmalloc(n * sizeof(float));
    cuda_bf16_to_f32(d32, d, n);
    cuda_download(h, d32, n * sizeof(float));
    cuda_free(d32);
    return h;
}
static float *back_f32(const float *d, size_t n) {
    float *h = xmalloc(n * sizeof(float));
    cuda_download(h, d, n * sizeof(float));
    return h;
}

static void check(const char *what, const float *gpu, const float *cpu, size_t n, double tol) {
    double num = 0, den = 0;
    int finite = 1;
    for (size_t i = 0; i < n; i++) {
        finite &= isfinite(gpu[i]);
        num += ((double)gpu[i] - cpu[i]) * ((double)gpu[i] - cpu[i]);
        den += (double)cpu[i] * cpu[i];
    }
    double rel = sqrt(num / (den > 0 ? den : 1e-30));
    int ok = finite && rel <= tol;
    failures += !ok;
    printf("%-56s rel L2 %.2e (tolerance %.0e) %s\n", what, rel, tol, ok ? "ok" : "FAIL");
}

// check() of n bf16 (check_bf16) or fp32 (check_f32) values on the device against the CPU's, named by a printf format
static void check_back(float *host, const float *cpu, size_t n, double tol, const char *fmt, va_list ap) {
    char what[96];
    vsnprintf(what, sizeof what, fmt, ap);
    check(what, host, cpu, n, tol);
    free(host);
}
static void check_bf16(const bf16 *gpu, const float *cpu, size_t n, double tol, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    check_back(back_bf16(gpu, n), cpu, n, tol, fmt, ap);
    va_end(ap);
}
static void check_f32(const float *gpu, const float *cpu, size_t n, double tol, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    check_back(back_f32(gpu, n), cpu, n, tol, fmt, ap);
    va_end(ap);
}

static void sync_or_die(void) {
    char err[512];
    if (cuda_sync(err, sizeof err)) { printf("CUDA error: %s\n", err); exit(1); }
}

static const char *variant = "";  // appended to the kernel's name in attention_case's and matmul_case's lines (" exp2")

static void matmul_case(int N, int K, int M, int bias) {
    float *x = host_rand((size_t)N * K, 1), *w = host_rand((size_t)M * K, 0.05f), *b = bias ? host_rand(M, 0.1f) : NULL;
    float *dy = host_rand((size_t)N * M, 1);
    float *out = xcalloc((size_t)N * M, 4), *dx = xcalloc((size_t)N * K, 4), *dw = xcalloc((size_t)M * K, 4), *db = xcalloc(M, 4);
    matmul_forward(out, x, w, b, N, K, M);
    matmul_backward(dx, dw, bias ? db : NULL, dy, x, w, N, K, M);
    bf16 *gx = dev_bf16(x, (size_t)N * K), *gw = dev_bf16(w, (size_t)M * K), *gb = bias ? dev_bf16(b, M) : NULL,
         *gdy = dev_bf16(dy, (size_t)N * M), *gout = cuda_alloc((size_t)N * M * 2), *gdx = cuda_alloc((size_t)N * K * 2);
    cuda_memset0(gdx, (size_t)N * K * 2);
    float *gdw = dev_f32(NULL, (size_t)M * K), *gdb = dev_f32(NULL, M);
    cuda_matmul_forward(gout, gx, gw, gb, N, K, M);
    cuda_matmul_backward(gdx, gdw, bias ? gdb : NULL, gdy, gx, gw, N, K, M, 0);
    sync_or_die();
    check_bf16(gout, out, (size_t)N * M, 2e-2, "matmul %dx%dx%d%s forward%s", N, K, M, bias ? " +bias" : "", variant);
    check_bf16(gdx, dx, (size_t)N * K, 2e-2, "matmul %dx%dx%d dinp (bf16)%s", N, K, M, variant);
    check_f32(gdw, dw, (size_t)M * K, 1e-3, "matmul %dx%dx%d dw (fp32)%s", N, K, M, variant);
    if (bias) check_f32(gdb, db, M, 1e-3, "matmul dbias (fp32)%s", variant);
    // the overwriting forms: the outputs start as NaN, which an accumulation would keep
    cuda_memset_ff(gdx, (size_t)N * K * 2);
    cuda_memset_ff(gdw, (size_t)M * K * 4);
    cuda_memset_ff(gdb, (size_t)M * 4);
    cuda_matmul_backward(gdx, NULL, NULL, gdy, gx, gw, N, K, M, MM_SET_DINP);
    cuda_matmul_backward(NULL, gdw, bias ? gdb : NULL, gdy, gx, gw, N, K, M, MM_SET_DW);
    sync_or_die();
    check_bf16(gdx, dx, (size_t)N * K, 2e-2, "matmul %dx%dx%d dinp set (bf16)%s", N, K, M, variant);
    check_f32(gdw, dw, (size_t)M * K, 1e-3, "matmul %dx%dx%d dw set (fp32)%s", N, K, M, variant);
    if (bias) check_f32(gdb, db, M, 1e-3, "matmul dbias set (fp32)%s", variant);
    free(x); free(w); free(b); free(dy); free(out); free(dx); free(dw); free(db);
    cuda_free(gx); cuda_free(gw); cuda_free(gb); cuda_free(gdy); cuda_free(gout); cuda_free(gdx); cuda_free(gdw); cuda_free(gdb);
}

// off the bf16 grid: what fp32 residual rows hold (a kernel that rounds them to bf16 misses by ~1e-3)
static void off_grid(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] += x[i] * 1e-3f * (float)(i % 7 + 1);
}

// r32: the residual rows (input, dinp) in fp32, the _r32 entry points; dinp must then be as exact as fp32 (1e-5)
static void norm_case_r(int N, int C, int layer, int r32) {
    float *x = host_rand((size_t)N * C, 1), *w = host_rand(C, 1), *b = host_rand(C, 0.2f), *dy = host_rand((size_t)N * C, 1);
    for (int c = 0; c < C; c++) w[c] = bf16_to_f32(f32_to_bf16(1.0f + 0.1f * w[c]));
    // dx starts as a residual gradient (the backward adds to it), dw and db from zero
    float *y = xcalloc((size_t)N * C, 4), *mean = xcalloc(N, 4), *rstd = xcalloc(N, 4), *dx = host_rand((size_t)N * C, 1),
          *dw = xcalloc(C, 4), *db = xcalloc(C, 4);
    if (r32) off_grid(x, (size_t)N * C), off_grid(dx, (size_t)N * C);
    bf16 *gx = dev_bf16(x, (size_t)N * C), *gw = dev_bf16(w, C), *gb = dev_bf16(b, C), *gdy = dev_bf16(dy, (size_t)N * C),
         *gy = cuda_alloc((size_t)N * C * 2), *gdx = dev_bf16(dx, (size_t)N * C);
    float *gmean = dev_f32(NULL, N), *grstd = dev_f32(NULL, N), *gdw = dev_f32(NULL, C), *gdb = dev_f32(NULL, C);
    float *gx32 = r32 ? dev_f32(x, (size_t)N * C) : NULL, *gdx32 = r32 ? dev_f32(dx, (size_t)N * C) : NULL;
    bf16 *gdx16 = cuda_alloc((size_t)N * C * 2);  // the fp32 backward's rounded copy of dinp (NaN until written)
    cuda_memset_ff(gdx16, (size_t)N * C * 2);
    if (layer) {
        layernorm_forward(y, mean, rstd, x, w, b, N, C, 1e-5f);
        layernorm_backward(dx, dw, db, dy, x, w, mean, rstd, N, C);
        if (r32) {
            cuda_layernorm_forward_r32(gy, gmean, grstd, gx32, gw, gb, N, C, 1e-5f);
            cuda_layernorm_backward_r32(gdx32, gdx16, gdw, gdb, gdy, gx32, gw, gmean, grstd, N, C);
        } else {
            cuda_layernorm_forward(gy, gmean, grstd, gx, gw, gb, N, C, 1e-5f);
            cuda_layernorm_backward(gdx, gdw, gdb, gdy, gx, gw, gmean, grstd, N, C);
        }
    } else {
        rmsnorm_forward(y, rstd, x, w, N, C, 1e-6f);
        rmsnorm_backward(dx, dw, dy, x, w, rstd, N, C);
        if (r32) {
            cuda_rmsnorm_forward_r32(gy, grstd, gx32, gw, N, C, 1e-6f);
            cuda_rmsnorm_backward_r32(gdx32, gdx16, gdw, gdy, gx32, gw, grstd, N, C);
        } else {
            cuda_rmsnorm_forward(gy, grstd, gx, gw, N, C, 1e-6f);
            cuda_rmsnorm_backward(gdx, gdw, gdy, gx, gw, grstd, N, C);
        }
    }
    sync_or_die();
    const char *k = layer ? "layernorm" : "rmsnorm", *form = r32 ? " (fp32 rows)" : "";
    check_bf16(gy, y, (size_t)N * C, 2e-2, "%s %dx%d%s forward", k, N, C, form);
    check_f32(grstd, rstd, N, 1e-3, "%s rstd (fp32)", k);
    if (r32) check_f32(gdx32, dx, (size_t)N * C, 1e-5, "%s dinp (fp32)", k);
    if (r32) check_bf16(gdx16, dx, (size_t)N * C, 5e-3, "%s dinp's bf16 copy", k);
    else check_bf16(gdx, dx, (size_t)N * C, 2e-2, "%s dinp", k);
    check_f32(gdw, dw, C, 1e-3, "%s dw (fp32)", k);
    if (layer) check_f32(gdb, db, C, 1e-3, "layernorm db (fp32)");
    free(x); free(w); free(b); free(dy); free(y); free(mean); free(rstd); free(dx); free(dw); free(db);
    cuda_free(gx); cuda_free(gw); cuda_free(gb); cuda_free(gdy); cuda_free(gy); cuda_free(gdx);
    cuda_free(gmean); cuda_free(grstd); cuda_free(gdw); cuda_free(gdb);
    if (r32) cuda_free(gx32), cuda_free(gdx32);
    cuda_free(gdx16);
}
static void norm_case(int N, int C, int layer) { norm_case_r(N, C, layer, 0); }

// F a multiple of 8 takes the kernels over 8 elements per thread; other sizes the scalar ones
static void activation_cases(int N, int F) {
    size_t n = (size_t)N * F;
    float *x = host_rand(2 * n, 1), *dy = host_rand(n, 1), *y = xcalloc(2 * n, 4), *dx = xcalloc(2 * n, 4);
    bf16 *gx = dev_bf16(x, 2 * n), *gdy = dev_bf16(dy, n), *gy = cuda_alloc(2 * n * 2), *gdx = cuda_alloc(2 * n * 2);
    // the activations' backwards overwrite their output: it starts as garbage (1e3 here, NaN on the GPU)
    for (size_t i = 0; i < 2 * n; i++) dx[i] = 1e3f;
    gelu_forward(y, x, n);
    gelu_backward(dx, dy, x, n);
    cuda_memset_ff(gdx, 2 * n * 2);
    cuda_gelu_forward(gy, gx, n);
    cuda_gelu_backward(gdx, gdy, gx, n);
    sync_or_die();
    check_bf16(gy, y, n, 2e-2, "gelu forward, %zu elements", n);
    check_bf16(gdx, dx, n, 2e-2, "gelu backward, %zu elements", n);
    for (size_t i = 0; i < 2 * n; i++) dx[i] = 1e3f;
    swiglu_forward(y, x, N, F);
    swiglu_backward(dx, dy, x, N, F);
    cuda_memset_ff(gdx, 2 * n * 2);
    cuda_swiglu_forward(gy, gx, N, F);
    cuda_swiglu_backward(gdx, gdy, gx, N, F);
    sync_or_die();
    check_bf16(gy, y, n, 2e-2, "swiglu forward %dx%d", N, F);
    check_bf16(gdx, dx, 2 * n, 2e-2, "swiglu backward %dx%d", N, F);
    free(x); free(dy); free(y); free(dx);
    cuda_free(gx); cuda_free(gdy); cuda_free(gy); cuda_free(gdx);
}

// the fused forward passes against the separate CPU ops in sequence
static void fused_cases(int C, int with_rope) {  // C a multiple of 8: the 8-wide kernels; otherwise the scalar ones
    int N = 70, T = 40, H = 6;
    float *a = host_rand((size_t)N * C, 1), *b = host_rand((size_t)N * C, 1), *w = host_rand(C, 1), *bias = host_rand(C, 0.2f);
    for (int c = 0; c < C; c++) w[c] = bf16_to_f32(f32_to_bf16(1.0f + 0.1f * w[c]));
    float *sum = xcalloc((size_t)N * C, 4), *y = xcalloc((size_t)N * C, 4), *mean = xcalloc(N, 4), *rstd = xcalloc(N, 4);
    size_t n = (size_t)N * C;
    bf16 *ga = dev_bf16(a, n), *gb = dev_bf16(b, n), *gw = dev_bf16(w, C), *gbias = dev_bf16(bias, C), *gsum = cuda_alloc(n * 2),
         *gy = cuda_alloc(n * 2);
    float *gmean = dev_f32(NULL, N), *grstd = dev_f32(NULL, N), *ga32 = NULL, *gsum32 = dev_f32(NULL, n);
    printf("fused norms at C %d:\n", C);
    for (int r32 = 0; r32 <= 1; r32++) {  // bf16 rows, then the fp32 residual's: a off the bf16 grid, the sum not rounded
        if (r32) off_grid(a, n), ga32 = dev_f32(a, n);
        for (size_t i = 0; i < n; i++) sum[i] = r32 ? a[i] + b[i] : bf16_to_f32(f32_to_bf16(a[i] + b[i]));
        const char *form = r32 ? " (fp32 rows)" : "";
        rmsnorm_forward(y, rstd, sum, w, N, C, 1e-6f);
        if (r32) cuda_add_rmsnorm_forward_r32(gsum32, gy, grstd, ga32, gb, gw, N, C, 1e-6f);
        else cuda_add_rmsnorm_forward(gsum, gy, grstd, ga, gb, gw, N, C, 1e-6f);
        sync_or_die();
        if (r32) check_f32(gsum32, sum, n, 1e-7, "add + rmsnorm forward%s: sum", form);
        else check_bf16(gsum, sum, n, 1e-6, "add + rmsnorm forward: sum");
        check_bf16(gy, y, n, 2e-2, "add + rmsnorm forward%s: out", form);
        check_f32(grstd, rstd, N, 1e-3, "add + rmsnorm forward%s: rstd", form);
        layernorm_forward(y, mean, rstd, sum, w, bias, N, C, 1e-5f);
        if (r32) cuda_add_layernorm_forward_r32(gsum32, gy, gmean, grstd, ga32, gb, gw, gbias, N, C, 1e-5f);
        else cuda_add_layernorm_forward(gsum, gy, gmean, grstd, ga, gb, gw, gbias, N, C, 1e-5f);
        sync_or_die();
        if (r32) check_f32(gsum32, sum, n, 1e-7, "add + layernorm forward%s: sum", form);
        else check_bf16(gsum, sum, n, 1e-6, "add + layernorm forward: sum");
        check_bf16(gy, y, n, 2e-2, "add + layernorm forward%s: out", form);
        check_f32(gmean, mean, N, 1e-3, "add + layernorm forward%s: mean", form);
    }
    free(a); free(b); free(bias); free(sum); free(y); free(mean); free(rstd);
    cuda_free(ga); cuda_free(gb); cuda_free(gbias); cuda_free(gsum); cuda_free(gy); cuda_free(gmean); cuda_free(grstd); cuda_free(gw);
    cuda_free(ga32); cuda_free(gsum32);
    free(w);
    const int dims[3] = {16, 128, 18};  // head_dim 16 (a warp's first 4 lanes) and 128: warp per row; 18: block per row
    for (int di = 0; with_rope && di < 3; di++) {
        int d = dims[di];
        int32_t cu[2] = {0, T};
        float *x = host_rand((size_t)T * H * d, 1), *qw = host_rand(d, 1), *ang = xmalloc((size_t)T * d / 2 * 4),
              *o = xcalloc((size_t)T * H * d, 4), *r = xcalloc((size_t)T * H, 4);
        for (int c = 0; c < d; c++) qw[c] = bf16_to_f32(f32_to_bf16(1.0f + 0.1f * qw[c]));
        rope_angles_1d(ang, cu, 1, d, 1e6);
        rmsnorm_forward(o, r, x, qw, T * H, d, 1e-6f);
        rope_forward(o, ang, T, H, d);
        bf16 *gx = dev_bf16(x, (size_t)T * H * d), *gqw = dev_bf16(qw, d), *go = cuda_alloc((size_t)T * H * d * 2);
        float *gang = dev_f32(ang, (size_t)T * d / 2), *gr = dev_f32(NULL, (size_t)T * H);
        cuda_rmsnorm_rope_forward(go, gr, gx, gqw, gang, T, H, d, 1e-6f);
        sync_or_die();
        check_bf16(go, o, (size_t)T * H * d, 2e-2, "rmsnorm + rope forward d%d: out", d);
        check_f32(gr, r, (size_t)T * H, 1e-3, "rmsnorm + rope forward d%d: rstd", d);
        // the backward: dx overwritten (it starts as NaN on the GPU), dw accumulated (from 0.25), dy scratch
        float *dy = host_rand((size_t)T * H * d, 1), *dx = xcalloc((size_t)T * H * d, 4), *dw = xmalloc((size_t)d * 4);
        for (int c = 0; c < d; c++) dw[c] = 0.25f;
        bf16 *gdy = dev_bf16(dy, (size_t)T * H * d), *gdx = cuda_alloc((size_t)T * H * d * 2);
        float *gdw = dev_f32(dw, d), *gr_cpu = dev_f32(r, (size_t)T * H);
        cuda_memset_ff(gdx, (size_t)T * H * d * 2);
        rope_backward(dy, ang, T, H, d);
        rmsnorm_backward(dx, dw, dy, x, qw, r, T * H, d);
        cuda_rmsnorm_rope_backward(gdx, gdw, gdy, gx, gqw, gr_cpu, gang, T, H, d);
        sync_or_die();
        check_bf16(gdx, dx, (size_t)T * H * d, 2e-2, "rmsnorm + rope backward d%d: dx (set)", d);
        check_f32(gdw, dw, d, 1e-3, "rmsnorm + rope backward d%d: dw (+=)", d);
        free(dy); free(dx); free(dw);
        cuda_free(gdy); cuda_free(gdx); cuda_free(gdw); cuda_free(gr_cpu);
        free(x); free(qw); free(ang); free(o); free(r);
        cuda_free(gx); cuda_free(gqw); cuda_free(go); cuda_free(gang); cuda_free(gr);
    }
}

// the backend's strided copy (a column block of qkv into its own tensor and back), bit for bit
static void copy2d_case(size_t rows, size_t cols, size_t ld) {
    const Backend *be = backend_cuda();
    float *x = host_rand(rows * ld, 1), *want = xcalloc(rows * cols, 4);
    for (size_t r = 0; r < rows; r++) memcpy(want + r * cols, x + r * ld + cols, cols * 4);  // columns [cols, 2·cols)
    bf16 *gx = dev_bf16(x, rows * ld), *gy = cuda_alloc(rows * cols * 2), *gz = cuda_alloc(rows * ld * 2);
    be->copy2d((Act *)gy, cols, (const Act *)(gx + cols), ld, rows, cols);
    cuda_memset0(gz, rows * ld * 2);
    be->copy2d((Act *)(gz + cols), ld, (const Act *)gy, cols, rows, cols);
    sync_or_die();
    float *h = back_bf16(gy, rows * cols), *hz = back_bf16(gz, rows * ld);
    int same = !memcmp(h, want, rows * cols * 4), back = 1;
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < ld; c++) back &= hz[r * ld + c] == (c >= cols && c < 2 * cols ? x[r * ld + c] : 0.0f);
    char name[96];
    snprintf(name, sizeof name, "copy2d %zu rows x %zu of %zu columns, there and back", rows, cols, ld);
    printf("%-56s bit-identical %s\n", name, same && back ? "ok" : "FAIL");
    failures += !(same && back);
    free(x); free(want); free(h); free(hz);
    cuda_free(gx); cuda_free(gy); cuda_free(gz);
}

// gather_rows and scatter_rows through the backend table (rows 3·i + 1 of a 3n-row table and back), bit for bit
static void rows_case(int n, int C) {
    const Backend *be = backend_cuda();
    float *x = host_rand((size_t)3 * n * C, 1);
    int32_t *idx = xmalloc((size_t)n * 4), *gidx = cuda_alloc((size_t)n * 4);
    for (int i = 0; i < n; i++) idx[i] = 3 * (n - 1 - i) + 1;  // out of order
    cuda_upload(gidx, idx, (size_t)n * 4);
    bf16 *gx = dev_bf16(x, (size_t)3 * n * C), *gy = cuda_alloc((size_t)n * C * 2), *gz = cuda_alloc((size_t)3 * n * C * 2);
    be->gather_rows((Act *)gy, (const Act *)gx, gidx, n, C);
    cuda_memset0(gz, (size_t)3 * n * C * 2);
    be->scatter_rows((Act *)gz, (const Act *)gy, gidx, n, C);
    sync_or_die();
    float *h = back_bf16(gy, (size_t)n * C), *hz = back_bf16(gz, (size_t)3 * n * C);
    int ok = 1;
    for (int i = 0; i < n; i++)
        for (int c = 0; c < C; c++) ok &= h[(size_t)i * C + c] == x[(size_t)idx[i] * C + c];
    for (int r = 0; r < 3 * n; r++)
        for (int c = 0; c < C; c++) ok &= hz[(size_t)r * C + c] == (r % 3 == 1 ? x[(size_t)r * C + c] : 0.0f);
    char name[96];
    snprintf(name, sizeof name, "gather_rows + scatter_rows %d rows of %d", n, C);
    printf("%-56s bit-identical %s\n", name, ok ? "ok" : "FAIL");
    failures += !ok;
    free(x); free(idx); free(h); free(hz);
    cuda_free(gidx); cuda_free(gx); cuda_free(gy); cuda_free(gz);
}

// the learned CLS angles' gradient (the tower's class_pos_emb): dang[j] (starting at 0.5) += Σ over rows idx and
// heads of −dy_j·y_{j+D/2} + dy_{j+D/2}·y_j, against a double-precision sum
static void rope_angle_grad_case(int rows, int n, int H, int D) {
    const Backend *be = backend_cuda();
    size_t m = (size_t)rows * H * D;
    float *y = host_rand(m, 1), *dy = host_rand(m, 1), *ref = xmalloc((size_t)D / 2 * sizeof(float)), *init = xmalloc((size_t)D / 2 * sizeof(float));
    int32_t *idx = xmalloc((size_t)n * 4), *gidx = cuda_alloc((size_t)n * 4);
    for (int i = 0; i < n; i++) idx[i] = (7 * i + 3) % rows;
    for (int j = 0; j < D / 2; j++) {
        double a = 0.5;
        for (int i = 0; i < n; i++)
            for (int h = 0; h < H; h++) {
                size_t b = ((size_t)idx[i] * H + h) * D;
                a += -(double)dy[b + j] * y[b + j + D / 2] + (double)dy[b + j + D / 2] * y[b + j];
            }
        ref[j] = (float)a;
        init[j] = 0.5f;
    }
    cuda_upload(gidx, idx, (size_t)n * 4);
    bf16 *gy = dev_bf16(y, m), *gdy = dev_bf16(dy, m);
    float *gang = dev_f32(init, (size_t)D / 2);
    be->rope_angle_grad(gang, (const Act *)gy, (const Act *)gdy, gidx, n, H, D);
    sync_or_die();
    check_f32(gang, ref, (size_t)D / 2, 1e-5, "rope_angle_grad %d rows of %dx%d (+=)", n, H, D);
    free(y); free(dy); free(ref); free(init); free(idx);
    cuda_free(gidx); cuda_free(gy); cuda_free(gdy); cuda_free(gang);
}

static void rope_case(int T, int H, int D) {  // D a multiple of 16: the 8-wide kernel
    int32_t cu[3] = {0, T / 3, T};
    float *x = host_rand((size_t)T * H * D, 1), *ang = xmalloc((size_t)T * D / 2 * 4);
    rope_angles_1d(ang, cu, 2, D, 5e6);
    bf16 *gx = dev_bf16(x, (size_t)T * H * D);
    float *gang = dev_f32(ang, (size_t)T * D / 2);
    rope_forward(x, ang, T, H, D);
    cuda_rope_forward(gx, gang, T, H, D);
    sync_or_die();
    check_bf16(gx, x, (size_t)T * H * D, 2e-2, "rope forward d%d", D);
    rope_backward(x, ang, T, H, D);
    cuda_rope_backward(gx, gang, T, H, D);
    sync_or_die();
    check_bf16(gx, x, (size_t)T * H * D, 2e-2, "rope backward d%d (undoes forward)", D);
    free(x); free(ang); cuda_free(gx); cuda_free(gang);
}

// the vision tower's QKV split with RoPE and its backward, through the backend table, against the CPU ops
// (rope_forward_strided / rope_backward_strided); V and dv are copies, bit for bit
static void qkv_rope_case(int T, int H, int D) {  // D a multiple of 16: the 8-wide kernel
    const Backend *be = backend_cuda();
    size_t C = (size_t)H * D, n = (size_t)T * C;
    int32_t cu[3] = {0, T / 2, T};
    float *qkv = host_rand(3 * n, 1), *dq = host_rand(n, 1), *dk = host_rand(n, 1), *dv = host_rand(n, 1);
    float *ang = xmalloc((size_t)T * D / 2 * 4), *q = xmalloc(n * 4), *k = xmalloc(n * 4), *dqkv = xmalloc(3 * n * 4);
    rope_angles_1d(ang, cu, 2, D, 1e4);
    rope_forward_strided(q, C, qkv, 3 * C, ang, T, H, D);
    rope_forward_strided(k, C, qkv + C, 3 * C, ang, T, H, D);
    rope_backward_strided(dqkv, 3 * C, dq, C, ang, T, H, D);
    rope_backward_strided(dqkv + C, 3 * C, dk, C, ang, T, H, D);
    for (int t = 0; t < T; t++) memcpy(dqkv + (size_t)t * 3 * C + 2 * C, dv + (size_t)t * C, C * 4);
    bf16 *gqkv = dev_bf16(qkv, 3 * n), *gq = cuda_alloc(n * 2), *gk = cuda_alloc(n * 2), *gv = cuda_alloc(n * 2);
    bf16 *gdq = dev_bf16(dq, n), *gdk = dev_bf16(dk, n), *gdv = dev_bf16(dv, n), *gdqkv = cuda_alloc(3 * n * 2);
    float *gang = dev_f32(ang, (size_t)T * D / 2);
    be->qkv_split_rope((Act *)gq, (Act *)gk, (Act *)gv, (const Act *)gqkv, gang, T, H, D);
    be->qkv_merge_rope_backward((Act *)gdqkv, (const Act *)gdq, (const Act *)gdk, (const Act *)gdv, gang, T, H, D);
    sync_or_die();
    check_bf16(gq, q, n, 2e-2, "qkv split + rope d%d: q", D);
    check_bf16(gk, k, n, 2e-2, "qkv split + rope d%d: k", D);
    check_bf16(gdqkv, dqkv, 3 * n, 2e-2, "qkv merge + rope backward d%d: dqkv", D);
    float *hv = back_bf16(gv, n), *h = back_bf16(gdqkv, 3 * n);
    int same = 1;
    for (int t = 0; t < T; t++)
        same &= !memcmp(hv + (size_t)t * C, qkv + (size_t)t * 3 * C + 2 * C, C * 4) &&
                !memcmp(h + (size_t)t * 3 * C + 2 * C, dv + (size_t)t * C, C * 4);
    printf("qkv split/merge d%-2d: v and dv                          bit-identical %s\n", D, same ? "ok" : "FAIL");
    failures += !same;
    free(h); free(hv); free(qkv); free(dq); free(dk); free(dv); free(ang); free(q); free(k); free(dqkv);
    cuda_free(gqkv); cuda_free(gq); cuda_free(gk); cuda_free(gv); cuda_free(gdq); cuda_free(gdk); cuda_free(gdv); cuda_free(gdqkv);
    cuda_free(gang);
}

// One attention check: random inputs, the CPU op's outputs and gradients, and the device buffers for a GPU version
// to fill (its outputs NaN-filled first: an output left unwritten shows)
typedef struct {
    int Hq, Hkv, D, causal, T, nseq, max_len;
    size_t nq, nk;
    float *q, *k, *v, *dy, *o, *lse, *dq, *dk, *dv;   // host: inputs, then the CPU op's results
    bf16 *gq, *gk, *gv, *gdy, *go, *gdq, *gdk, *gdv;  // device
    float *glse;
    int32_t *gcu;
} AttnCase;

static void attn_case_init(AttnCase *c, int Hq, int Hkv, int D, int causal, const int32_t *cu, int nseq, int max_len) {
    int T = cu[nseq];
    *c = (AttnCase){.Hq = Hq, .Hkv = Hkv, .D = D, .causal = causal, .T = T, .nseq = nseq, .max_len = max_len,
                    .nq = (size_t)T * Hq * D, .nk = (size_t)T * Hkv * D};
    size_t nq = c->nq, nk = c->nk;
    c->q = host_rand(nq, 1), c->k = host_rand(nk, 1), c->v = host_rand(nk, 1), c->dy = host_rand(nq, 1);
    c->o = xcalloc(nq, 4), c->lse = xcalloc((size_t)T * Hq, 4), c->dq = xcalloc(nq, 4), c->dk = xcalloc(nk, 4), c->dv = xcalloc(nk, 4);
    attention_forward(c->o, c->lse, c->q, c->k, c->v, cu, nseq, Hq, Hkv, D, causal);
    for (size_t i = 0; i < nq; i++) c->o[i] = bf16_to_f32(f32_to_bf16(c->o[i]));  // the GPU backward sees a bf16 output
    attention_backward(c->dq, c->dk, c->dv, c->dy, c->o, c->lse, c->q, c->k, c->v, cu, nseq, Hq, Hkv, D, causal);
    c->gq = dev_bf16(c->q, nq), c->gk = dev_bf16(c->k, nk), c->gv = dev_bf16(c->v, nk), c->gdy = dev_bf16(c->dy, nq);
    c->go = cuda_alloc(nq * 2), c->gdq = cuda_alloc(nq * 2), c->gdk = cuda_alloc(nk * 2), c->gdv = cuda_alloc(nk * 2);
    c->glse = dev_f32(NULL, (size_t)T * Hq);
    c->gcu = cuda_alloc((size_t)(nseq + 1) * sizeof(int32_t));
    cuda_upload(c->gcu, cu, (size_t)(nseq + 1) * sizeof(int32_t));
    // NaN (0xFFFF) where the kernels must write: their outputs are written whole, no row left as it was
    cuda_memset_ff(c->go, nq * 2); cuda_memset_ff(c->gdq, nq * 2); cuda_memset_ff(c->gdk, nk * 2); cuda_memset_ff(c->gdv, nk * 2);
}

// the GPU's results against the CPU op's; `shape` names the inputs ("T180"), fwd and bwd the kernels that ran
static void attn_case_check(const AttnCase *c, const char *shape, const char *fwd, const char *bwd) {
    sync_or_die();
    check_bf16(c->go, c->o, c->nq, 2e-2, "attention %s %dq/%dkv d%d %s forward (%s)", c->causal ? "causal" : "bidir", c->Hq, c->Hkv, c->D,
               shape, fwd);
    check_f32(c->glse, c->lse, (size_t)c->T * c->Hq, 1e-3, "  lse, fp32 (%s)", fwd);
    check_bf16(c->gdq, c->dq, c->nq, 2e-2, "  dq (%s)", bwd);
    check_bf16(c->gdk, c->dk, c->nk, 2e-2, "  dk (%s)", bwd);
    check_bf16(c->gdv, c->dv, c->nk, 2e-2, "  dv (%s)", bwd);
}

static void attn_case_free(AttnCase *c) {
    free(c->q); free(c->k); free(c->v); free(c->dy); free(c->o); free(c->lse); free(c->dq); free(c->dk); free(c->dv);
    cuda_free(c->gq); cuda_free(c->gk); cuda_free(c->gv); cuda_free(c->gdy); cuda_free(c->go); cuda_free(c->gdq); cuda_free(c->gdk);
    cuda_free(c->gdv); cuda_free(c->glse); cuda_free(c->gcu);
}

static void attention_case(int Hq, int Hkv, int D, int causal, int long_seq, int version) {
    int32_t cu[4] = {0, 37, 101, 180};
    int max_len = 79;
    if (long_seq) { cu[1] = 5; cu[2] = 700; cu[3] = 777; max_len = 695; }  // 11 query tiles in one sequence
    AttnCase c;
    attn_case_init(&c, Hq, Hkv, D, causal, cu, 3, max_len);
    cuda_attention_set_flash(version);
    cuda_attention_forward(c.go, c.glse, c.gq, c.gk, c.gv, c.gcu, c.nseq, c.T, max_len, Hq, Hkv, D, causal);
    cuda_attention_backward(c.gdq, c.gdk, c.gdv, c.gdy, c.go, c.glse, c.gq, c.gk, c.gv, c.gcu, c.nseq, c.T, max_len, Hq, Hkv, D, causal);
    cuda_attention_set_flash(-2);
    const char *names[10] = {"warp-per-row", "flash v1", "flash v2", "flash v3", "flash v4", "flash v5", "flash v6", "flash v7", "flash v8",
                             "flash v9"};
    char kind[48], shape[16];
    snprintf(kind, sizeof kind, "%s%s", D != 64 && D != 128 ? "warp-per-row" : version == FLASH_TUNE ? "flash tuned" : names[version], variant);
    snprintf(shape, sizeof shape, "T%d", c.T);
    attn_case_check(&c, shape, kind, kind);
    if (cuda_flash_ws_timed_out()) {  // (version 8: its outputs are wrong too, but say why)
        printf("  mbarrier waits (%s): one gave up  FAIL\n", kind);
        failures++;
    }
    attn_case_free(&c);
}

// cuDNN's fused attention (LLAVA_FLASH=cudnn; cudnn_attn.cu) on the sequences of cu against the CPU op: the
// forward's output and lse, then the backward's gradients (cuDNN's, or our default's on cuDNN's lse where its
// backward does not run). Not a failure where cuDNN does not run here (no library, or its engines decline the
// shape): the line says why, and the flash kernels serve.
static void cudnn_case_cu(int Hq, int Hkv, int D, int causal, const int32_t *cu, int nseq, int max_len) {
    AttnCase c;
    attn_case_init(&c, Hq, Hkv, D, causal, cu, nseq, max_len);
    int T = c.T, ragged = nseq * max_len != T;  // (the lines of the ragged layout named apart: run.sh can leave it out alone)
    const char *kind = ragged ? "cudnn ragged" : "cudnn";
    if (cuda_cudnn_attention_forward(c.go, c.glse, c.gq, c.gk, c.gv, c.gcu, nseq, T, max_len, Hq, Hkv, D, causal) == 0) {
        const char *bwd = kind;
        if (cuda_cudnn_attention_backward(c.gdq, c.gdk, c.gdv, c.gdy, c.go, c.glse, c.gq, c.gk, c.gv, c.gcu, nseq, T, max_len, Hq, Hkv, D,
                                          causal)) {
            printf("attention %s %dq/%dkv d%d T%d in %d backward (%s): not run here: %s\n", causal ? "causal" : "bidir", Hq, Hkv, D, T,
                   nseq, kind, cuda_cudnn_status());
            cuda_attention_backward(c.gdq, c.gdk, c.gdv, c.gdy, c.go, c.glse, c.gq, c.gk, c.gv, c.gcu, nseq, T, max_len, Hq, Hkv, D, causal);
            bwd = ragged ? "cudnn ragged forward, default backward" : "cudnn forward, default backward";
        }
        char shape[32];
        snprintf(shape, sizeof shape, "T%d in %d", T, nseq);
        attn_case_check(&c, shape, kind, bwd);
    } else {
        printf("attention %s %dq/%dkv d%d T%d in %d forward (%s): not run here: %s\n", causal ? "causal" : "bidir", Hq, Hkv, D, T, nseq,
               kind, cuda_cudnn_status());
    }
    attn_case_free(&c);
}

// nseq sequences of T / nseq each (one, or a batch)
static void cudnn_case(int Hq, int Hkv, int D, int causal, int T, int nseq) {
    int32_t cu[3] = {0, T / nseq, T};
    cudnn_case_cu(Hq, Hkv, D, causal, cu, nseq, T / nseq);
}

// packed sequences of different lengths (cuDNN's ragged layout): attention_case's two packings
static void cudnn_packed_cases(void) {
    const int32_t short_cu[4] = {0, 37, 101, 180}, long_cu[4] = {0, 5, 700, 777};
    cudnn_case_cu(4, 4, 64, 0, short_cu, 3, 79);
    cudnn_case_cu(8, 2, 128, 1, short_cu, 3, 79);
    cudnn_case_cu(4, 2, 128, 1, long_cu, 3, 695);
    cudnn_case_cu(16, 16, 64, 0, long_cu, 3, 695);
}

static void attention_cases(int version) {
    attention_case(4, 4, 64, 0, 0, version);
    attention_case(8, 2, 128, 1, 0, version);
    attention_case(4, 2, 128, 1, 1, version);
    attention_case(4, 4, 64, 0, 1, version);
    attention_case(4, 2, 64, 1, 1, version);
    attention_case(3, 3, 128, 1, 1, version);  // an odd group: v6 pairs row blocks, not heads, causal
}

// versions first .. last's attention cases again with a setting on (set(1), then set(-1): the environment's),
// their lines named with `name` after the kernel's (" exp2")
static void attention_cases_with(void (*set)(int), const char *name, int first, int last) {
    set(1);
    variant = name;
    for (int version = first; version <= last; version++) attention_cases(version);
    variant = "";
    set(-1);
}

static void decode_case(int Hq, int Hkv, int D, int len) {  // one token against a cache of len positions
    size_t nq = (size_t)Hq * D, nk = (size_t)len * Hkv * D;
    float *q = host_rand(nq, 1), *k = host_rand(nk, 1), *v = host_rand(nk, 1), *o = xcalloc(nq, 4);
    attention_decode(o, q, k, v, len, Hq, Hkv, D);
    bf16 *gq = dev_bf16(q, nq), *gk = dev_bf16(k, nk), *gv = dev_bf16(v, nk), *go = cuda_alloc(nq * 2);
    cuda_attention_decode(go, gq, gk, gv, len, Hq, Hkv, D);
    sync_or_die();
    check_bf16(go, o, nq, 1e-2, "attention decode %dq/%dkv d%d len %d", Hq, Hkv, D, len);
    free(q); free(k); free(v); free(o);
    cuda_free(gq); cuda_free(gk); cuda_free(gv); cuda_free(go);
}

// V a multiple of 8 takes the cross-entropy's 16-byte loads; other vocabularies the scalar loop
static void embedding_loss_case(int V) {
    int T = 333, C = 96;
    char what[80];
    int32_t *ids = xmalloc(T * 4), *tg = xmalloc(T * 4);
    for (int t = 0; t < T; t++) { ids[t] = (t * 37) % 50; tg[t] = t % 5 == 0 ? -100 : (t * 101) % V; }
    float *table = host_rand((size_t)V * C, 1), *dy = host_rand((size_t)T * C, 1), *logits = host_rand((size_t)T * V, 2);
    float *out = xcalloc((size_t)T * C, 4), *dtab = xcalloc((size_t)V * C, 4), *dl = xcalloc((size_t)T * V, 4), *h;
    embedding_forward(out, ids, table, T, C);
    embedding_backward(dtab, dy, ids, T, C);
    int32_t *gids = cuda_alloc(T * 4), *gtg = cuda_alloc(T * 4);
    cuda_upload(gids, ids, T * 4);
    cuda_upload(gtg, tg, T * 4);
    bf16 *gtab = dev_bf16(table, (size_t)V * C), *gdy = dev_bf16(dy, (size_t)T * C), *gout = cuda_alloc((size_t)T * C * 2),
         *glog = dev_bf16(logits, (size_t)T * V), *gdl = cuda_alloc((size_t)T * V * 2);
    float *gdtab = dev_f32(NULL, (size_t)V * C), *glosses = dev_f32(NULL, T);
    cuda_embedding_forward(gout, gids, gtab, T, C);
    cuda_embedding_backward(gdtab, gdy, ids, T, C);
    int64_t count;
    double mean = cross_entropy_forward(logits, tg, T, V, &count);
    cross_entropy_backward(dl, logits, tg, T, V, 1.0f / (float)count);
    cuda_cross_entropy_forward(glosses, glog, gtg, T, V);
    cuda_cross_entropy_backward(gdl, glog, gtg, T, V, 1.0f / (float)count);
    sync_or_die();
    check_bf16(gout, out, (size_t)T * C, 1e-6, "embedding forward");
    check_f32(gdtab, dtab, (size_t)V * C, 1e-5, "embedding backward (fp32, repeated ids)");
    h = back_f32(glosses, T);
    double s = 0;
    for (int t = 0; t < T; t++) s += h[t];
    float got = (float)(s / (double)count), want = (float)mean;
    snprintf(what, sizeof what, "cross-entropy mean loss, vocabulary %d", V);
    check(what, &got, &want, 1, 1e-4);
    free(h);
    snprintf(what, sizeof what, "cross-entropy dlogits, vocabulary %d", V);
    check(what, h = back_bf16(gdl, (size_t)T * V), dl, (size_t)T * V, 2e-2); free(h);
    // the fused form (what the trainer runs): the rows' losses and dlogits written over the logits
    // (the reference from the same bf16 logits the GPU reads: a row's loss moves by its target logit's rounding)
    float *rows = xcalloc(T, 4), *lr = xcalloc((size_t)T * V, 4);
    for (size_t i = 0; i < (size_t)T * V; i++) lr[i] = bf16_to_f32(f32_to_bf16(logits[i]));
    cross_entropy_rows(rows, lr, tg, T, V);
    free(lr);
    cuda_memset_ff(glosses, T * 4);
    cuda_cross_entropy_fused(glosses, glog, glog, gtg, T, V, 1.0f / (float)count);
    sync_or_die();
    snprintf(what, sizeof what, "cross-entropy fused: row losses, V %d", V);
    check(what, h = back_f32(glosses, T), rows, T, 1e-5); free(h);
    snprintf(what, sizeof what, "cross-entropy fused: dlogits over the logits, V %d", V);
    check(what, h = back_bf16(glog, (size_t)T * V), dl, (size_t)T * V, 2e-2); free(h);
    free(rows);
    free(ids); free(tg); free(table); free(dy); free(logits); free(out); free(dtab); free(dl);
    cuda_free(gids); cuda_free(gtg); cuda_free(gtab); cuda_free(gdy); cuda_free(gout); cuda_free(glog); cuda_free(gdl);
    cuda_free(gdtab); cuda_free(glosses);
}

static void adamw_case(void) {
    size_t n = 100003;
    float *p = host_rand(n, 1), *g = host_rand(n, 0.01f), *m = xcalloc(n, 4), *v = xcalloc(n, 4);
    float *gp = dev_f32(p, n), *gg = dev_f32(g, n), *gm = dev_f32(NULL, n), *gv = dev_f32(NULL, n);
    bf16 *gb = cuda_alloc(n * 2);
    for (int t = 1; t <= 3; t++) {
        float clip = t == 2 ? 0.3f : 1.0f;  // the clipping coefficient folded in on one step
        adamw_step(p, g, m, v, n, 1e-3f, 0.9f, 0.95f, 1e-5f, 0.01f, clip, t);
        cuda_adamw_step(gp, gb, gg, gm, gv, n, 1e-3f, 0.9f, 0.95f, 1e-5f, 0.01f, clip, t);
    }
    sync_or_die();
    check_f32(gp, p, n, 1e-6, "adamw 3 steps: fp32 masters");
    check_bf16(gb, p, n, 4e-3, "adamw: bf16 copy of the masters");
    // adamw_segments (the optimizer's small tensors in one launch) against one cuda_adamw_step per segment:
    // bit for bit, over segments of several chunks, of one element, without weights, with and without decay
    const AdamSeg shape[] = {{0, 40000, NULL, 0.01f}, {40000, 1, NULL, 0.0f}, {40001, 37000, NULL, 0.0f}, {77001, 23002, NULL, 0.01f}};
    int ns = (int)(sizeof shape / sizeof *shape);
    float *gp2 = dev_f32(p, n), *gm2 = dev_f32(NULL, n), *gv2 = dev_f32(NULL, n);
    bf16 *gb2 = cuda_alloc(n * 2);
    cuda_memset0(gb, n * 2), cuda_memset0(gb2, n * 2);
    cuda_upload(gp, p, n * 4), cuda_memset0(gm, n * 4), cuda_memset0(gv, n * 4);
    AdamSeg seg[4];
    for (int i = 0; i < ns; i++) seg[i] = shape[i], seg[i].param = i == 2 ? NULL : (Act *)(gb2 + shape[i].off);
    for (int t = 1; t <= 2; t++) {
        for (int i = 0; i < ns; i++)
            cuda_adamw_step(gp + seg[i].off, i == 2 ? NULL : gb + seg[i].off, gg + seg[i].off, gm + seg[i].off, gv + seg[i].off, seg[i].n,
                            1e-3f, 0.9f, 0.95f, 1e-5f, seg[i].wd, 0.7f, t);
        cuda_adamw_segments(gp2, gg, gm2, gv2, seg, ns, 1e-3f, 0.9f, 0.95f, 1e-5f, 0.7f, t);
    }
    sync_or_die();
    float *h1 = back_f32(gp, n), *h2 = back_f32(gp2, n), *b1 = back_bf16(gb, n), *b2 = back_bf16(gb2, n);
    int same = !memcmp(h1, h2, n * 4) && !memcmp(b1, b2, n * 4);
    printf("%-56s bit-identical %s\n", "adamw_segments against adamw per segment", same ? "ok" : "FAIL");
    failures += !same;
    free(h1); free(h2); free(b1); free(b2);
    cuda_free(gp2); cuda_free(gm2); cuda_free(gv2); cuda_free(gb2);
    free(p); free(g); free(m); free(v);
    cuda_free(gp); cuda_free(gg); cuda_free(gm); cuda_free(gv); cuda_free(gb);
}

// zero_floats: three arrays of one buffer (one of several chunks) zeroed in one launch, the floats between
// them left as they were (0xFF bytes: NaN)
static void zero_floats_case(void) {
    size_t n = 50000;
    float *g = cuda_alloc(n * 4);
    cuda_memset_ff(g, n * 4);
    float *p[3] = {g + 10, g + 1000, g + 20000};
    size_t len[3] = {1, 17000, 29999};
    cuda_zero_floats(p, len, 3);
    sync_or_die();
    float *h = back_f32(g, n);
    int ok = 1;
    for (size_t i = 0; i < n; i++) {
        int zeroed = i == 10 || (i >= 1000 && i < 18000) || (i >= 20000 && i < 49999);
        ok &= zeroed ? h[i] == 0.0f : isnan(h[i]);
    }
    printf("%-56s exact %s\n", "zero_floats: 3 arrays, the rest untouched", ok ? "ok" : "FAIL");
    failures += !ok;
    free(h);
    cuda_free(g);
}

// ---- timings at the 4B shapes ----
// ms per call of fn: one untimed call, then the best of `reps` runs of `inner` calls between synchronisations
// (inner > 1 for short kernels, so that launch and sync latency do not count)
static double time_best(void (*fn)(void *), void *arg, int reps, int inner) {
    char err[256];
    fn(arg);
    cuda_sync(err, sizeof err);
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now_seconds();
        for (int i = 0; i < inner; i++) fn(arg);
        cuda_sync(err, sizeof err);
        double dt = (now_seconds() - t0) * 1e3 / inner;
        if (dt < best) best = dt;
    }
    return best;
}
static double time_ms(void (*fn)(void *), void *arg, int reps) { return time_best(fn, arg, reps, 1); }

typedef struct { bf16 *a, *b, *c, *q, *k, *v, *o, *dq, *dk, *dv; float *lse, *dw, *db; int32_t *cu; int N, K, M, T, Hq, Hkv, D, causal; } Bench;
// the attention shapes timed: the slice's (causal T 8192, 32 query / 8 KV heads of 128) and the tower's
// (bidirectional T 5185, 16 heads of 64)
static const Bench ATTN_SLICE = {.T = 8192, .Hq = 32, .Hkv = 8, .D = 128, .causal = 1},
                   ATTN_TOWER = {.T = 5185, .Hq = 16, .Hkv = 16, .D = 64, .causal = 0};
// an attention forward's FLOPs: QKᵀ and PV, half of them when causal (the backward: 2.5x)
static double attn_flops(const Bench *b) { return 4.0 * b->T * (double)b->T * b->Hq * b->D / (b->causal ? 2 : 1); }
static void run_mm(void *p) { Bench *b = p; cuda_matmul_forward(b->c, b->a, b->b, NULL, b->N, b->K, b->M); }
static void run_mm_bwd(void *p) { Bench *b = p; cuda_matmul_backward(b->a, b->dw, NULL, b->c, b->a, b->b, b->N, b->K, b->M, 0); }
static void run_mm_bwd_bias(void *p) {  // as the tower runs its products' backward: dinp, dW and dbias written over
    Bench *b = p;
    cuda_matmul_backward(b->a, b->dw, b->db, b->c, b->a, b->b, b->N, b->K, b->M, MM_SET_DINP | MM_SET_DW);
}
static void run_attn(void *p) { Bench *b = p; cuda_attention_forward(b->o, b->lse, b->q, b->k, b->v, b->cu, 1, b->T, b->T, b->Hq, b->Hkv, b->D, b->causal); }
static void run_attn_bwd(void *p) { Bench *b = p; cuda_attention_backward(b->dq, b->dk, b->dv, b->o, b->o, b->lse, b->q, b->k, b->v, b->cu, 1, b->T, b->T, b->Hq, b->Hkv, b->D, b->causal); }

// q, k, v (random, x's), o, dq, dk, dv, lse and cu_seqlens (one sequence of b->T) at b's attention shape
static void attention_buffers(Bench *b, const float *x) {
    size_t nq = (size_t)b->T * b->Hq * b->D, nk = (size_t)b->T * b->Hkv * b->D;
    b->q = dev_bf16(x, nq); b->k = dev_bf16(x, nk); b->v = dev_bf16(x + 1, nk); b->o = cuda_alloc(nq * 2);
    b->dq = cuda_alloc(nq * 2); b->dk = cuda_alloc(nk * 2); b->dv = cuda_alloc(nk * 2);
    cuda_memset0(b->dq, nq * 2); cuda_memset0(b->dk, nk * 2); cuda_memset0(b->dv, nk * 2);
    b->lse = dev_f32(NULL, (size_t)b->T * b->Hq);
    int32_t cu[2] = {0, b->T};
    b->cu = cuda_alloc(8);
    cuda_upload(b->cu, cu, 8);
}

static void attention_buffers_free(Bench *b) {
    cuda_free(b->q); cuda_free(b->k); cuda_free(b->v); cuda_free(b->o); cuda_free(b->dq); cuda_free(b->dk); cuda_free(b->dv);
    cuda_free(b->lse); cuda_free(b->cu);
}

// fn(b, its FLOP count, arg) at the slice's and the tower's attention shapes, their buffers allocated for it
static void at_attention_shapes(void (*fn)(Bench *b, double flops, const int *arg), const int *arg) {
    Bench shapes[2] = {ATTN_SLICE, ATTN_TOWER};
    float *x = host_rand((size_t)8192 * 32 * 128 + 1, 0.5f);
    for (int i = 0; i < 2; i++) {
        attention_buffers(&shapes[i], x);
        fn(&shapes[i], attn_flops(&shapes[i]), arg);
        attention_buffers_free(&shapes[i]);
    }
    free(x);
}

// cuDNN's forward and backward (where they run) against the default versions' at the two shapes, and (packed:
// nseq sequences of cu, cuDNN's ragged layout) at their heads with packed sequences of different lengths
typedef struct { Bench *b; int nseq, max_len; } Packed;
static void run_cudnn_p(void *p) {
    Packed *x = p; Bench *b = x->b;
    cuda_cudnn_attention_forward(b->o, b->lse, b->q, b->k, b->v, b->cu, x->nseq, b->T, x->max_len, b->Hq, b->Hkv, b->D, b->causal);
}
static void run_cudnn_bwd_p(void *p) {
    Packed *x = p; Bench *b = x->b;
    cuda_cudnn_attention_backward(b->dq, b->dk, b->dv, b->o, b->o, b->lse, b->q, b->k, b->v, b->cu, x->nseq, b->T, x->max_len, b->Hq, b->Hkv,
                                  b->D, b->causal);
}
static void run_attn_p(void *p) {
    Packed *x = p; Bench *b = x->b;
    cuda_attention_forward(b->o, b->lse, b->q, b->k, b->v, b->cu, x->nseq, b->T, x->max_len, b->Hq, b->Hkv, b->D, b->causal);
}
static void run_attn_bwd_p(void *p) {
    Packed *x = p; Bench *b = x->b;
    cuda_attention_backward(b->dq, b->dk, b->dv, b->o, b->o, b->lse, b->q, b->k, b->v, b->cu, x->nseq, b->T, x->max_len, b->Hq, b->Hkv, b->D,
                            b->causal);
}
static void cudnn_timing_of(Packed *x, double flops) {
    Bench *b = x->b;
    char name[64], packed[16] = "";
    if (x->nseq > 1) snprintf(packed, sizeof packed, " in %d", x->nseq);
    snprintf(name, sizeof name, "T %d%s %s d%d", b->T, packed, b->causal ? "causal" : "bidir", b->D);
    if (cuda_cudnn_attention_forward(b->o, b->lse, b->q, b->k, b->v, b->cu, x->nseq, b->T, x->max_len, b->Hq, b->Hkv, b->D, b->causal)) {
        printf("timing: attention %s: cudnn forward not run here (%s)\n", name, cuda_cudnn_status());
        return;
    }
    double c = time_ms(run_cudnn_p, x, 5), d = time_ms(run_attn_p, x, 5);
    printf("timing: attention %s: cudnn forward %7.3f ms %6.1f TFLOP/s, default flash forward %7.3f ms %6.1f TFLOP/s [%s]\n", name, c,
           flops / c / 1e9, d, flops / d / 1e9, cuda_cudnn_status());
    if (cuda_cudnn_attention_backward(b->dq, b->dk, b->dv, b->o, b->o, b->lse, b->q, b->k, b->v, b->cu, x->nseq, b->T, x->max_len, b->Hq,
                                      b->Hkv, b->D, b->causal)) {
        printf("timing: attention %s: cudnn backward not run here (%s)\n", name, cuda_cudnn_status());
        return;
    }
    double cb = time_ms(run_cudnn_bwd_p, x, 3), db = time_ms(run_attn_bwd_p, x, 3);
    printf("timing: attention %s: cudnn backward %7.3f ms %6.1f TFLOP/s, default flash backward %7.3f ms %6.1f TFLOP/s [%s]\n", name, cb,
           2.5 * flops / cb / 1e9, db, 2.5 * flops / db / 1e9, cuda_cudnn_status());
    // and cuDNN's other form of the backward (one sequence: the ragged layout takes only the dQ-summing one), dQ
    // summed in fp32 (LLAVA_CUDNN_DQ_ACCUM=1; not bit-reproducible)
    if (x->nseq > 1) return;
    cuda_cudnn_set_dq_accum(1);
    if (!cuda_cudnn_attention_backward(b->dq, b->dk, b->dv, b->o, b->o, b->lse, b->q, b->k, b->v, b->cu, 1, b->T, b->T, b->Hq, b->Hkv, b->D,
                                       b->causal)) {
        double ca = time_ms(run_cudnn_bwd_p, x, 3);
        printf("timing: attention %s: cudnn backward, dQ summed (LLAVA_CUDNN_DQ_ACCUM=1) %7.3f ms %6.1f TFLOP/s [%s]\n", name, ca,
               2.5 * flops / ca / 1e9, cuda_cudnn_status());
    }
    cuda_cudnn_set_dq_accum(-1);
}
static void cudnn_timing(Bench *b, double flops, const int *unused) {
    (void)unused;
    Packed one = {b, 1, b->T};
    cudnn_timing_of(&one, flops);
    // the same heads packed: text samples of different lengths at the slice's 8192 positions; an image of 32x32
    // patches and one of 64x64 (and their CLS rows) at the tower's
    static const int32_t text_cu[6] = {0, 3000, 4200, 6000, 6500, 8192}, image_cu[3] = {0, 1025, 5122};
    const int32_t *cu = b->causal ? text_cu : image_cu;
    Packed packed = {b, b->causal ? 5 : 2, 0};
    double pflops = 0;
    for (int i = 0; i < packed.nseq; i++) {
        int len = cu[i + 1] - cu[i];
        if (len > packed.max_len) packed.max_len = len;
        pflops += 4.0 * len * (double)len * b->Hq * b->D / (b->causal ? 2 : 1);
    }
    int T = b->T;
    int32_t *gcu = cuda_alloc((size_t)(packed.nseq + 1) * sizeof(int32_t)), *whole = b->cu;
    cuda_upload(gcu, cu, (size_t)(packed.nseq + 1) * sizeof(int32_t));
    b->cu = gcu, b->T = cu[packed.nseq];  // (at most the buffers' T)
    cudnn_timing_of(&packed, pflops);
    b->cu = whole, b->T = T;
    cuda_free(gcu);
}

// --attention: the attention forward and backward once each at the slice's and the tower's shapes, with the
// versions LLAVA_FLASH picks (the default unset), and nothing else: a target for a kernel profiler
// (tests/gpu/ncu.sh), whose kernel filter then sees just these launches
static void attention_once(Bench *b, double flops, const int *unused) {
    (void)flops, (void)unused;
    run_attn(b);
    run_attn_bwd(b);
    sync_or_die();
    printf("ops_check --attention: T %d, %d/%d heads of %d, %s: forward and backward ran\n", b->T, b->Hq, b->Hkv, b->D,
           b->causal ? "causal" : "bidirectional");
}

static void timings(void) {
    Bench b = ATTN_SLICE;
    b.N = 8192, b.K = 2560, b.M = 9728;
    size_t big = (size_t)b.M * b.N;
    float *x = host_rand(big, 0.5f);
    b.a = dev_bf16(x, (size_t)b.N * b.K); b.b = dev_bf16(x, (size_t)b.M * b.K); b.c = cuda_alloc(big * 2);
    b.dw = dev_f32(NULL, (size_t)b.M * b.K);
    attention_buffers(&b, x);
    double mm = time_ms(run_mm, &b, 5), mmb = time_ms(run_mm_bwd, &b, 3);
    double fl = 2.0 * b.N * b.K * b.M;
    printf("timing: matmul forward 8192x2560 . 9728x2560^T   %8.3f ms  %6.0f TFLOP/s\n", mm, fl / mm / 1e9);
    printf("timing: matmul backward (dinp + dw fp32)        %8.3f ms  %6.0f TFLOP/s\n", mmb, 2 * fl / mmb / 1e9);
    // the tower's four products' backward (5185 rows; qkv, proj, fc1, fc2) with their bias gradient in the dW
    // product's epilogue (the default) and summed apart (LLAVA_FUSED_DBIAS=0, the earlier way)
    const int tower_mm[4][2] = {{1024, 3072}, {1024, 1024}, {1024, 4096}, {4096, 1024}};  // K, M
    Bench tb = b;  // (b's buffers but the input: 5185 x 4096 is more than its 8192 x 2560)
    tb.N = 5185;
    tb.a = cuda_alloc((size_t)5185 * 4096 * 2);
    cuda_memset0(tb.a, (size_t)5185 * 4096 * 2);
    tb.db = dev_f32(NULL, 4096);
    for (int i = 0; i < 4; i++) {
        tb.K = tower_mm[i][0], tb.M = tower_mm[i][1];
        double f = 4.0 * tb.N * tb.K * tb.M, t[2];
        for (int fused = 1; fused >= 0; fused--) {
            cuda_matmul_set_fused_dbias(fused);
            t[fused] = time_ms(run_mm_bwd_bias, &tb, 5);
        }
        cuda_matmul_set_fused_dbias(-1);
        printf("timing: matmul backward 5185x%dx%d +dbias: dbias in the epilogue %7.4f ms %4.0f TFLOP/s, apart %7.4f ms %4.0f TFLOP/s\n",
               tb.K, tb.M, t[1], f / t[1] / 1e9, t[0], f / t[0] / 1e9);
    }
    cuda_free(tb.db);
    cuda_free(tb.a);
    double afl = attn_flops(&b);
    const char *what[10] = {"warp-per-row", "flash v1 (mma.sync)", "flash v2 (cp.async, ldmatrix)", "flash v3 (v2, 32 rows/warp)",
                           "flash v4 (v2 on wgmma)", "flash v5 (v4, overlapped fwd)", "flash v6 (v4, 2 warpgroups)",
                           "flash v7 (v6 128 keys; v4/v6 bwd)", "flash v8 (warp-specialised fwd)", "flash v9 (v6; bwd one pass)"};
    // the vision tower's shape: one 1008x1008 image (5184 patches + CLS), 16 heads of 64, bidirectional
    Bench vb = b;  // (on the slice's larger buffers)
    vb.T = ATTN_TOWER.T, vb.Hq = ATTN_TOWER.Hq, vb.Hkv = ATTN_TOWER.Hkv, vb.D = ATTN_TOWER.D, vb.causal = ATTN_TOWER.causal;
    int32_t cus[2][2] = {{0, b.T}, {0, vb.T}};
    double vfl = attn_flops(&vb);
    // versions 7 .. 0 at the slice's shape, 7 .. 1 at the tower's, then 9 at both (last: a fault there loses no
    // other figure; 8, the newest, is timed at the end of the run: ws_timings)
    const int order[10] = {7, 6, 5, 4, 3, 2, 1, 0, 9, -1};
    for (int pass = 0; pass < 2; pass++)
        for (int tower = 0; tower < 2; tower++) {
            cuda_upload(b.cu, cus[tower], 8);
            for (int oi = 0; order[oi] >= 0; oi++) {
                int version = order[oi];
                if ((version == 9) != (pass == 1) || (tower && !version)) continue;  // (warp-per-row at the tower: minutes)
                cuda_attention_set_flash(version);
                Bench *bb = tower ? &vb : &b;
                double at = time_ms(run_attn, bb, version ? 5 : 2), atb = time_ms(run_attn_bwd, bb, version ? 3 : 1), flops = tower ? vfl : afl;
                if (tower)
                    printf("timing: attention T 5185 16 heads d64 bidirectional, %-23s forward %7.3f ms %6.1f TFLOP/s, backward %7.3f ms %6.1f TFLOP/s\n",
                           what[version], at, flops / at / 1e9, atb, 2.5 * flops / atb / 1e9);
                else
                    printf("timing: attention T 8192 32q/8kv d128 causal, %-30s forward %7.3f ms %6.1f TFLOP/s, backward %7.3f ms %6.1f TFLOP/s\n",
                           what[version], at, flops / at / 1e9, atb, 2.5 * flops / atb / 1e9);
            }
        }
    cuda_attention_set_flash(-2);
    sync_or_die();
    free(x);
}

// The memory-bound ops at the slice's and the tower's shapes: time per call (each launched `inner` times
// between synchronisations, the best of 5 such runs, so that launch and sync latency do not count) and the
// bandwidth of their least traffic (every input read once, every output written once)
typedef struct { bf16 *a, *b, *c, *d; float *f1, *f2, *f3, *f4; int32_t *ids; int N, C, H, D; } MemBench;
static void run_rms_bwd(void *p) { MemBench *b = p; cuda_rmsnorm_backward(b->c, b->f2, b->a, b->b, b->d, b->f1, b->N, b->C); }
static void run_ln_bwd(void *p) { MemBench *b = p; cuda_layernorm_backward(b->c, b->f2, b->f3, b->a, b->b, b->d, b->f4, b->f1, b->N, b->C); }
static void run_rr_bwd(void *p) { MemBench *b = p; cuda_rmsnorm_rope_backward(b->c, b->f2, b->a, b->b, b->d, b->f1, b->f3, b->N, b->H, b->D); }
static void run_qkv(void *p) { MemBench *b = p; cuda_qkv_split_rope(b->b, b->c, b->d, b->a, b->f1, b->N, b->H, b->D); }
static void run_qkv_b(void *p) { MemBench *b = p; cuda_qkv_merge_rope_backward(b->a, b->b, b->c, b->d, b->f1, b->N, b->H, b->D); }
static void run_swiglu_b(void *p) { MemBench *b = p; cuda_swiglu_backward(b->c, b->a, b->b, b->N, b->C); }
static void run_ce(void *p) { MemBench *b = p; cuda_cross_entropy_fused(b->f1, b->a, b->a, b->ids, b->N, b->C, 1.0f / b->N); }
static void run_adamw(void *p) { MemBench *b = p; cuda_adamw_step(b->f1, b->a, b->f2, b->f3, b->f4, (size_t)b->N * b->C, 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, 1); }
static void memory_timing(const char *what, void (*fn)(void *), MemBench *b, int inner, double bytes) {
    double ms = time_best(fn, b, 5, inner);
    printf("timing: %-52s %8.4f ms %7.0f GB/s\n", what, ms, bytes / ms / 1e6);
}
static void memory_timings(void) {
    size_t big = (size_t)8192 * 2 * 9728;  // the largest operand: [gate | up] at the slice's shape
    float *x = host_rand(big, 0.5f), *ones = xmalloc(big / 2 * sizeof(float));
    for (size_t i = 0; i < big / 2; i++) ones[i] = 1.0f;
    MemBench b = {.a = dev_bf16(x, big), .b = dev_bf16(x + 1, big), .c = dev_bf16(x + 2, big), .d = dev_bf16(x + 3, 8192 * 2560),
                  .f1 = dev_f32(ones, big / 2), .f2 = dev_f32(NULL, big / 2), .f3 = dev_f32(NULL, big / 2), .f4 = dev_f32(NULL, big / 2)};
    double e = 2.0;  // bytes per bf16
    for (int rpw = -1; rpw <= 1; rpw++) {  // 2 rows per warp (the default), as few as fill the card once, two passes
        cuda_norm_set_rows_per_warp(rpw < 1 ? rpw : -2);
        cuda_norm_set_fused(rpw < 1 ? 1 : 0);
        const char *how = rpw < 0 ? "2 rows a warp" : rpw == 0 ? "rows to fill the card" : "two passes (LLAVA_NORM_FUSED=0)";
        char what[96];
        b.N = 8192, b.C = 2560;
        snprintf(what, sizeof what, "rmsnorm backward 8192x2560 (dx +=, dw), %s", how);
        memory_timing(what, run_rms_bwd, &b, 20, 4 * e * b.N * b.C);
        b.N = 5185, b.C = 1024;
        snprintf(what, sizeof what, "layernorm backward 5185x1024 (dx +=, dw, db), %s", how);
        memory_timing(what, run_ln_bwd, &b, 20, 4 * e * b.N * b.C);
    }
    cuda_norm_set_rows_per_warp(-2);
    cuda_norm_set_fused(-1);
    b.N = 8192, b.H = 32, b.D = 128;
    memory_timing("rmsnorm + rope backward 8192x32x128", run_rr_bwd, &b, 20, 3 * e * b.N * b.H * b.D);
    b.N = 5185, b.H = 16, b.D = 64;
    memory_timing("qkv split + rope 5185x16x64", run_qkv, &b, 20, 6 * e * b.N * b.H * b.D);
    memory_timing("qkv merge + rope backward 5185x16x64", run_qkv_b, &b, 20, 6 * e * b.N * b.H * b.D);
    b.N = 8192, b.C = 9728;
    memory_timing("swiglu backward 8192x9728", run_swiglu_b, &b, 10, 5 * e * b.N * b.C);
    b.N = 1, b.C = 2560 * 9728;
    memory_timing("adamw 24.9M parameters (30 bytes each)", run_adamw, &b, 10, 30.0 * b.C);
    free(x); free(ones);
    cuda_free(b.a); cuda_free(b.b); cuda_free(b.c); cuda_free(b.d);
    cuda_free(b.f1); cuda_free(b.f2); cuda_free(b.f3); cuda_free(b.f4);
    // the fused cross-entropy over the slice's logits, in place (as the model runs it): read, then read and write
    int T = 8192, V = 151936;
    MemBench cb = {.a = cuda_alloc((size_t)T * V * 2), .f1 = dev_f32(NULL, (size_t)T), .ids = cuda_alloc((size_t)T * 4), .N = T, .C = V};
    int32_t *ids = xmalloc((size_t)T * 4);
    for (int t = 0; t < T; t++) ids[t] = (int32_t)((t * 7919u) % (unsigned)V);
    cuda_upload(cb.ids, ids, (size_t)T * 4);
    cuda_memset0(cb.a, (size_t)T * V * 2);
    memory_timing("cross-entropy fused 8192x151936 (in place)", run_ce, &cb, 3, 2 * e * T * (double)V);
    free(ids);
    cuda_free(cb.a); cuda_free(cb.f1); cuda_free(cb.ids);
}

// LLAVA_FLASH_EXP2's softmax (one FFMA and ex2 per score) against the plain one, after their checks: versions 6
// and 7's forward, 4 and 5's backward (8's: ws_timing)
static void exp2_timing(Bench *b, double flops, const int *unused) {
    (void)unused;
    for (int version = 4; version <= 7; version++) {
        int backward = version < 6;
        void (*fn)(void *) = backward ? run_attn_bwd : run_attn;
        double f = backward ? 2.5 * flops : flops;
        cuda_attention_set_flash(version);
        if (backward) run_attn(b);  // (an output and lse for the backward)
        double plain = time_ms(fn, b, backward ? 3 : 5);
        cuda_flash_set_exp2(1);
        double fast = time_ms(fn, b, backward ? 3 : 5);
        cuda_flash_set_exp2(-1);
        printf("timing: attention T %d %s d%d, flash v%d %s: exp2 softmax %7.3f ms %6.1f TFLOP/s, plain %7.3f ms %6.1f TFLOP/s\n",
               b->T, b->causal ? "causal" : "bidir", b->D, version, backward ? "backward" : "forward ", fast, f / fast / 1e9, plain,
               f / plain / 1e9);
    }
    cuda_attention_set_flash(-2);
}

// version 8 (warp-specialised: the forward, the backward's dQ kernel, and its dK/dV kernel at head dim 64)
// against the default (the forward of 7 at head dim 128 and 6 at 64; the backward of 7 at 128, whose dK/dV
// kernel 8 shares, and 5 at 64), plain, with the exp2 softmax, and with v8's K/V loads by TMA: last of all,
// after 8's checks (a schedule error there loses nothing)
static void ws_timing(Bench *b, double flops, const int *unused) {
    (void)unused;
    int fwd = b->D == 128 ? 7 : 6, bwd = b->D == 128 ? 7 : 5;
    for (int mode = 0; mode < 3; mode++) {  // plain, exp2 softmax, TMA loads
        cuda_flash_set_exp2(mode == 1 ? 1 : -1);
        cuda_flash_set_ws_tma(mode == 2 ? 1 : -1);
        cuda_attention_set_flash(fwd);
        double old_f = time_ms(run_attn, b, 5);
        cuda_attention_set_flash(bwd);
        double old_b = time_ms(run_attn_bwd, b, 3);
        cuda_attention_set_flash(8);
        double ws_f = time_ms(run_attn, b, 5), ws_b = time_ms(run_attn_bwd, b, 3);
        int gave_up = cuda_flash_ws_timed_out();
        printf("timing: attention T %d %s d%d%s: flash v8 forward %7.3f ms %6.1f TFLOP/s (v%d %7.3f ms %6.1f), backward %7.3f ms "
               "%6.1f TFLOP/s (v%d %7.3f ms %6.1f)%s\n",
               b->T, b->causal ? "causal" : "bidir", b->D, mode == 1 ? " exp2 softmax" : mode == 2 ? " v8 TMA loads" : "", ws_f,
               flops / ws_f / 1e9, fwd, old_f, flops / old_f / 1e9, ws_b, 2.5 * flops / ws_b / 1e9, bwd, old_b, 2.5 * flops / old_b / 1e9,
               gave_up ? " (v8: an mbarrier wait gave up: not a timing)" : "");
    }
    cuda_flash_set_exp2(-1);
    cuda_flash_set_ws_tma(-1);
    cuda_attention_set_flash(-2);
}

int main(int argc, char **argv) {
    char err[256];
    cuda_set_errors_fatal(0);  // (each case's CUDA errors reported through cuda_sync, and on to the next)
    if (cuda_init(0, err, sizeof err)) { printf("ops_check: %s\n", err); return 1; }
    // cuDNN's deterministic backward at the slice's shape keeps dP in a 4.4 GB workspace, above the default
    // limit (the training step then takes its dQ-summing form): let it build here, so that both forms are timed
    setenv("LLAVA_CUDNN_WORKSPACE_MB", "8192", 0);
    if (argc > 1 && !strcmp(argv[1], "--attention")) {
        at_attention_shapes(attention_once, NULL);
        return 0;
    }
    matmul_case(67, 96, 130, 1);
    matmul_case(256, 512, 384, 0);
    // LLAVA_GEMM=tune: new shapes, each product's cuBLASLt candidates timed on its first overwriting call (the
    // picks on stderr), then checked as above
    cuda_matmul_set_tune(1);
    variant = " (gemm tuned)";
    matmul_case(333, 192, 320, 1);
    matmul_case(1029, 256, 768, 0);
    variant = "";
    cuda_matmul_set_tune(-1);
    norm_case(70, 128, 0);  // rows of a multiple of 8: the 8-wide, warp-per-row backward kernels
    norm_case(500, 24, 0);
    norm_case(40, 2560, 0);  // C = 256·k: the one-pass dx + dw kernel (16 rows a block; here a part-filled last one)
    norm_case(40, 1024, 1);
    norm_case(1000, 2560, 0);
    norm_case(1000, 1024, 1);
    for (int rpw = 0; rpw <= 3; rpw += 3) {  // other row partitions of the one-pass kernel (LLAVA_NORM_RPW=0, =3)
        cuda_norm_set_rows_per_warp(rpw);
        norm_case(1000, 2560, 0);
        norm_case(1000, 1024, 1);
    }
    cuda_norm_set_rows_per_warp(-2);
    cuda_norm_set_fused(0);  // the two-pass form at the same shapes (LLAVA_NORM_FUSED=0)
    norm_case(1000, 2560, 0);
    norm_case(1000, 1024, 1);
    cuda_norm_set_fused(-1);
    norm_case(33, 100, 0);  // and the scalar ones
    norm_case(33, 100, 1);
    norm_case(70, 256, 1);
    // the fp32 residual stream's forms: the one-pass backward (C = 256·k), the 8-wide and the scalar kernels
    norm_case_r(40, 2560, 0, 1);
    norm_case_r(40, 1024, 1, 1);
    norm_case_r(70, 128, 0, 1);
    norm_case_r(70, 136, 1, 1);
    norm_case_r(33, 100, 0, 1);
    norm_case_r(33, 100, 1, 1);
    activation_cases(257, 384);
    activation_cases(37, 100);
    copy2d_case(37, 64, 192);  // 16-byte pieces
    copy2d_case(37, 12, 36);   // element by element
    rows_case(50, 64);
    rows_case(50, 12);
    rope_angle_grad_case(40, 1, 16, 64);  // the tower's: one image, 16 heads of 64
    rope_angle_grad_case(40, 3, 5, 128);  // heads not a multiple of the kernel's 8 groups
    rope_angle_grad_case(40, 2, 2, 200);  // more than 64 angles: two blocks
    rope_case(300, 6, 24);
    rope_case(70, 4, 64);
    rope_case(70, 4, 128);
    qkv_rope_case(70, 4, 64);  // the 8-wide kernel
    qkv_rope_case(45, 3, 18);  // one pair a thread
    fused_cases(256, 1);
    fused_cases(100, 0);
    attention_case(6, 2, 24, 1, 0, 2);
    for (int version = 1; version <= 3; version++) attention_cases(version);
    attention_cases(4);  // v4 and v5 (wgmma) last: a fault there leaves the others checked
    attention_cases(5);
    attention_cases(6);
    attention_cases(7);
    attention_case(4, 2, 128, 1, 1, 0);
    decode_case(6, 2, 24, 1);
    decode_case(6, 2, 24, 5);
    decode_case(32, 8, 128, 1000);
    embedding_loss_case(1152);
    embedding_loss_case(1153);
    adamw_case();
    zero_floats_case();
    // the newest kernels last, after the timings (a fault there, which ends the process, loses nothing else)
    int timed = argc < 2 || strcmp(argv[1], "--no-time");
    if (timed) timings(), memory_timings();
    attention_cases(9);
    // and the exp2 softmax (LLAVA_FLASH_EXP2=1: versions 4 and 5's backward, 6 and 7's forward), checked, then timed
    attention_cases_with(cuda_flash_set_exp2, " exp2", 4, 7);
    if (timed) at_attention_shapes(exp2_timing, NULL);
    // version 8 (warp-specialised forward, dQ and head-dim-64 dK/dV, session 17: not yet run on a GPU when
    // written), plain, with the exp2 softmax and with TMA loads, then timed
    attention_cases(8);
    attention_cases_with(cuda_flash_set_exp2, " exp2", 8, 8);
    attention_cases_with(cuda_flash_set_ws_tma, " tma", 8, 8);
    if (timed) at_attention_shapes(ws_timing, NULL);
    // cuDNN's fused attention, forward and backward (session 20: not yet run on a GPU when written), checked, then timed
    cudnn_case(4, 4, 64, 0, 333, 1);
    cudnn_case(8, 2, 128, 1, 700, 1);
    cudnn_case(16, 16, 64, 0, 5185, 1);  // the tower's shape, the slice's heads at a shorter length
    cudnn_case(32, 8, 128, 1, 2048, 1);
    cudnn_case(4, 4, 64, 0, 2 * 301, 2);  // two images of one size (a batch of 2)
    cudnn_case(8, 2, 128, 1, 2 * 256, 2);
    cudnn_packed_cases();  // (session 21: the ragged layout, not yet run on a GPU when written)
    cuda_cudnn_set_dq_accum(1);  // the backward's other form, dQ summed in fp32
    cudnn_case(8, 2, 128, 1, 700, 1);
    cudnn_case(4, 4, 64, 0, 333, 1);
    cuda_cudnn_set_dq_accum(-1);
    if (timed) at_attention_shapes(cudnn_timing, NULL);
    // LLAVA_FLASH=tune: each shape's pick (its timings on stderr), checked as the versions are
    attention_cases(FLASH_TUNE);
    printf("ops_check: %d failure%s\n", failures, failures == 1 ? "" : "s");
    return failures ? 1 : 0;
}
