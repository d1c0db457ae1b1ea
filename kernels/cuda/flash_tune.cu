// flash_tune.cu: LLAVA_FLASH=tune -- the flash kernels of each attention shape picked by timing them where
// they run, inside the training step, instead of by a default measured elsewhere (ops_check times a kernel
// alone, and session 16 found attention 20% slower in the step than alone).
//
// The first forward (backward) of a shape -- direction, T, heads, head dim, causal -- runs every candidate
// below on that call's own inputs: once to warm up, then twice between two CUDA events. The default version
// (flash_default_version) runs first and its outputs are the reference: a candidate whose outputs stray from
// them by a relative L2 above 2e-2 (bf16 kernels differ by ~2e-3), or whose mbarrier waits gave up (version
// 8), is dropped, so that a wrong kernel cannot win by being fast. The fastest of the rest serves every later
// call of the shape (later calls with other sub-sequences of the same T keep the first call's pick), and one
// line on stderr lists every candidate's time. For benchmarks: timings decide, so two runs may pick
// differently and then differ in the last bits (and a pick of cuDNN's dQ-summing backward differs from run to
// run by itself); without it the versions are fixed and runs repeat bit for bit. Shapes are exact, T included:
// made for the benchmarks' fixed shapes, it would tune each new length of training's packed rows (32 kept, then
// looked up in LLAVA_TUNE_FILE, or tuned again, at every call).
#include <math.h>
#include <stdio.h>

#include "../../common/tune_file.h"
#include "common_cuda.cuh"
#include "flash_versions.h"

namespace {

struct Pick {
    int version, exp2, tma;  // LLAVA_FLASH's version, LLAVA_FLASH_EXP2, LLAVA_WS_TMA for this call; with FLASH_CUDNN,
                             // exp2 names the backward's form: 1 cuDNN's dQ summed in fp32, 0 its deterministic one
};
// where exp2 or TMA change nothing (version 4's and 5's forward, 6's backward; TMA outside 8) they are left out
// (FLASH_CUDNN: cuDNN's fused attention, cudnn_attn.cu, where it runs: the library there, a shape it takes)
const Pick fwd_candidates[] = {{4, 0, 0}, {5, 0, 0}, {6, 0, 0}, {6, 1, 0}, {7, 0, 0},       {7, 1, 0},
                               {8, 0, 0}, {8, 1, 0}, {8, 0, 1}, {8, 1, 1}, {FLASH_CUDNN, 0, 0}};
const Pick bwd_candidates[] = {{4, 0, 0}, {4, 1, 0}, {5, 0, 0}, {5, 1, 0}, {6, 0, 0}, {7, 0, 0}, {7, 1, 0},
                               {8, 0, 0}, {8, 1, 0}, {8, 0, 1}, {8, 1, 1}, {FLASH_CUDNN, 0, 0}, {FLASH_CUDNN, 1, 0}};

struct Shape {
    int forward, T, Hq, Hkv, D, causal;
    bool operator==(const Shape &o) const {
        return forward == o.forward && T == o.T && Hq == o.Hq && Hkv == o.Hkv && D == o.D && causal == o.causal;
    }
};
struct Tuned {
    Shape shape;
    Pick pick;
};
Tuned tuned[32];
int ntuned;

// One attention call's arguments, either direction (the backward's outputs dq, dk, dv; the forward's out, lse).
struct Call {
    Shape s;
    bf16 *out, *dq, *dk, *dv;
    float *lse;
    const bf16 *dout, *o_in, *q, *k, *v;  // (o_in: the backward's forward output, for cuDNN's)
    const float *lse_in, *drow;
    const int32_t *cu;
    int nseq, max_len;
    // the outputs the reference compares: pointer and elements
    int nout() const { return s.forward ? 1 : 3; }
    bf16 *output(int i) const { return s.forward ? out : i == 0 ? dq : i == 1 ? dk : dv; }
    size_t count(int i) const { return (size_t)s.T * (s.forward || i == 0 ? s.Hq : s.Hkv) * s.D; }
};

// one run of pick p, its settings for this call only; false where the wgmma kernels do not run here
bool run(const Pick &p, const Call &c) {
    if (p.version == FLASH_CUDNN && c.s.forward)
        return cuda_cudnn_attention_forward(c.out, c.lse, c.q, c.k, c.v, c.cu, c.nseq, c.s.T, c.max_len, c.s.Hq, c.s.Hkv, c.s.D,
                                            c.s.causal) == 0;
    if (p.version == FLASH_CUDNN) {  // (in the form the pick names; a form cuDNN declines falls back to the other)
        cuda_cudnn_set_dq_accum(p.exp2);
        int rc = cuda_cudnn_attention_backward(c.dq, c.dk, c.dv, c.dout, c.o_in, c.lse_in, c.q, c.k, c.v, c.cu, c.nseq, c.s.T, c.max_len,
                                               c.s.Hq, c.s.Hkv, c.s.D, c.s.causal);
        cuda_cudnn_set_dq_accum(-1);
        return rc == 0;
    }
    cuda_flash_set_exp2(p.exp2);
    cuda_flash_set_ws_tma(p.tma);
    int rc = c.s.forward ? cuda_flash_wgmma_forward(p.version, c.out, c.lse, c.q, c.k, c.v, c.cu, c.nseq, c.s.T, c.max_len, c.s.Hq,
                                                    c.s.Hkv, c.s.D, c.s.causal)
                         : cuda_flash_wgmma_backward(p.version, c.dq, c.dk, c.dv, c.dout, c.lse_in, c.drow, c.q, c.k, c.v, c.cu, c.nseq,
                                                     c.s.T, c.max_len, c.s.Hq, c.s.Hkv, c.s.D, c.s.causal);
    cuda_flash_set_exp2(-1);
    cuda_flash_set_ws_tma(-1);
    return rc == 0;
}

// acc[0] += Σ (a − ref)², acc[1] += Σ ref² (atomics: the order does not matter for a threshold)
template <typename T>
__global__ void sq_diff_k(double *acc, const T *a, const T *ref, size_t n) {
    double d = 0.0, r = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        double x = ld(a, i), y = ld(ref, i);
        d += (x - y) * (x - y);
        r += y * y;
    }
    for (int o = 16; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o), r += __shfl_xor_sync(0xffffffffu, r, o);
    if (threadIdx.x % 32 == 0) atomicAdd(acc, d), atomicAdd(acc + 1, r);
}
// relative L2 distance of a from ref (n elements each), NaN where a is not finite
template <typename T>
double rel_l2_of(double *acc, const T *a, const T *ref, size_t n) {
    double h[2];
    CUDA_CHECK(cudaMemsetAsync(acc, 0, 2 * sizeof(double), g_stream));
    sq_diff_k<<<264, 256, 0, g_stream>>>(acc, a, ref, n);
    LAUNCH_CHECK();
    CUDA_CHECK(cudaMemcpyAsync(h, acc, sizeof h, cudaMemcpyDeviceToHost, g_stream));
    CUDA_CHECK(cudaStreamSynchronize(g_stream));
    return sqrt(h[0] / (h[1] > 0.0 ? h[1] : 1e-300));
}
double rel_l2(double *acc, const bf16 *a, const bf16 *ref, size_t n) { return rel_l2_of(acc, (const bf16_t *)a, (const bf16_t *)ref, n); }
double rel_l2(double *acc, const float *a, const float *ref, size_t n) { return rel_l2_of(acc, a, ref, n); }

int name(char *buf, size_t len, const Pick &p) {
    if (p.version == FLASH_CUDNN) return snprintf(buf, len, "cudnn%s", p.exp2 ? "+dqsum" : "");
    return snprintf(buf, len, "v%d%s%s", p.version, p.exp2 ? "+exp2" : "", p.tma ? "+tma" : "");
}

// Every candidate timed on c's inputs (see the head of the file); the call's outputs are the pick's at the end.
// false (nothing run) where the wgmma kernels do not run here.
bool tune(const Call &c, Pick *best) {
    const Pick *cand = c.s.forward ? fwd_candidates : bwd_candidates;
    int n = c.s.forward ? (int)(sizeof fwd_candidates / sizeof *cand) : (int)(sizeof bwd_candidates / sizeof *cand);
    Pick ref = {flash_default_version(c.s.forward, c.s.D), 0, 0};
    cuda_flash_ws_timed_out();       // (a flag left from before is not this tuning's)
    if (!run(ref, c)) return false;  // (the warm-up of the reference)
    bf16 *saved[3] = {};
    for (int i = 0; i < c.nout(); i++)
        if (c.output(i)) saved[i] = (bf16 *)cuda_alloc(c.count(i) * sizeof(bf16));
    // the forward's log-sum-exp too: the backward reads it, whichever version wrote it (cuDNN's included)
    size_t nlse = c.s.forward && c.lse ? (size_t)c.s.T * c.s.Hq : 0;
    float *saved_lse = nlse ? (float *)cuda_alloc(nlse * sizeof(float)) : NULL;
    double *acc = (double *)cuda_alloc(2 * sizeof(double));
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    char line[1024];
    int at = snprintf(line, sizeof line, "flash tune: %s T %d %dq/%dkv d%d %s:", c.s.forward ? "forward" : "backward", c.s.T, c.s.Hq,
                      c.s.Hkv, c.s.D, c.s.causal ? "causal" : "bidir");
    float best_ms = INFINITY;
    *best = ref;
    for (int j = -1; j < n; j++) {  // the reference first, then the candidates (the reference among them skipped)
        const Pick &p = j < 0 ? ref : cand[j];
        if (j >= 0 && p.version == ref.version && p.exp2 == ref.exp2 && p.tma == ref.tma) continue;
        if (j >= 0 && !run(p, c)) {  // warm-up (the launch settings of a kernel's first call); false: it cannot run here
            char what[32];
            name(what, sizeof what, p);
            if (at < (int)sizeof line) at += snprintf(line + at, sizeof line - at, " %s dropped (does not run here)", what);
            continue;
        }
        CUDA_CHECK(cudaEventRecord(e0, g_stream));
        bool ran = run(p, c);  // (false: nothing launched -- cuDNN can refuse at execution -- so no time to believe)
        ran = run(p, c) && ran;
        CUDA_CHECK(cudaEventRecord(e1, g_stream));
        CUDA_CHECK(cudaEventSynchronize(e1));
        float ms = 0.0f;
        CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        ms /= 2;
        char what[32];
        name(what, sizeof what, p);
        double worst = 0.0;
        const char *dropped = !ran ? "a timed run did not run" : p.version == 8 && cuda_flash_ws_timed_out() ? "a wait gave up" : NULL;
        for (int i = 0; i < c.nout() && !dropped; i++) {
            if (!saved[i]) continue;
            if (j < 0) {
                CUDA_CHECK(cudaMemcpyAsync(saved[i], c.output(i), c.count(i) * sizeof(bf16), cudaMemcpyDeviceToDevice, g_stream));
                continue;
            }
            double e = rel_l2(acc, c.output(i), saved[i], c.count(i));
            if (isnan(e) || e > worst) worst = e;  // (a NaN stays)
        }
        if (nlse && !dropped) {
            if (j < 0) CUDA_CHECK(cudaMemcpyAsync(saved_lse, c.lse, nlse * sizeof(float), cudaMemcpyDeviceToDevice, g_stream));
            else if (double e = rel_l2(acc, c.lse, saved_lse, nlse); !(e <= 1e-3)) dropped = "its lse differs from the default's", worst = e;
        }
        if (!dropped && !(worst <= 2e-2)) dropped = "outputs differ from the default's";
        if (at < (int)sizeof line)
            at += dropped ? snprintf(line + at, sizeof line - at, " %s dropped (%s; %.2e)", what, dropped, worst)
                          : snprintf(line + at, sizeof line - at, " %s %.3f ms", what, ms);
        if (!dropped && ms < best_ms) best_ms = ms, *best = p;
    }
    char what[32];
    name(what, sizeof what, *best);
    fprintf(stderr, "%s -> %s\n", line, what);
    if (!run(*best, c)) {  // the call's outputs: the pick's (or, should it now refuse, the default's)
        *best = ref;
        run(ref, c);
    }
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    cuda_free(acc);
    for (int i = 0; i < 3; i++) cuda_free(saved[i]);
    cuda_free(saved_lse);
    return true;
}

// the pick for c's shape: the one made before in this run, or kept in LLAVA_TUNE_FILE, or tuned now (then
// kept there); c's outputs are written. false: not tuned here
bool tuned_run(const Call &c) {
    if (c.s.D != 64 && c.s.D != 128) return false;
    for (int i = 0; i < ntuned; i++)
        if (tuned[i].shape == c.s) return run(tuned[i].pick, c);
    char key[256], value[32], what[32];
    snprintf(key, sizeof key, "flash %s %s T%d %dq/%dkv d%d %s", cuda_device_tag(), c.s.forward ? "forward" : "backward", c.s.T, c.s.Hq,
             c.s.Hkv, c.s.D, c.s.causal ? "causal" : "bidir");
    const char *kept = tune_file_get(key);
    Pick p;
    char end;
    if (kept && sscanf(kept, "%d %d %d %c", &p.version, &p.exp2, &p.tma, &end) == 3 &&
        ((p.version >= 4 && p.version <= 8) || p.version == FLASH_CUDNN) &&
        (p.exp2 == 0 || p.exp2 == 1) && (p.tma == 0 || p.tma == 1)) {
        if (!run(p, c)) return false;
        name(what, sizeof what, p);
        fprintf(stderr, "flash tune: %s: %s (LLAVA_TUNE_FILE)\n", key + 6, what);
    } else {
        if (kept) fprintf(stderr, "flash tune: %s: the kept pick \"%s\" is not one, tuned again\n", key + 6, kept);
        if (!tune(c, &p)) return false;
        snprintf(value, sizeof value, "%d %d %d", p.version, p.exp2, p.tma);
        tune_file_put(key, value);
    }
    if (ntuned < (int)(sizeof tuned / sizeof *tuned)) tuned[ntuned++] = {c.s, p};  // (beyond: looked up again each time)
    return true;
}

}  // namespace

bool flash_tuned_forward(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu, int nseq, int T,
                         int max_len, int Hq, int Hkv, int D, int causal) {
    Call c = {};
    c.s = {1, T, Hq, Hkv, D, causal};
    c.out = out, c.lse = lse, c.q = q, c.k = k, c.v = v, c.cu = cu, c.nseq = nseq, c.max_len = max_len;
    return tuned_run(c);
}

bool flash_tuned_backward(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const bf16 *out, const float *lse, const float *drow, const bf16 *q,
                          const bf16 *k, const bf16 *v, const int32_t *cu, int nseq, int T, int max_len, int Hq, int Hkv, int D,
                          int causal) {
    Call c = {};
    c.s = {0, T, Hq, Hkv, D, causal};
    c.dq = dq, c.dk = dk, c.dv = dv, c.dout = dout, c.o_in = out, c.lse_in = lse, c.drow = drow, c.q = q, c.k = k, c.v = v, c.cu = cu, c.nseq = nseq,
    c.max_len = max_len;
    return tuned_run(c);
}
