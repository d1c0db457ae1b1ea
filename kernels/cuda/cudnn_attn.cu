// cudnn_attn.cu: attention forward and backward through cuDNN's fused flash attention (its graph API), beside our
// own kernels: LLAVA_FLASH=cudnn, and a candidate of LLAVA_FLASH=tune in each direction (the two read and write
// the same log-sum-exp, so either direction may be cuDNN's and the other ours). "Real libraries for solved
// problems": cuDNN 9 ships FlashAttention-class kernels for Hopper, and PyTorch's SDPA can run them; whether they
// beat ours at our shapes is for the GPU runs to say.
//
// libcudnn.so.9 is opened at run time (as NCCL is): the build needs only the header, a machine without the
// library runs our kernels, and every cuDNN failure -- no library, a graph its engines do not take, a workspace
// too large, an execution error -- leaves the caller's buffers untouched and the caller runs its own version
// (cuda_cudnn_status says why); LLAVA_CUDNN=0 keeps it unloaded.
// One sequence (cu_seqlens = {0, T}: the benches' slice and tower), several of one length (a batch: the whole
// model's images of one size), or packed sequences of different lengths (training's packed samples, images of
// different sizes) in cuDNN's ragged layout ("THD", 9.6 or later): a padding mask and per-sequence extents from
// each sequence's length, its rows found by per-sequence starts, both computed from cu_seqlens on the device per
// call; the count of sequences and the positions rounded up to buckets (as Transformer Engine does) so that a run
// meets few plans, the sequences past the count having length 0.
//
// The graphs are in cudnn_graph.cuh; here, the plans (one per shape and direction, built on first use), the device
// buffers they share, and the calls.
// Without a GPU, cuda_cudnn_check_graphs has cuDNN build the graphs for a described device (tests/cudnn.bats).
#include <dlfcn.h>
#include <float.h>
#include <stdio.h>
#include <string.h>

#include <initializer_list>
#include <utility>

#include "common_cuda.cuh"
#include "ops_cuda.h"

static char g_cudnn_status[256] = "not tried";
extern "C" const char *cuda_cudnn_status(void) { return g_cudnn_status; }

#if __has_include(<cudnn_graph.h>)
#include <cudnn_graph.h>

namespace {

#include "cudnn_graph.cuh"

// the library and a handle on the current device, once (a failure is not retried)
bool api_open(void) {
    if (api.handle) return true;
    if (api.failed) return false;
    api.failed = 1;
    static int off = ENV_UNREAD;
    if (cuda_env_setting(&off, "LLAVA_CUDNN", 1) == 0) {  // LLAVA_CUDNN=0: never loaded (our kernels serve)
        snprintf(g_cudnn_status, sizeof g_cudnn_status, "LLAVA_CUDNN=0");
        return false;
    }
    if (!api_load()) return false;
    cudnnStatus_t s = api.create(&api.handle);
    if (s != CUDNN_STATUS_SUCCESS) {
        snprintf(g_cudnn_status, sizeof g_cudnn_status, "cudnnCreate: %s", api.error(s));
        api.handle = NULL;
        return false;
    }
    api.failed = 0;
    snprintf(g_cudnn_status, sizeof g_cudnn_status, "cuDNN %zu loaded", api.version());
    return true;
}

// Device buffers all plans draw on, grown (when a plan is built) to the largest one asks for and never shrunk:
// every cuDNN call runs in the main stream's order (the side stream takes only the optimizer), so one call's use
// of them is over before the next call's begins
//   BUF_WORKSPACE  cuDNN's workspace
//   BUF_ACC        the backward's dQ sums where dq_accum: [T, Hq, D] head-major; where ragged, in dQ's layout
//   BUF_STATS      [Hq, T]: the log-sum-exp in cuDNN's order (not cuda_scratch: the backward's caller holds its row
//                  sums D there while the tuner runs candidates); where ragged, none: cuDNN reads and writes our
//                  lse [T, Hq] in place
//   BUF_META       (ragged) the lengths int32 [B], then the starts int64 [B + 1] in Q's, K's and the lse's elements
//   BUF_HEADS      (ragged backward with GQA) dK and dV per query head before their group sums, [S, Hq, D] each
enum { BUF_WORKSPACE, BUF_ACC, BUF_STATS, BUF_META, BUF_HEADS, NBUF };
void *bufs[NBUF];
size_t buf_bytes[NBUF];
// bytes more than it holds, or 0
size_t growth(int which, size_t bytes) { return bytes > buf_bytes[which] ? bytes - buf_bytes[which] : 0; }
// false (the buffer as it was: plans built before keep theirs) where the device has not the room
bool grow_buffer(int which, size_t bytes) {
    if (bytes <= buf_bytes[which]) return true;
    void *p = cuda_try_alloc(bytes);  // (before the old one goes: a failure must leave it)
    if (!p) return false;
    cuda_release(bufs[which]);  // (after the smaller buffer's last use)
    bufs[which] = p;
    buf_bytes[which] = bytes;
    return true;
}
Plan plans[64];
int nplans;

Plan plan_key(int backward, int B, int S, int Hq, int Hkv, int D, int causal, int ragged, int want_accum) {
    Plan p = {};
    p.backward = backward, p.B = B, p.S = S, p.Hq = Hq, p.Hkv = Hkv, p.D = D, p.causal = causal, p.ragged = ragged;
    p.want_accum = p.dq_accum = want_accum;
    return p;
}

// "T 8192 32q/8kv d128 causal", "2x4097 16q/16kv d64 bidir" for several sequences of one length, "ragged 32x8192 ..."
// for up to 32 of different lengths in up to 8192 positions
const char *shape_text(const Plan *p) {
    static char buf[96];
    if (p->B == 1 && !p->ragged) snprintf(buf, sizeof buf, "T %d", p->S);
    else snprintf(buf, sizeof buf, "%s%dx%d", p->ragged ? "ragged " : "", p->B, p->S);
    snprintf(buf + strlen(buf), sizeof buf - strlen(buf), " %dq/%dkv d%d %s", p->Hq, p->Hkv, p->D, p->causal ? "causal" : "bidir");
    return buf;
}

// Check mode (cuda_cudnn_check_graphs): the properties of a target device instead of a handle, and a plan counts as
// built once its kernels compiled (loading them needs the device)
cudnnBackendDescriptor_t g_devprop;

// the most device memory a plan's workspace may take: LLAVA_CUDNN_WORKSPACE_MB (default 2048), and at most half
// of what is free now (a backward's workspace can grow with B·S; above it, cuDNN declines and our kernels serve)
int workspace_mb_setting = ENV_UNREAD;
size_t workspace_room(void) {
    size_t room = (size_t)cuda_env_setting(&workspace_mb_setting, "LLAVA_CUDNN_WORKSPACE_MB", 2048) << 20, free_b = 0, total = 0;
    if (!g_devprop && cudaMemGetInfo(&free_b, &total) == cudaSuccess && free_b / 2 < room) room = free_b / 2;
    return room;
}

// the ragged layout's per-call buffer: lengths int32 [B] (rounded up to 16 bytes), then three int64 [B + 1] starts
size_t meta_lens_bytes(int B) { return ((size_t)B * 4 + 15) / 16 * 16; }
size_t meta_starts_bytes(int B) { return ((size_t)(B + 1) * 8 + 15) / 16 * 16; }
size_t meta_bytes(int B) { return meta_lens_bytes(B) + 3 * meta_starts_bytes(B); }
// (ragged backward with GQA) each of dK's and dV's per-head products: [S, Hq, D] (sized in fp32, as the frontend does)
size_t heads_bytes(const Plan *p) { return (size_t)p->S * p->Hq * p->D * sizeof(float); }

// p's graph, then its plan from the first engine config (heuristic mode A) that builds
void build(Plan *p) {
    Builder g;
    if (p->backward) backward_graph(g, p);
    else forward_graph(g, p);
    cudnnBackendDescriptor_t graph = g.make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
    if (g.ok()) api.set_attr(graph, OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &api.handle);  // (a library past 9.19 may ignore it)
    g.set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, g.nops, g.ops, "graph ops");
    g.done(graph, "graph finalize");
    cudnnBackendDescriptor_t heur = g.make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "heuristics");
    cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    g.set_desc(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph, "heuristics graph");
    g.set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heuristics mode");
    if (g_devprop) g.set_desc(heur, CUDNN_ATTR_ENGINEHEUR_DEVICEPROP, g_devprop, "heuristics device");
    g.done(heur, "heuristics finalize");
    int64_t n = 0;
    if (g.ok()) g.note(api.get_attr(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &n, NULL), "heuristics count");
    cudnnBackendDescriptor_t cfg[8];
    if (n > 8) n = 8;
    for (int64_t i = 0; i < n; i++) cfg[i] = g.make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine config");
    int64_t got = 0;
    if (g.ok() && n > 0) g.note(api.get_attr(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n, &got, cfg), "heuristics results");
    cudnnStatus_t last = CUDNN_STATUS_NOT_SUPPORTED;
    for (int64_t i = 0; g.ok() && i < got && !p->plan; i++) {  // the first config whose plan builds
        cudnnBackendDescriptor_t plan = g.make(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, "plan");
        if (g_devprop) g.set_desc(plan, CUDNN_ATTR_EXECUTION_PLAN_DEVICEPROP, g_devprop, "plan device");
        else api.set_attr(plan, EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &api.handle);
        g.set_desc(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, cfg[i], "plan config");
        if (!g.ok()) break;
        last = api.finalize(plan);
        if (last == CUDNN_STATUS_SUCCESS) p->plan = plan;
        if (g_devprop && last == CUDNN_STATUS_EXECUTION_FAILED_CUDA_DRIVER) {  // (check mode: compiled, not loadable here)
            int64_t ws = -1, one = 0;  // (the config's workspace: the plan's, which cannot be finalized here)
            api.get_attr(cfg[i], CUDNN_ATTR_ENGINECFG_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &one, &ws);
            p->ok = 1;
            snprintf(g_cudnn_status, sizeof g_cudnn_status, "cuDNN %zu: %s %s compiled by engine config %d of %d (workspace %lld bytes)",
                     api.version(), p->backward ? "backward" : "forward", shape_text(p), (int)i, (int)got, (long long)ws);
            return;
        }
    }
    int64_t ws = 0, one = 0;
    if (p->plan) g.note(api.get_attr(p->plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &one, &ws), "workspace size");
    const char *what = p->backward ? (p->dq_accum ? "backward (dQ summed)" : "backward") : "forward";
    // the buffers it needs: where the device has not the room (at most half of what is free, cuda_alloc would end
    // the run), our kernels serve instead
    size_t T = p->ragged ? (size_t)p->S : (size_t)p->B * p->S;  // (the most rows a call has)
    size_t need[NBUF] = {(size_t)ws, p->dq_accum ? T * p->Hq * p->D * sizeof(float) : 0, p->ragged ? 0 : T * p->Hq * sizeof(float),
                         p->ragged ? meta_bytes(p->B) : 0, p->ragged && p->backward && p->Hq != p->Hkv ? 2 * heads_bytes(p) : 0};
    size_t room = workspace_room(), more = 0;
    for (int b = 0; b < NBUF; b++) more += growth(b, need[b]);
    bool fits = (size_t)ws <= room && more <= room;
    for (int b = 0; g.ok() && p->plan && fits && b < NBUF; b++) fits = grow_buffer(b, need[b]);
    if (g.ok() && p->plan && !fits) {
        snprintf(g_cudnn_status, sizeof g_cudnn_status, "cuDNN %zu: %s %s declined: its workspace of %lld bytes and buffers (%zu bytes more) "
                 "are above %zu or were not to be had", api.version(), what, shape_text(p), (long long)ws, more, room);
        p->plan = NULL;
    } else if (g.ok() && p->plan) {
        p->workspace = (size_t)ws;
        p->ok = 1;
        snprintf(g_cudnn_status, sizeof g_cudnn_status, "cuDNN %zu: %s %s built (%d engine configs, workspace %lld bytes)", api.version(),
                 what, shape_text(p), (int)got, (long long)ws);
    } else {
        p->plan = NULL;
        snprintf(g_cudnn_status, sizeof g_cudnn_status, "cuDNN %zu: %s %s declined: %s (%s)", api.version(), what, shape_text(p),
                 g.ok() ? "no engine config built a plan" : g.where, api.error(g.ok() ? last : g.status));
    }
    if (!g_devprop) fprintf(stderr, "%s\n", g_cudnn_status);
}

// LLAVA_CUDNN_DQ_ACCUM=1 (or cuda_cudnn_set_dq_accum): the backward asks first for cuDNN's form that sums dQ in
// fp32 across key blocks (its default; the order of the sums may vary) instead of its deterministic one (ours: runs
// repeat bit for bit); either falls back to the other where no engine takes it
int accum_setting = ENV_UNREAD;

// the plan of a shape and direction: built on its first call (the backward in the form asked for, else the other),
// then kept. Where ragged, the dQ-summing form first whatever is asked: the other's workspace holds dP for every
// sequence of the bucket, B·Hq·S² bf16 (141 GB for 32 sequences in 8192 positions of 32 heads; 4.4 GB for one).
Plan *plan_for(int backward, int B, int S, int Hq, int Hkv, int D, int causal, int ragged) {
    int want = backward && (ragged || cuda_env_setting(&accum_setting, "LLAVA_CUDNN_DQ_ACCUM", 0) == 1);
    Plan key = plan_key(backward, B, S, Hq, Hkv, D, causal, ragged, want);
    for (int i = 0; i < nplans; i++) {
        Plan *p = &plans[i];
        if (p->backward == backward && p->B == B && p->S == S && p->Hq == Hq && p->Hkv == Hkv && p->D == D && p->causal == causal &&
            p->ragged == ragged && p->want_accum == want)
            return p;
    }
    if (nplans == (int)(sizeof plans / sizeof *plans)) return NULL;  // (a run's few shapes and buckets: more are not kept)
    Plan *p = &plans[nplans++];
    *p = key;
    build(p);
    if (backward && !p->ok) {  // the other form
        p->dq_accum = !want;
        build(p);
    }
    return p;
}

// The ragged layout's buckets (as Transformer Engine quantises them, so that a run meets few plans): sequences
// up to 32 -> 32, then powers of two to 512, then multiples of 512; positions up to 1024 -> 1024, then powers of
// two to 32768, then multiples of 32768
int bucket(int n, int first, int last) {
    if (n <= first) return first;
    if (n > last) return (n + last - 1) / last * last;
    int b = first;
    while (b < n) b *= 2;
    return b;
}

// lengths and starts of the ragged layout from cu_seqlens: sequence b < nseq is cu[b] .. cu[b + 1]; those past nseq
// (up to the bucket's B) have length 0 and start at the end
__global__ void ragged_meta(int32_t *len, int64_t *qo, int64_t *kv, int64_t *lse, const int32_t *cu, int nseq, int B, int Hq, int Hkv,
                            int D) {
    for (int b = threadIdx.x; b <= B; b += blockDim.x) {
        int64_t start = cu[b < nseq ? b : nseq];
        if (b < B) len[b] = b < nseq ? cu[b + 1] - cu[b] : 0;
        qo[b] = start * Hq * D, kv[b] = start * Hkv * D, lse[b] = start * Hq;
    }
}

// where p's stats live: our lse [T, Hq] itself (ragged), else the shared buffer in cuDNN's order, [B, Hq, S]
float *stats_of(const Plan *p, const float *lse) { return p->ragged ? (float *)lse : (float *)bufs[BUF_STATS]; }

// lse[b·S + t, h] = stats[b, h, t] (to_lse), or the other way round
__global__ void transpose_stats(float *dst, const float *src, int T, int S, int H, int to_lse) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)T * H) return;
    int row = (int)(i / H), h = (int)(i % H), b = row / S, t = row % S;
    size_t j = ((size_t)b * H + h) * S + t;
    if (to_lse) dst[i] = src[j];
    else dst[j] = src[i];
}

// p's plan on the tensors of the variant pack (uids, pointers), on the backend's stream; false (nothing run, the
// shape not tried again) when cuDNN refuses
bool execute(Plan *p, int n, const int64_t *uids, void *const *ptrs) {
    cudnnBackendDescriptor_t pack = NULL;
    cudnnStatus_t s = api.create_desc(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack);
    if (s == CUDNN_STATUS_SUCCESS) s = api.set_attr(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids);
    if (s == CUDNN_STATUS_SUCCESS) s = api.set_attr(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, ptrs);
    void *workspace = p->workspace ? bufs[BUF_WORKSPACE] : NULL;
    if (s == CUDNN_STATUS_SUCCESS) s = api.set_attr(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
    if (s == CUDNN_STATUS_SUCCESS) s = api.finalize(pack);
    if (s == CUDNN_STATUS_SUCCESS) s = api.set_stream(api.handle, g_stream);  // (the main or the side stream)
    if (s == CUDNN_STATUS_SUCCESS) s = api.execute(api.handle, p->plan, pack);
    if (pack) api.destroy_desc(pack);
    if (s == CUDNN_STATUS_SUCCESS) return true;
    cudaGetLastError();  // (a launch error cuDNN met, not sticky, is its refusal: not the next kernel's error)
    p->ok = 0;
    snprintf(g_cudnn_status, sizeof g_cudnn_status, "cuDNN %zu: %s %s failed to run: %s", api.version(), p->backward ? "backward" : "forward",
             shape_text(p), api.error(s));
    fprintf(stderr, "%s\n", g_cudnn_status);
    return false;
}

// One sequence, or nseq of the same length (nseq·max_len = T says so without reading cu_seqlens): a batch of
// B = nseq; else packed sequences of different lengths in the ragged layout (cuDNN 9.6 or later: its stats in
// our lse layout), B and S bucketed. The plan then, or NULL (nothing run) where cuDNN does not take the call.
// Dense plans are built for exact lengths (a build compiles kernels: about a second each way), so past DENSE_SHAPES
// of them a call of a length not yet planned takes the ragged layout's buckets instead: training's rows that hold one
// sample vary in length from micro-batch to micro-batch; the benches' and ops_check's few shapes stay dense.
enum { DENSE_SHAPES = 16 };
bool dense_planned(int B, int S, int Hq, int Hkv, int D, int causal) {  // (in either direction)
    for (int i = 0; i < nplans; i++) {
        const Plan *p = &plans[i];
        if (!p->ragged && p->B == B && p->S == S && p->Hq == Hq && p->Hkv == Hkv && p->D == D && p->causal == causal) return true;
    }
    return false;
}
int dense_shapes(void) {
    int n = 0;
    for (int i = 0; i < nplans; i++) n += !plans[i].ragged && !plans[i].backward;
    return n;
}

Plan *plan_for_call(int backward, int nseq, int T, int max_len, int Hq, int Hkv, int D, int causal) {
    if (nseq < 1 || Hq % Hkv || D % 8 || D > 128 || !api_open()) return NULL;
    static int ragged_on = ENV_UNREAD;  // (LLAVA_CUDNN_RAGGED=0: our kernels for packed sequences of different lengths)
    bool ragged_usable = api.version() >= 90600 && cuda_env_setting(&ragged_on, "LLAVA_CUDNN_RAGGED", 1);
    int ragged = nseq > 1 && (long long)nseq * max_len != T;
    if (!ragged && ragged_usable && dense_shapes() >= DENSE_SHAPES && !dense_planned(nseq, T / nseq, Hq, Hkv, D, causal)) ragged = 1;
    // cuDNN up to 9.15.0 gives NaN in the dense backward where the length is not a multiple of 128 and no padding
    // mask is set (cudnn-frontend adds one there, issue #160 / PR #178): the ragged form has that mask
    if (backward && !ragged && api.version() <= 91500 && (T / nseq) % 128) {
        if (!ragged_usable) {
            snprintf(g_cudnn_status, sizeof g_cudnn_status, "cuDNN %zu: the dense backward at length %d (not a multiple of 128) needs 9.15.1",
                     api.version(), T / nseq);
            return NULL;
        }
        ragged = 1;
    }
    // the frontend's own limits on the ragged backward (its packed dQ sums and per-head dK/dV): head dims that are
    // multiples of 16, and from 9.18.1 not on Ampere-style kernels (compute capability 8.x, 12.x): "known functional
    // issue"s there
    if (backward && ragged && (D % 16 || (api.version() >= 91801 && !g_devprop && (cuda_compute_capability() / 10 == 8 || cuda_compute_capability() / 10 == 12)))) {
        snprintf(g_cudnn_status, sizeof g_cudnn_status, "cuDNN %zu: the ragged backward at head dim %d on compute capability %d.x is "
                 "not taken (cudnn-frontend's limits)", api.version(), D, cuda_compute_capability() / 10);
        return NULL;
    }
    if (ragged && !cuda_env_setting(&ragged_on, "LLAVA_CUDNN_RAGGED", 1)) {
        snprintf(g_cudnn_status, sizeof g_cudnn_status, "LLAVA_CUDNN_RAGGED=0");
        return NULL;
    }
    if (ragged && api.version() < 90600) {
        snprintf(g_cudnn_status, sizeof g_cudnn_status, "cuDNN %zu: packed sequences of different lengths need 9.6 or later",
                 api.version());
        return NULL;
    }
    Plan *p = ragged ? plan_for(backward, bucket(nseq, 32, 512), bucket(T, 1024, 32768), Hq, Hkv, D, causal, 1)
                     : plan_for(backward, nseq, T / nseq, Hq, Hkv, D, causal, 0);
    return p && p->ok ? p : NULL;
}

// the tensors a plan reads beyond Q, K, V and its outputs: the scalars, and where ragged the lengths and starts
// (computed here from cu_seqlens); appended to uids and ptrs from n on, returning the new count
int common_tensors(const Plan *p, int n, int64_t *uids, void **ptrs, float *scale, float *one, float *lowest, const int32_t *cu,
                   int nseq) {
    *scale = 1.0f / sqrtf((float)p->D), *one = 1.0f, *lowest = -FLT_MAX;
    uids[n] = UID_SCALE, ptrs[n++] = scale;
    if (p->backward) uids[n] = UID_ONE, ptrs[n++] = one;
    if (p->causal || p->ragged) uids[n] = UID_LOWEST, ptrs[n++] = lowest;
    if (p->ragged) {
        char *m = (char *)bufs[BUF_META];
        int32_t *len = (int32_t *)m;
        int64_t *qo = (int64_t *)(m + meta_lens_bytes(p->B)), *kv = (int64_t *)((char *)qo + meta_starts_bytes(p->B)),
                *lse = (int64_t *)((char *)kv + meta_starts_bytes(p->B));
        ragged_meta<<<1, 256, 0, g_stream>>>(len, qo, kv, lse, cu, nseq, p->B, p->Hq, p->Hkv, p->D);
        LAUNCH_CHECK();
        uids[n] = UID_SEQ_Q, ptrs[n++] = len;  // (self-attention: one length for queries and keys)
        uids[n] = UID_SEQ_KV, ptrs[n++] = len;
        uids[n] = UID_OFF_QO, ptrs[n++] = qo;
        uids[n] = UID_OFF_KV, ptrs[n++] = kv;
        uids[n] = UID_OFF_STATS, ptrs[n++] = lse;
    }
    return n;
}

}  // namespace

extern "C" void cuda_cudnn_set_dq_accum(int on) { accum_setting = on < 0 ? (int)ENV_UNREAD : on != 0; }

extern "C" int cuda_cudnn_attention_forward(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu_seqlens,
                                            int nseq, int T, int max_len, int Hq, int Hkv, int D, int causal) {
    Plan *p = plan_for_call(0, nseq, T, max_len, Hq, Hkv, D, causal);
    if (!p) return -1;
    int64_t uids[16] = {UID_Q, UID_K, UID_V, UID_O, UID_STATS};
    float *stats = stats_of(p, lse);
    void *ptrs[16] = {(void *)q, (void *)k, (void *)v, out, stats};
    float scale, one, lowest;
    int n = common_tensors(p, 5, uids, ptrs, &scale, &one, &lowest, cu_seqlens, nseq);
    if (!execute(p, n, uids, ptrs)) return -1;
    if (!p->ragged) {
        transpose_stats<<<(unsigned)(((size_t)T * Hq + 255) / 256), 256, 0, g_stream>>>(lse, stats, T, p->S, Hq, 1);
        LAUNCH_CHECK();
    }
    return 0;
}

extern "C" int cuda_cudnn_attention_backward(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const bf16 *out, const float *lse,
                                             const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *cu_seqlens, int nseq, int T,
                                             int max_len, int Hq, int Hkv, int D, int causal) {
    if (!dq || !dk || !dv) return -1;
    Plan *p = plan_for_call(1, nseq, T, max_len, Hq, Hkv, D, causal);
    if (!p) return -1;
    float *stats = stats_of(p, lse);
    if (!p->ragged) {
        transpose_stats<<<(unsigned)(((size_t)T * Hq + 255) / 256), 256, 0, g_stream>>>(stats, lse, T, p->S, Hq, 0);
        LAUNCH_CHECK();
    }
    if (p->dq_accum) CUDA_CHECK(cudaMemsetAsync(bufs[BUF_ACC], 0, (size_t)T * Hq * D * sizeof(float), g_stream));  // (ragged: T rows from 0)
    int64_t uids[24] = {UID_Q, UID_K, UID_V, UID_O, UID_DO, UID_STATS, UID_DQ, UID_DK, UID_DV};
    void *ptrs[24] = {(void *)q, (void *)k, (void *)v, (void *)out, (void *)dout, stats, dq, dk, dv};
    float scale, one, lowest;
    int n = common_tensors(p, 9, uids, ptrs, &scale, &one, &lowest, cu_seqlens, nseq);
    if (p->dq_accum) uids[n] = UID_DQ_ACC, ptrs[n++] = bufs[BUF_ACC];
    if (p->ragged && p->Hq != p->Hkv) {
        uids[n] = UID_DK_HEADS, ptrs[n++] = bufs[BUF_HEADS];
        uids[n] = UID_DV_HEADS, ptrs[n++] = (char *)bufs[BUF_HEADS] + heads_bytes(p);
    }
    return execute(p, n, uids, ptrs) ? 0 : -1;
}

// Without a GPU: the graphs of the benches' shapes (their backward in both forms), three more shapes, and the
// ragged layout's (packed sequences of different lengths: the language model's and the tower's at their buckets,
// and a small one) built for the device described by the JSON file (cuDNN's
// CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION) up to compiling their kernels; one line each in report, *total the
// graphs tried. Returns how many compiled, or -1 where cuDNN (9.8 or later) cannot be had.
extern "C" int cuda_cudnn_check_graphs(const char *device_json, char *report, size_t len, int *total) {
    report[0] = 0;
    *total = 0;
    FILE *f = fopen(device_json, "rb");
    static char json[16384];
    size_t n = f ? fread(json, 1, sizeof json - 1, f) : 0;
    if (f) fclose(f);
    if (!n) { snprintf(report, len, "%s: no device properties there", device_json); return -1; }
    if (!api_load()) { snprintf(report, len, "%s", g_cudnn_status); return -1; }
    cudnnStatus_t st = api.create_desc(CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR, &g_devprop);
    if (st == CUDNN_STATUS_SUCCESS) st = api.set_attr(g_devprop, CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION, CUDNN_TYPE_CHAR, (int64_t)n, json);
    if (st == CUDNN_STATUS_SUCCESS) st = api.finalize(g_devprop);
    if (st != CUDNN_STATUS_SUCCESS) {
        snprintf(report, len, "cuDNN %zu: device properties from %s: %s", api.version(), device_json, api.error(st));
        g_devprop = NULL;
        return -1;
    }
    // (B, S, Hq, Hkv, D, causal, ragged, the backward's forms: 1 deterministic, 2 dQ summed): the slice, the tower
    // (both forms), the whole model's tower (two 896x896 images), two small ones; ragged (the dQ-summing form it
    // takes first): packed text at 8192 positions, images of different sizes, ops_check's small case
    const int shapes[8][8] = {{1, 8192, 32, 8, 128, 1, 0, 3},   {1, 5185, 16, 16, 64, 0, 0, 3},  {2, 4097, 16, 16, 64, 0, 0, 1},
                              {1, 700, 8, 2, 128, 1, 0, 1},     {1, 333, 4, 4, 64, 0, 0, 1},     {32, 8192, 32, 8, 128, 1, 1, 2},
                              {32, 8192, 16, 16, 64, 0, 1, 2}, {32, 1024, 8, 2, 128, 1, 1, 2}};
    int built = 0;
    size_t at = 0;
    for (int i = 0; i < 8; i++)
        for (int backward = 0; backward < 2; backward++) {
            const int *x = shapes[i];
            for (int accum = 0; accum < 2; accum++) {
                if (backward ? !(x[7] >> accum & 1) : accum) continue;
                Plan p = plan_key(backward, x[0], x[1], x[2], x[3], x[4], x[5], x[6], accum);
                build(&p);
                built += p.ok;
                ++*total;
                if (at < len) at += snprintf(report + at, len - at, "%s%s\n", g_cudnn_status, accum ? " (dQ summed)" : "");
            }
        }
    g_devprop = NULL;
    return built;
}

#else  // built without cuDNN's header: our kernels only

static int no_header(char *msg, size_t len) {
    snprintf(msg, len, "built without cuDNN's header (cudnn_graph.h)");
    return -1;
}
extern "C" int cuda_cudnn_attention_forward(bf16 *, float *, const bf16 *, const bf16 *, const bf16 *, const int32_t *, int, int, int, int,
                                            int, int, int) {
    return no_header(g_cudnn_status, sizeof g_cudnn_status);
}
extern "C" int cuda_cudnn_attention_backward(bf16 *, bf16 *, bf16 *, const bf16 *, const bf16 *, const float *, const bf16 *, const bf16 *,
                                             const bf16 *, const int32_t *, int, int, int, int, int, int, int) {
    return no_header(g_cudnn_status, sizeof g_cudnn_status);
}
extern "C" void cuda_cudnn_set_dq_accum(int) {}
extern "C" int cuda_cudnn_check_graphs(const char *, char *report, size_t len, int *total) {
    *total = 0;
    return no_header(report, len);
}

#endif
