// matmul.cu: Linear layers through cuBLASLt (bf16 inputs, fp32 compute). Our tensors are row-major;
// cuBLASLt is column-major, so a row-major X[r, c] is the column-major Xᵀ with leading dimension c:
//   out[N,M] = inp[N,K]·w[M,K]ᵀ     <=>  outᵀ(M×N) = (w-buffer, K×M)ᵀ · (inp-buffer, K×N)
//   dinp[N,K] += dout[N,M]·w[M,K]   <=>  dinpᵀ(K×N) = (w-buffer, K×M) · (dout-buffer, M×N)
//   dw[M,K] += dout[N,M]ᵀ·inp[N,K]  <=>  dwᵀ(K×M) = (inp-buffer, K×N) · (dout-buffer, M×N)ᵀ
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "../../common/tune_file.h"
#include "common_cuda.cuh"
#include "ops_cuda.h"

#define LT_CHECK(x)                                                       \
    do {                                                                  \
        cublasStatus_t s_ = (x);                                          \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                \
            char b_[32];                                                  \
            snprintf(b_, sizeof b_, "status %d", (int)s_);                \
            cuda_note_error(#x, b_);                                      \
        }                                                                 \
    } while (0)

// A shape's descriptors and the heuristic's algorithm, built on its first call and kept: a training
// step repeats the same few shapes, and the heuristic query costs more than a small product.
// LLAVA_GEMM=tune: the heuristic's first TUNE_ALGOS candidates are timed on the shape's first call that
// overwrites its output (beta 0: the trials may write it), and the fastest kept -- cuBLASLt's first choice
// is a model's guess (the tower's products, 5185 rows, ran at 515-710 TFLOP/s where the card does 777). One
// line on stderr per tuned shape. For benchmarks: timings decide, so two runs may pick differently and then
// differ in the last bits; without it the heuristic's first choice repeats bit for bit.
enum { TUNE_ALGOS = 8 };
typedef struct {
    cublasOperation_t ta, tb;
    int m, n, k, lda, ldb, ldd, epi;  // epi: EPI_NONE, EPI_BIAS, EPI_BGRADB
    uint32_t align_a, align_b, align_d;  // of the pointers, up to 256: the heuristic must not assume more
    cudaDataType_t dtype;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, ld;
    cublasLtMatmulAlgo_t algo;
    int found;
    cublasLtMatmulAlgo_t candidates[TUNE_ALGOS];  // (LLAVA_GEMM=tune: the heuristic's first ones, until timed)
    int ncandidates, tuned;
    uint64_t used;  // when last asked for (the table's replacement order)
} LtPlan;
static int gemm_tune = ENV_UNREAD;
extern "C" void cuda_matmul_set_tune(int on) { gemm_tune = on < 0 ? (int)ENV_UNREAD : on != 0; }
static bool gemm_tuning(void) {
    if (gemm_tune == ENV_UNREAD) {
        const char *e = getenv("LLAVA_GEMM");
        gemm_tune = e && !strcmp(e, "tune");
    }
    return gemm_tune == 1;
}
// Plans by shape. Training's packed sequences vary in length from micro-batch to micro-batch, and with them the
// products' shapes: past MAX_PLANS the plan asked for least recently makes room (the current lengths' dozen shapes
// stay, so a step queries the heuristic once per new shape, not once per call).
enum { MAX_PLANS = 256 };
static LtPlan plans[MAX_PLANS];
static int nplans;
static uint64_t plan_clock;

static uint32_t alignment(const void *p) {
    uintptr_t a = (uintptr_t)p & (~(uintptr_t)p + 1);  // lowest set bit
    return a == 0 || a > 256 ? 256 : (uint32_t)a;
}

// the epilogue of a product: none, a bias added (bf16, length m), or the bias gradient of B's columns written
// (fp32, length n: Σ over k of op(B), the dW product's Σ_rows dout)
enum { EPI_NONE, EPI_BIAS, EPI_BGRADB };
static LtPlan *lt_plan(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, int lda, int ldb, cudaDataType_t dtype,
                       int ldd, int epi, uint32_t align_a, uint32_t align_b, uint32_t align_d) {
    for (int i = 0; i < nplans; i++) {
        LtPlan *p = &plans[i];
        if (p->ta == ta && p->tb == tb && p->m == m && p->n == n && p->k == k && p->lda == lda && p->ldb == ldb &&
            p->ldd == ldd && p->dtype == dtype && p->epi == epi && p->align_a == align_a && p->align_b == align_b &&
            p->align_d == align_d) {
            p->used = ++plan_clock;
            return p;
        }
    }
    LtPlan *p = &plans[0];
    if (nplans < MAX_PLANS) p = &plans[nplans++];
    else {  // the least recently used one goes (its descriptors with it: work already queued keeps its own copies)
        for (int i = 1; i < MAX_PLANS; i++)
            if (plans[i].used < p->used) p = &plans[i];
        cublasLtMatrixLayoutDestroy(p->la);
        cublasLtMatrixLayoutDestroy(p->lb);
        cublasLtMatrixLayoutDestroy(p->ld);
        cublasLtMatmulDescDestroy(p->op);
    }
    memset(p, 0, sizeof *p);
    p->used = ++plan_clock;
    p->ta = ta; p->tb = tb; p->m = m; p->n = n; p->k = k; p->lda = lda; p->ldb = ldb; p->ldd = ldd; p->epi = epi;
    p->dtype = dtype;
    p->align_a = align_a;
    p->align_b = align_b;
    p->align_d = align_d;
    LT_CHECK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (epi != EPI_NONE) {
        cublasLtEpilogue_t ep = epi == EPI_BIAS ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_BGRADB;
        cudaDataType_t bt = epi == EPI_BIAS ? CUDA_R_16BF : CUDA_R_32F;
        LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
        LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
    }
    LT_CHECK(cublasLtMatrixLayoutCreate(&p->la, CUDA_R_16BF, ta == CUBLAS_OP_N ? m : k, ta == CUBLAS_OP_N ? k : m, lda));
    LT_CHECK(cublasLtMatrixLayoutCreate(&p->lb, CUDA_R_16BF, tb == CUBLAS_OP_N ? k : n, tb == CUBLAS_OP_N ? n : k, ldb));
    LT_CHECK(cublasLtMatrixLayoutCreate(&p->ld, dtype, m, n, ldd));
    cublasLtMatmulPreference_t pref;
    LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &g_lt_workspace_bytes,
                                                  sizeof g_lt_workspace_bytes));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof align_a));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof align_b));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d, sizeof align_d));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d, sizeof align_d));
    cublasLtMatmulHeuristicResult_t h[TUNE_ALGOS];
    int want = gemm_tuning() ? TUNE_ALGOS : 1;
    cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(g_lt, p->op, p->la, p->lb, p->ld, p->ld, pref, want, h, &p->found);
    if (hs != CUBLAS_STATUS_SUCCESS) {
        p->found = 0;  // (the fused bias gradient is optional: its caller falls back; elsewhere lt_matmul reports it)
        if (epi != EPI_BGRADB) LT_CHECK(hs);
    }
    if (p->found) p->algo = h[0].algo;
    for (int i = 0; i < p->found && i < want; i++)
        if (h[i].state == CUBLAS_STATUS_SUCCESS) p->candidates[p->ncandidates++] = h[i].algo;
    p->tuned = p->ncandidates < 2;  // (one candidate: nothing to choose)
    cublasLtMatmulPreferenceDestroy(pref);
    return p;
}

// the plan's key in LLAVA_TUNE_FILE: the device, cuBLASLt's version (an algorithm is kept as its bytes, which
// the same version reads back) and everything the plan is keyed by
static void plan_key(const LtPlan *p, char *key, size_t len) {
    snprintf(key, len, "gemm %s cublasLt%zu %c%c m%d n%d k%d lda%d ldb%d ldd%d %s epi%d align%u/%u/%u", cuda_device_tag(),
             cublasLtGetVersion(), p->ta == CUBLAS_OP_T ? 'T' : 'N', p->tb == CUBLAS_OP_T ? 'T' : 'N', p->m, p->n, p->k, p->lda, p->ldb,
             p->ldd, p->dtype == CUDA_R_32F ? "f32" : "bf16", p->epi, p->align_a, p->align_b, p->align_d);
}
// the algorithm kept for the plan in LLAVA_TUNE_FILE, if there is one that cuBLASLt still takes for it
static bool kept_algo(LtPlan *p, const char *key) {
    const char *hex = tune_file_get(key);
    cublasLtMatmulAlgo_t algo;
    unsigned char *b = (unsigned char *)&algo;
    if (!hex || strlen(hex) != 2 * sizeof algo) return false;
    for (size_t i = 0; i < sizeof algo; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) return false;
        b[i] = (unsigned char)v;
    }
    cublasLtMatmulHeuristicResult_t check;
    if (cublasLtMatmulAlgoCheck(g_lt, p->op, p->la, p->lb, p->ld, p->ld, &algo, &check) != CUBLAS_STATUS_SUCCESS ||
        check.state != CUBLAS_STATUS_SUCCESS || check.workspaceSize > g_lt_workspace_bytes)
        return false;
    p->algo = algo;
    return true;
}

// LLAVA_GEMM=tune: the algorithm kept in LLAVA_TUNE_FILE, or each candidate run once (its first launch), then
// timed over 3 runs, and the fastest kept (there too); D, overwritten by every run, is rewritten by the
// caller's run after
static void tune_plan(LtPlan *p, const void *A, const void *B, void *D) {
    char key[320];
    plan_key(p, key, sizeof key);
    p->tuned = 1;
    if (kept_algo(p, key)) return;
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    float alpha = 1.0f, beta = 0.0f, best = INFINITY, first = 0.0f;
    int pick = 0;
    for (int i = 0; i < p->ncandidates; i++) {
        cublasStatus_t st = cublasLtMatmul(g_lt, p->op, &alpha, A, p->la, B, p->lb, &beta, D, p->ld, D, p->ld, &p->candidates[i],
                                           g_lt_workspace, g_lt_workspace_bytes, g_stream);
        if (st != CUBLAS_STATUS_SUCCESS) {  // (a candidate that will not run here is no candidate)
            cudaGetLastError();              // (nor is a launch error it met the next kernel's)
            continue;
        }
        CUDA_CHECK(cudaEventRecord(e0, g_stream));
        for (int r = 0; r < 3; r++)
            LT_CHECK(cublasLtMatmul(g_lt, p->op, &alpha, A, p->la, B, p->lb, &beta, D, p->ld, D, p->ld, &p->candidates[i],
                                    g_lt_workspace, g_lt_workspace_bytes, g_stream));
        CUDA_CHECK(cudaEventRecord(e1, g_stream));
        CUDA_CHECK(cudaEventSynchronize(e1));
        float ms = 0.0f;
        CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        ms /= 3;
        if (i == 0) first = ms;
        if (ms < best) best = ms, pick = i;
    }
    if (isinf(best)) {  // (none ran: the heuristic's first stays, and nothing is kept)
        CUDA_CHECK(cudaEventDestroy(e0));
        CUDA_CHECK(cudaEventDestroy(e1));
        return;
    }
    p->algo = p->candidates[pick];
    char hex[2 * sizeof p->algo + 1];
    for (size_t i = 0; i < sizeof p->algo; i++) snprintf(hex + 2 * i, 3, "%02x", ((const unsigned char *)&p->algo)[i]);
    tune_file_put(key, hex);
    fprintf(stderr, "gemm tune: %c%c m %d n %d k %d %s%s: heuristic's first %.1f us, candidate %d of %d %.1f us\n",
            p->ta == CUBLAS_OP_T ? 'T' : 'N', p->tb == CUBLAS_OP_T ? 'T' : 'N', p->m, p->n, p->k,
            p->dtype == CUDA_R_32F ? "fp32 out" : "bf16 out", p->epi == EPI_BIAS ? " +bias" : p->epi == EPI_BGRADB ? " +dbias" : "",
            1e3 * first, pick + 1, p->ncandidates,
            1e3 * best);
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
}

// D(m×n) = op(A)·op(B) + beta·D, column-major, with epilogue epi on vector bias (see EPI_*). -1 (nothing run)
// where cuBLASLt has no algorithm for it: an error, except for EPI_BGRADB, whose caller then sums dbias itself.
static int lt_matmul(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void *A, int lda, const void *B, int ldb,
                     void *D, cudaDataType_t dtype, int ldd, float beta, int epi, const void *bias) {
    LtPlan *p = lt_plan(ta, tb, m, n, k, lda, ldb, dtype, ldd, epi, alignment(A), alignment(B), alignment(D));
    if (!p->found) {
        if (epi != EPI_BGRADB) cuda_note_error("cublasLtMatmulAlgoGetHeuristic", "no algorithm for this shape");
        return -1;
    }
    if (epi != EPI_NONE) LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    float alpha = 1.0f;
    if (!p->tuned && beta == 0.0f && gemm_tuning()) tune_plan(p, A, B, D);
    cublasStatus_t st = cublasLtMatmul(g_lt, p->op, &alpha, A, p->la, B, p->lb, &beta, D, p->ld, D, p->ld, &p->algo, g_lt_workspace,
                                       g_lt_workspace_bytes, g_stream);
    if (st != CUBLAS_STATUS_SUCCESS && epi == EPI_BGRADB) {  // (refused at launch: the caller sums dbias, now and from now on)
        cudaGetLastError();
        p->found = 0;
        return -1;
    }
    LT_CHECK(st);
    return 0;
}

extern "C" void cuda_matmul_forward(bf16 *out, const bf16 *inp, const bf16 *w, const bf16 *bias, int N, int K, int M) {
    lt_matmul(CUBLAS_OP_T, CUBLAS_OP_N, M, N, K, w, K, inp, K, out, CUDA_R_16BF, M, 0.0f, bias ? EPI_BIAS : EPI_NONE, bias);
}

// dbias[m] += Σ_n dout[n, m]: partial sums over ROWS_PER_PART rows, added in order by reduce_parts
__global__ static void bias_grad_parts(float *part, const bf16_t *dout, int N, int M) {
    int p = blockIdx.y, m = blockIdx.x * blockDim.x + threadIdx.x;
    if (m >= M) return;
    float s = 0.0f;
    for (int n = p * ROWS_PER_PART; n < N && n < (p + 1) * ROWS_PER_PART; n++) s += ld(dout, (size_t)n * M + m);
    part[(size_t)p * M + m] = s;
}

static int fused_dbias_mode = ENV_UNREAD;
static bool fused_dbias(void) { return !cuda_safe_kernels() && cuda_env_setting(&fused_dbias_mode, "LLAVA_FUSED_DBIAS", 1) == 1; }
extern "C" void cuda_matmul_set_fused_dbias(int on) { fused_dbias_mode = on < 0 ? (int)ENV_UNREAD : on != 0; }

extern "C" void cuda_matmul_backward(bf16 *dinp, float *dw, float *dbias, const bf16 *dout, const bf16 *inp, const bf16 *w,
                                     int N, int K, int M, int set) {
    float dinp_beta = set & 1 ? 0.0f : 1.0f, dw_beta = set & 2 ? 0.0f : 1.0f;  // (MM_SET_DINP, MM_SET_DW)
    if (dinp) lt_matmul(CUBLAS_OP_N, CUBLAS_OP_N, K, N, M, w, K, dout, M, dinp, CUDA_R_16BF, K, dinp_beta, EPI_NONE, NULL);
    // dbias in the dW product's epilogue (it reads dout already) where both are written over (MM_SET_DW: the epilogue
    // writes, it does not add) and cuBLASLt has an algorithm for it; else summed by bias_grad_parts
    bool fused_db = dw && dbias && (set & 2) && fused_dbias() && alignment(dbias) >= 16 &&  // (the epilogue's vector: 16 bytes)
                    lt_matmul(CUBLAS_OP_N, CUBLAS_OP_T, K, M, N, inp, K, dout, M, dw, CUDA_R_32F, K, 0.0f, EPI_BGRADB, dbias) == 0;
    if (dw && !fused_db) lt_matmul(CUBLAS_OP_N, CUBLAS_OP_T, K, M, N, inp, K, dout, M, dw, CUDA_R_32F, K, dw_beta, EPI_NONE, NULL);
    if (dbias && !fused_db) {
        if (set & 2) CUDA_CHECK(cudaMemsetAsync(dbias, 0, (size_t)M * sizeof(float), g_stream));
        int parts = (N + ROWS_PER_PART - 1) / ROWS_PER_PART;
        float *part = (float *)cuda_scratch((size_t)parts * M * sizeof(float));
        bias_grad_parts<<<dim3((M + 127) / 128, parts), 128, 0, g_stream>>>(part, (const bf16_t *)dout, N, M);
        LAUNCH_CHECK();
        reduce_parts(dbias, part, parts, M);
    }
}
