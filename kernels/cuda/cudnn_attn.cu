// cudnn_attn.cu: attention forward and backward through cuDNN's fused flash attention (its graph API), beside our
// own kernels: LLAVA_FLASH=cudnn, and a candidate of LLAVA_FLASH=tune in each direction (the two read and write
// the same log-sum-exp, so either direction may be cuDNN's and the other ours). "Real libraries for solved
// problems": cuDNN 9 ships FlashAttention-class kernels for Hopper, and PyTorch's SDPA can run them; whether they
// beat ours at our shapes is for the GPU runs to say.
//
// libcudnn.so.9 is opened at run time (as NCCL is): the build needs only the header, a machine without the
// library runs our kernels, and every cuDNN failure -- no library, a graph its engines do not take, a workspace
// too large, an execution error -- leaves the caller's buffers untouched and the caller runs its own version
// (cuda_cudnn_status says why);
// LLAVA_CUDNN=0 keeps it unloaded.
// One sequence (cu_seqlens = {0, T}: the benches' slice and tower), several of one length (a batch: the whole
// model's images of one size), or packed sequences of different lengths (training's packed samples, images of
// different sizes) in cuDNN's ragged layout ("THD", 9.6 or later): a padding mask and per-sequence extents from
// each sequence's length, its rows found by per-sequence starts, both computed from cu_seqlens on the device per
// call; the count of sequences and the positions rounded up to buckets (as Transformer Engine does) so that a run
// meets few plans, the sequences past the count having length 0.
//
// The graph is the one cudnn-frontend builds for its SDPA node (training, stats out), per head
// b = B sequences, h = Hq, s = S = T / B, d = D, with Q [B, Hq, S, D] and V [B, Hkv, S, D] over our [T, H, D] rows
// (strides H·D between positions) and K read as Kᵀ [B, Hkv, D, S]:
//   S = Q·Kᵀ (fp32) · scale;  causal: S = row ≥ col ? S : lowest   (GEN_INDEX, CMP_GE, BINARY_SELECT)
//   M = max_row S;  E = exp(S − M);  Z = Σ_row E;  stats = M + log Z;  P = E / Z (bf16);  O = P·V
// stats [B, Hq, S, 1] is the natural-log log-sum-exp of the scaled scores, our kernels' lse, written head-major
// and transposed into lse [T, Hq] (ragged: read and written in place, strides {Hq·S, 1, Hq, 1} from each
// sequence's start). The backward's graph is under backward_graph. A built plan is kept per shape.
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

struct Api {
    void *lib;
    cudnnHandle_t handle;
    int failed;  // the library or the handle could not be had: never tried again
    size_t (*version)(void);
    const char *(*error)(cudnnStatus_t);
    cudnnStatus_t (*create)(cudnnHandle_t *);
    cudnnStatus_t (*set_stream)(cudnnHandle_t, cudaStream_t);
    cudnnStatus_t (*create_desc)(cudnnBackendDescriptorType_t, cudnnBackendDescriptor_t *);
    cudnnStatus_t (*destroy_desc)(cudnnBackendDescriptor_t);
    cudnnStatus_t (*finalize)(cudnnBackendDescriptor_t);
    cudnnStatus_t (*set_attr)(cudnnBackendDescriptor_t, cudnnBackendAttributeName_t, cudnnBackendAttributeType_t, int64_t, const void *);
    cudnnStatus_t (*get_attr)(cudnnBackendDescriptor_t, cudnnBackendAttributeName_t, cudnnBackendAttributeType_t, int64_t, int64_t *,
                              void *);
    cudnnStatus_t (*execute)(cudnnHandle_t, cudnnBackendDescriptor_t, cudnnBackendDescriptor_t);
} api;

// (attributes deprecated in cuDNN 9.19's header, which earlier 9.x libraries still need)
const cudnnBackendAttributeName_t OPERATIONGRAPH_HANDLE = (cudnnBackendAttributeName_t)800,
                                  EXECUTION_PLAN_HANDLE = (cudnnBackendAttributeName_t)400;

// the library and its functions (no device needed)
bool api_load(void) {
    if (api.lib) return true;
    const char *names[] = {"libcudnn.so.9", "libcudnn.so"};
    for (const char *n : names)
        if ((api.lib = dlopen(n, RTLD_NOW | RTLD_LOCAL))) break;
    if (!api.lib) {
        snprintf(g_cudnn_status, sizeof g_cudnn_status, "no libcudnn.so.9 (%s)", dlerror());
        return false;
    }
#define SYM(field, name) api.field = (decltype(api.field))dlsym(api.lib, name)
    SYM(version, "cudnnGetVersion");
    SYM(error, "cudnnGetErrorString");
    SYM(create, "cudnnCreate");
    SYM(set_stream, "cudnnSetStream");
    SYM(create_desc, "cudnnBackendCreateDescriptor");
    SYM(destroy_desc, "cudnnBackendDestroyDescriptor");
    SYM(finalize, "cudnnBackendFinalize");
    SYM(set_attr, "cudnnBackendSetAttribute");
    SYM(get_attr, "cudnnBackendGetAttribute");
    SYM(execute, "cudnnBackendExecute");
#undef SYM
    if (!api.version || !api.error || !api.create || !api.set_stream || !api.create_desc || !api.destroy_desc || !api.finalize ||
        !api.set_attr || !api.get_attr || !api.execute) {
        snprintf(g_cudnn_status, sizeof g_cudnn_status, "libcudnn.so.9 lacks the backend API");
        dlclose(api.lib);
        api.lib = NULL;
        return false;
    }
    return true;
}

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

// A graph under construction: the first failing call is remembered (and every later call skipped), so that the
// builder reads as the graph it builds. Descriptors are kept for the plan's lifetime (never destroyed: a few per
// shape).
struct Builder {
    cudnnStatus_t status = CUDNN_STATUS_SUCCESS;
    const char *where = "";
    cudnnBackendDescriptor_t ops[32];
    int nops = 0;

    bool ok() const { return status == CUDNN_STATUS_SUCCESS; }
    void note(cudnnStatus_t s, const char *what) {
        if (ok() && s != CUDNN_STATUS_SUCCESS) status = s, where = what;
    }
    cudnnBackendDescriptor_t make(cudnnBackendDescriptorType_t type, const char *what) {
        cudnnBackendDescriptor_t d = NULL;
        if (ok()) note(api.create_desc(type, &d), what);
        return d;
    }
    void set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t n, const void *v,
             const char *what) {
        if (ok()) note(api.set_attr(d, name, type, n, v), what);
    }
    void set_desc(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name, cudnnBackendDescriptor_t v, const char *what) {
        set(d, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &v, what);
    }
    void done(cudnnBackendDescriptor_t d, const char *what) {
        if (ok()) note(api.finalize(d), what);
    }

    // a 4-d tensor: uid, type, dims, strides; virtual (inside the graph), or by value (a host scalar); ragged: the
    // tensor of its sequences' starts (in elements; the batch stride is then unused)
    cudnnBackendDescriptor_t tensor(int64_t uid, cudnnDataType_t type, const int64_t *dims, const int64_t *strides, bool is_virtual,
                                    bool by_value = false, bool f16x16 = false, cudnnBackendDescriptor_t ragged = NULL) {
        cudnnBackendDescriptor_t t = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR, "tensor");
        int64_t align = 16;
        bool v = is_virtual, bv = by_value;
        cudnnBackendTensorReordering_t reorder = CUDNN_TENSOR_REORDERING_F16x16;
        if (f16x16) set(t, CUDNN_ATTR_TENSOR_REORDERING_MODE, CUDNN_TYPE_TENSOR_REORDERING_MODE, 1, &reorder, "tensor reordering");
        set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, "tensor uid");
        set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type, "tensor type");
        set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align, "tensor alignment");
        set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims, "tensor dims");
        set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides, "tensor strides");
        if (v) set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &v, "tensor virtual");
        if (bv) set(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &bv, "tensor by value");
        if (ragged) set_desc(t, CUDNN_ATTR_TENSOR_RAGGED_OFFSET_DESC, ragged, "tensor ragged offsets");
        done(t, "tensor finalize");
        return t;
    }
    cudnnBackendDescriptor_t scalar(int64_t uid, cudnnDataType_t type) {
        const int64_t one[4] = {1, 1, 1, 1};
        return tensor(uid, type, one, one, false, true);
    }
    void add_op(cudnnBackendDescriptor_t op) {
        if (ok() && nops < 32) ops[nops++] = op;
    }
    // an operation of `type` whose attributes link the descriptors given (a NULL one left unset), added to the graph
    void op(cudnnBackendDescriptorType_t type, std::initializer_list<std::pair<cudnnBackendAttributeName_t, cudnnBackendDescriptor_t>> links,
            const char *what) {
        cudnnBackendDescriptor_t o = make(type, what);
        for (const auto &l : links)
            if (l.second) set_desc(o, l.first, l.second, what);
        done(o, what);
        add_op(o);
    }
    // y = mode(x[, b[, t]]) elementwise, computed in prec (axis: GEN_INDEX's dimension)
    void pointwise(cudnnPointwiseMode_t mode, cudnnDataType_t prec, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b,
                   cudnnBackendDescriptor_t t, cudnnBackendDescriptor_t y, int64_t axis = -1) {
        cudnnBackendDescriptor_t pw = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, "pointwise");
        set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, "pointwise mode");
        set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec, "pointwise precision");
        if (axis >= 0) set(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, "pointwise axis");
        done(pw, "pointwise finalize");
        op(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR,
           {{CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw}, {CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x},
            {CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b}, {CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t}, {CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y}},
           "pointwise op");
    }
    // y = reduce(x) over the dimensions where y has extent 1, in fp32
    void reduction(cudnnReduceTensorOp_t how, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
        cudnnBackendDescriptor_t r = make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR, "reduction");
        cudnnDataType_t f = CUDNN_DATA_FLOAT;
        set(r, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &how, "reduction operator");
        set(r, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f, "reduction precision");
        done(r, "reduction finalize");
        op(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR,
           {{CUDNN_ATTR_OPERATION_REDUCTION_DESC, r}, {CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x}, {CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y}},
           "reduction op");
    }
    // y = x seen with y's dims and strides (a transposed view)
    void reshape(cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
        op(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, {{CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x}, {CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y}},
           "reshape op");
    }
    // c = a·b over the last two dimensions, batched over the first two (b's heads broadcast over a's groups), fp32;
    // m, n, k where given: each batch's actual extents of c's rows, c's columns and the sum (a tensor [B, 1, 1, 1])
    void matmul(cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t c, cudnnBackendDescriptor_t m = NULL,
                cudnnBackendDescriptor_t n = NULL, cudnnBackendDescriptor_t k = NULL) {
        cudnnBackendDescriptor_t mm = make(CUDNN_BACKEND_MATMUL_DESCRIPTOR, "matmul");
        cudnnDataType_t f = CUDNN_DATA_FLOAT;
        set(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f, "matmul precision");
        done(mm, "matmul finalize");
        op(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR,
           {{CUDNN_ATTR_OPERATION_MATMUL_DESC, mm}, {CUDNN_ATTR_OPERATION_MATMUL_ADESC, a}, {CUDNN_ATTR_OPERATION_MATMUL_BDESC, b},
            {CUDNN_ATTR_OPERATION_MATMUL_CDESC, c}, {CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, m},
            {CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, n}, {CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, k}},
           "matmul op");
    }
};

enum : int64_t {
    UID_Q = 1, UID_K, UID_V, UID_O, UID_STATS, UID_SCALE, UID_LOWEST, UID_DO, UID_DQ, UID_DK, UID_DV, UID_ONE, UID_DQ_ACC,
    UID_SEQ_Q, UID_SEQ_KV, UID_OFF_QO, UID_OFF_KV, UID_OFF_STATS, UID_DK_HEADS, UID_DV_HEADS,
    UID_VIRTUAL = 100
};

struct Plan {
    int backward, B, S, Hq, Hkv, D, causal;  // B sequences of S positions each (T = B·S), or where ragged at most S
    int ragged;     // packed sequences of different lengths (cuDNN's THD layout): B is their count rounded up (the
                    // sequences past it have length 0), S the positions rounded up; lengths and starts read per call
    int ok;         // 1: built; 0: cuDNN declined the shape (not asked again)
    int want_accum; // (backward) the form asked for first (LLAVA_CUDNN_DQ_ACCUM): part of the plan's key
    int dq_accum;   // (backward) dQ summed in an fp32 buffer (zeroed before each call), else written directly
    cudnnBackendDescriptor_t plan;
    size_t workspace;  // bytes of cuDNN's workspace (the buffers a call uses are the shared ones below)
};

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
void grow_buffer(int which, size_t bytes) {
    if (bytes <= buf_bytes[which]) return;
    cuda_free(bufs[which]);  // (cudaFree waits for the device: the smaller buffer's last use is over)
    bufs[which] = cuda_alloc(bytes);
    buf_bytes[which] = bytes;
}
Plan plans[64];
int nplans;

Plan plan_key(int backward, int B, int S, int Hq, int Hkv, int D, int causal, int ragged, int want_accum) {
    Plan p = {};
    p.backward = backward, p.B = B, p.S = S, p.Hq = Hq, p.Hkv = Hkv, p.D = D, p.causal = causal, p.ragged = ragged;
    p.want_accum = p.dq_accum = want_accum;
    return p;
}

// Tensor shapes of B sequences of S positions over our [T = B·S, H, D] rows: b = B, h heads, s = S
struct Shapes {
    int64_t qd[4], qs[4], kd[4], ks[4], ktd[4], kts[4], sd[4], ss[4], std_[4], sts[4], rd[4], rs[4], lses[4];
    Shapes(int64_t B, int64_t S, int64_t Hq, int64_t Hkv, int64_t D)
        : qd{B, Hq, S, D}, qs{S * Hq * D, D, Hq * D, 1},                  // Q, O, dO, dQ: [B, Hq, S, D] on [T, Hq, D]
          kd{B, Hkv, S, D}, ks{S * Hkv * D, D, Hkv * D, 1},               // K, V, dK, dV
          ktd{B, Hkv, D, S}, kts{S * Hkv * D, D, 1, Hkv * D},             // Kᵀ, Vᵀ: the same memory
          sd{B, Hq, S, S}, ss{Hq * S * S, S * S, S, 1},                   // scores (virtual)
          std_{B, Hq, S, S}, sts{Hq * S * S, S * S, 1, S},                // their transpose, as the backward's dV, dK read them
          rd{B, Hq, S, 1}, rs{Hq * S, S, 1, 1},                           // per row: stats, max, sums
          lses{Hq * S, 1, Hq, 1} {}                                       // the stats on our lse [T, Hq] (ragged)
};

// The ragged layout's tensors (all NULL otherwise): each sequence's length (the same for queries and keys:
// self-attention), and the starts of its rows in Q, O, dO, dQ (qo), K, V, dK, dV (kv) and the stats (lse)
struct Ragged {
    cudnnBackendDescriptor_t seq_q = NULL, seq_kv = NULL, qo = NULL, kv = NULL, lse = NULL;
};
Ragged ragged_tensors(Builder &g, const Plan *p) {
    Ragged r;
    if (!p->ragged) return r;
    const int64_t lens[4] = {p->B, 1, 1, 1}, starts[4] = {p->B + 1, 1, 1, 1}, unit[4] = {1, 1, 1, 1};
    r.seq_q = g.tensor(UID_SEQ_Q, CUDNN_DATA_INT32, lens, unit, false);
    r.seq_kv = g.tensor(UID_SEQ_KV, CUDNN_DATA_INT32, lens, unit, false);
    r.qo = g.tensor(UID_OFF_QO, CUDNN_DATA_INT64, starts, unit, false);
    r.kv = g.tensor(UID_OFF_KV, CUDNN_DATA_INT64, starts, unit, false);
    r.lse = g.tensor(UID_OFF_STATS, CUDNN_DATA_INT64, starts, unit, false);
    return r;
}

// s where row < seq_q and col < seq_kv of its sequence, else lowest (the ragged layout's padding mask)
cudnnBackendDescriptor_t padding_mask(Builder &g, const Shapes &sh, const Ragged &r, cudnnBackendDescriptor_t s,
                                      cudnnBackendDescriptor_t lowest, int64_t *uid) {
    const cudnnDataType_t I = CUDNN_DATA_INT32, BOOL = CUDNN_DATA_BOOLEAN;
    cudnnBackendDescriptor_t row = g.tensor((*uid)++, I, sh.sd, sh.ss, true), col = g.tensor((*uid)++, I, sh.sd, sh.ss, true),
                             row_in = g.tensor((*uid)++, BOOL, sh.sd, sh.ss, true), col_in = g.tensor((*uid)++, BOOL, sh.sd, sh.ss, true),
                             keep = g.tensor((*uid)++, BOOL, sh.sd, sh.ss, true),
                             out = g.tensor((*uid)++, CUDNN_DATA_FLOAT, sh.sd, sh.ss, true);
    g.pointwise(CUDNN_POINTWISE_GEN_INDEX, I, s, NULL, NULL, row, 2);
    g.pointwise(CUDNN_POINTWISE_GEN_INDEX, I, s, NULL, NULL, col, 3);
    g.pointwise(CUDNN_POINTWISE_CMP_LT, BOOL, row, r.seq_q, NULL, row_in);
    g.pointwise(CUDNN_POINTWISE_CMP_LT, BOOL, col, r.seq_kv, NULL, col_in);
    g.pointwise(CUDNN_POINTWISE_LOGICAL_AND, BOOL, row_in, col_in, NULL, keep);
    g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, s, lowest, keep, out);
    return out;
}

// row >= col ? s : lowest (the causal mask)
cudnnBackendDescriptor_t causal_mask(Builder &g, const Shapes &sh, cudnnBackendDescriptor_t s, cudnnBackendDescriptor_t lowest,
                                     int64_t *uid) {
    const cudnnDataType_t F = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t row = g.tensor((*uid)++, CUDNN_DATA_INT32, sh.sd, sh.ss, true),
                             col = g.tensor((*uid)++, CUDNN_DATA_INT32, sh.sd, sh.ss, true),
                             keep = g.tensor((*uid)++, CUDNN_DATA_BOOLEAN, sh.sd, sh.ss, true), s3 = g.tensor((*uid)++, F, sh.sd, sh.ss, true);
    g.pointwise(CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, s, NULL, NULL, row, 2);
    g.pointwise(CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, s, NULL, NULL, col, 3);
    g.pointwise(CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, row, col, NULL, keep);
    g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, F, s, lowest, keep, s3);
    return s3;
}

// the scaled, masked scores S (fp32 virtual) = Q·Kᵀ · scale; where ragged, the padding mask; where causal (and
// causal_here: the backward of the ragged layout masks after subtracting the stats instead, as the frontend does)
// the causal mask
cudnnBackendDescriptor_t scores(Builder &g, const Shapes &sh, const Ragged &r, cudnnBackendDescriptor_t q, cudnnBackendDescriptor_t kt,
                                cudnnBackendDescriptor_t scale, cudnnBackendDescriptor_t lowest, int causal_here, int64_t *uid) {
    const cudnnDataType_t F = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t s1 = g.tensor((*uid)++, F, sh.sd, sh.ss, true), s = g.tensor((*uid)++, F, sh.sd, sh.ss, true);
    g.matmul(q, kt, s1, r.seq_q, r.seq_kv);
    g.pointwise(CUDNN_POINTWISE_MUL, F, s1, scale, NULL, s);
    if (r.seq_q) s = padding_mask(g, sh, r, s, lowest, uid);
    return causal_here ? causal_mask(g, sh, s, lowest, uid) : s;
}

// the stats tensor: [B, Hq, S, 1] head-major in the plan's buffer, or where ragged our lse [T, Hq] itself
cudnnBackendDescriptor_t stats_tensor(Builder &g, const Shapes &sh, const Ragged &r) {
    return g.tensor(UID_STATS, CUDNN_DATA_FLOAT, sh.rd, r.lse ? sh.lses : sh.rs, false, false, false, r.lse);
}

// the forward graph of the head comment
void forward_graph(Builder &g, const Plan *p) {
    Shapes sh(p->B, p->S, p->Hq, p->Hkv, p->D);
    int64_t uid = UID_VIRTUAL;
    const cudnnDataType_t F = CUDNN_DATA_FLOAT, BF = CUDNN_DATA_BFLOAT16;
    Ragged r = ragged_tensors(g, p);
    cudnnBackendDescriptor_t q = g.tensor(UID_Q, BF, sh.qd, sh.qs, false, false, false, r.qo),
                             kt = g.tensor(UID_K, BF, sh.ktd, sh.kts, false, false, false, r.kv),
                             v = g.tensor(UID_V, BF, sh.kd, sh.ks, false, false, false, r.kv),
                             o = g.tensor(UID_O, BF, sh.qd, sh.qs, false, false, false, r.qo), stats = stats_tensor(g, sh, r),
                             scale = g.scalar(UID_SCALE, F), lowest = p->causal || p->ragged ? g.scalar(UID_LOWEST, F) : NULL;
    cudnnBackendDescriptor_t s = scores(g, sh, r, q, kt, scale, lowest, p->causal, &uid);
    cudnnBackendDescriptor_t m = g.tensor(uid++, F, sh.rd, sh.rs, true), sub = g.tensor(uid++, F, sh.sd, sh.ss, true),
                             e = g.tensor(uid++, F, sh.sd, sh.ss, true), z = g.tensor(uid++, F, sh.rd, sh.rs, true),
                             logz = g.tensor(uid++, F, sh.rd, sh.rs, true), pr = g.tensor(uid++, BF, sh.sd, sh.ss, true);
    g.reduction(CUDNN_REDUCE_TENSOR_MAX, s, m);                        // M = max_row S
    g.pointwise(CUDNN_POINTWISE_SUB, F, s, m, NULL, sub);              // E = exp(S − M)
    g.pointwise(CUDNN_POINTWISE_EXP, F, sub, NULL, NULL, e);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, e, z);                        // Z = Σ_row E
    g.pointwise(CUDNN_POINTWISE_LOG, F, z, NULL, NULL, logz);          // stats = M + log Z
    g.pointwise(CUDNN_POINTWISE_ADD, F, m, logz, NULL, stats);
    g.pointwise(CUDNN_POINTWISE_DIV, F, e, z, NULL, pr);               // P = E / Z, bf16 (the i/o type)
    g.matmul(pr, v, o, r.seq_q, NULL, r.seq_kv);                       // O = P·V
}

// The backward graph cudnn-frontend builds for its SDPA backward node (no dropout or bias):
//   D = Σ_d dO∘O;  P = exp(S − stats);  dV = Pᵀ·dO;  dP = dO·Vᵀ;  dS = P∘(dP − D)·scale;  dK = dSᵀ·Q;  dQ = dS·K
// with GQA's dK and dV summed over each KV head's query heads (a reduction after the products). dQ either
// straight from its product (cuDNN's dP-workspace form, deterministic) or summed into the fp32 buffer acc (in
// cuDNN's F16x16 order) and copied out by an identity op. Where ragged, as the current cudnn-frontend builds it:
// the products' extents are each sequence's length, the causal mask comes after S − stats (cuDNN 9.19 declines
// the graph with it before), and S − stats is masked for padding again on cuDNN 9.6-9.9 (the frontend's workaround).
void backward_graph(Builder &g, const Plan *p) {
    Shapes sh(p->B, p->S, p->Hq, p->Hkv, p->D);
    const int64_t B = p->B, S = p->S, Hq = p->Hq, D = p->D;
    int64_t uid = UID_VIRTUAL;
    const cudnnDataType_t F = CUDNN_DATA_FLOAT, BF = CUDNN_DATA_BFLOAT16;
    Ragged r = ragged_tensors(g, p);
    cudnnBackendDescriptor_t q = g.tensor(UID_Q, BF, sh.qd, sh.qs, false, false, false, r.qo),
                             kt = g.tensor(UID_K, BF, sh.ktd, sh.kts, false, false, false, r.kv),
                             vt = g.tensor(UID_V, BF, sh.ktd, sh.kts, false, false, false, r.kv),
                             o = g.tensor(UID_O, BF, sh.qd, sh.qs, false, false, false, r.qo),
                             dout = g.tensor(UID_DO, BF, sh.qd, sh.qs, false, false, false, r.qo), stats = stats_tensor(g, sh, r),
                             dq = g.tensor(UID_DQ, BF, sh.qd, sh.qs, false, false, false, r.qo),
                             dk = g.tensor(UID_DK, BF, sh.kd, sh.ks, false, false, false, r.kv),
                             dv = g.tensor(UID_DV, BF, sh.kd, sh.ks, false, false, false, r.kv), scale = g.scalar(UID_SCALE, F),
                             one = g.scalar(UID_ONE, F), lowest = p->causal || p->ragged ? g.scalar(UID_LOWEST, F) : NULL;
    // D = Σ_d dO∘O (·1: the dropout scale's place)
    const int64_t td[4] = {B, Hq, S, D}, tsd[4] = {Hq * S * D, S * D, Hq * D, 1};
    cudnnBackendDescriptor_t dod = g.tensor(uid++, F, td, tsd, true), dsum = g.tensor(uid++, F, sh.rd, sh.rs, true),
                             drow = g.tensor(uid++, F, sh.rd, sh.rs, true);
    g.pointwise(CUDNN_POINTWISE_MUL, F, dout, o, NULL, dod);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, dod, dsum);
    g.pointwise(CUDNN_POINTWISE_MUL, F, dsum, one, NULL, drow);
    // P = exp(S − stats)
    cudnnBackendDescriptor_t s = scores(g, sh, r, q, kt, scale, lowest, p->causal && !p->ragged, &uid);
    cudnnBackendDescriptor_t sm = g.tensor(uid++, F, sh.sd, sh.ss, true), pe = g.tensor(uid++, F, sh.sd, sh.ss, true);
    g.pointwise(CUDNN_POINTWISE_SUB, F, s, stats, NULL, sm);
    if (r.seq_q && api.version() < 91000) sm = padding_mask(g, sh, r, sm, lowest, &uid);  // (the frontend's workaround for 9.0-9.9)
    if (p->causal && p->ragged) sm = causal_mask(g, sh, sm, lowest, &uid);
    g.pointwise(CUDNN_POINTWISE_EXP, F, sm, NULL, NULL, pe);
    // out = xᵀ·y for the product's x [B, Hq, S, S] (fp32, viewed transposed in bf16), summed over each KV head's
    // query heads where there are several (GQA: a product per query head first); extents: keys by queries. The
    // per-head products are virtual [B, Hq, S, D] (cuDNN's workspace), or where ragged, as the current frontend
    // has them, tensors of their own in dK's layout with Hq heads from dK's starts (cuDNN scales the starts by the
    // group size): B·Hq·S·D in the workspace would be 4.3 GB for 32 sequences in 8192 positions of 32 heads of 128.
    const int64_t gd[4] = {B, Hq, S, D}, gs[4] = {Hq * S * D, S * D, D, 1};
    auto transposed_product = [&](cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y, cudnnBackendDescriptor_t out, int64_t heads_uid) {
        cudnnBackendDescriptor_t xt = g.tensor(uid++, BF, sh.std_, sh.sts, true);
        g.reshape(x, xt);
        if (p->Hq == p->Hkv) return g.matmul(xt, y, out, r.seq_kv, NULL, r.seq_q);
        cudnnBackendDescriptor_t per_head =
            r.kv ? g.tensor(heads_uid, BF, gd, sh.qs, false, false, false, r.kv) : g.tensor(uid++, BF, gd, gs, true);
        g.matmul(xt, y, per_head, r.seq_kv, NULL, r.seq_q);
        g.reduction(CUDNN_REDUCE_TENSOR_ADD, per_head, out);
    };
    transposed_product(pe, dout, dv, UID_DV_HEADS);  // dV = Pᵀ·dO
    // dS = P∘(dP·1 − D)·scale, dP = dO·Vᵀ
    cudnnBackendDescriptor_t dp = g.tensor(uid++, F, sh.sd, sh.ss, true), dp1 = g.tensor(uid++, F, sh.sd, sh.ss, true),
                             dp2 = g.tensor(uid++, F, sh.sd, sh.ss, true), ds0 = g.tensor(uid++, F, sh.sd, sh.ss, true),
                             ds = g.tensor(uid++, F, sh.sd, sh.ss, true);
    g.matmul(dout, vt, dp, r.seq_q, r.seq_kv);
    g.pointwise(CUDNN_POINTWISE_MUL, F, dp, one, NULL, dp1);
    g.pointwise(CUDNN_POINTWISE_SUB, F, dp1, drow, NULL, dp2);
    g.pointwise(CUDNN_POINTWISE_MUL, F, dp2, pe, NULL, ds0);
    g.pointwise(CUDNN_POINTWISE_MUL, F, ds0, scale, NULL, ds);
    transposed_product(ds, q, dk, UID_DK_HEADS);  // dK = dSᵀ·Q
    // dQ = dS·K (K: Kᵀ viewed back, with Kᵀ's starts)
    cudnnBackendDescriptor_t k = g.tensor(uid++, BF, sh.kd, sh.ks, true, false, false, r.kv);
    g.reshape(kt, k);
    if (p->dq_accum) {  // (ragged: in dQ's layout from each sequence's start, as the current frontend has it)
        const int64_t ad[4] = {B, Hq, S, D}, as[4] = {Hq * S * D, S * D, D, 1};
        cudnnBackendDescriptor_t acc = r.qo ? g.tensor(UID_DQ_ACC, F, ad, sh.qs, false, false, false, r.qo)
                                            : g.tensor(UID_DQ_ACC, F, ad, as, false, false, true);
        g.matmul(ds, k, acc, r.seq_q, NULL, r.seq_kv);
        g.pointwise(CUDNN_POINTWISE_IDENTITY, F, acc, NULL, NULL, dq);
    } else {
        g.matmul(ds, k, dq, r.seq_q, NULL, r.seq_kv);
    }
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
    size_t room = workspace_room();
    if (g.ok() && p->plan && (size_t)ws > room) {  // (cuda_alloc would end the run: our kernels serve instead)
        snprintf(g_cudnn_status, sizeof g_cudnn_status, "cuDNN %zu: %s %s declined: its workspace of %lld bytes is above %zu",
                 api.version(), what, shape_text(p), (long long)ws, room);
        p->plan = NULL;
    } else if (g.ok() && p->plan) {
        size_t T = p->ragged ? (size_t)p->S : (size_t)p->B * p->S;  // (the most rows a call has)
        p->workspace = (size_t)ws;
        if (!g_devprop) {
            grow_buffer(BUF_WORKSPACE, (size_t)ws);
            if (p->dq_accum) grow_buffer(BUF_ACC, T * p->Hq * p->D * sizeof(float));
            if (!p->ragged) grow_buffer(BUF_STATS, T * p->Hq * sizeof(float));
            else grow_buffer(BUF_META, meta_bytes(p->B));
            if (p->ragged && p->backward && p->Hq != p->Hkv) grow_buffer(BUF_HEADS, 2 * heads_bytes(p));
        }
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
    p->ok = 0;
    snprintf(g_cudnn_status, sizeof g_cudnn_status, "cuDNN %zu: %s %s failed to run: %s", api.version(), p->backward ? "backward" : "forward",
             shape_text(p), api.error(s));
    fprintf(stderr, "%s\n", g_cudnn_status);
    return false;
}

// One sequence, or nseq of the same length (nseq·max_len = T says so without reading cu_seqlens): a batch of
// B = nseq; else packed sequences of different lengths in the ragged layout (cuDNN 9.6 or later: its stats in
// our lse layout), B and S bucketed. The plan then, or NULL (nothing run) where cuDNN does not take the call.
Plan *plan_for_call(int backward, int nseq, int T, int max_len, int Hq, int Hkv, int D, int causal) {
    if (nseq < 1 || Hq % Hkv || D % 8 || D > 128 || !api_open()) return NULL;
    int ragged = nseq > 1 && (long long)nseq * max_len != T;
    static int ragged_on = ENV_UNREAD;
    if (ragged && !cuda_env_setting(&ragged_on, "LLAVA_CUDNN_RAGGED", 1)) {  // (LLAVA_CUDNN_RAGGED=0: our kernels for those)
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
    float *stats = p->ragged ? lse : (float *)bufs[BUF_STATS];
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
    if (!p->ragged) {
        transpose_stats<<<(unsigned)(((size_t)T * Hq + 255) / 256), 256, 0, g_stream>>>((float *)bufs[BUF_STATS], lse, T, p->S, Hq, 0);
        LAUNCH_CHECK();
    }
    if (p->dq_accum) CUDA_CHECK(cudaMemsetAsync(bufs[BUF_ACC], 0, (size_t)T * Hq * D * sizeof(float), g_stream));  // (ragged: T rows from 0)
    int64_t uids[20] = {UID_Q, UID_K, UID_V, UID_O, UID_DO, UID_STATS, UID_DQ, UID_DK, UID_DV};
    void *ptrs[20] = {(void *)q, (void *)k, (void *)v, (void *)out, (void *)dout, p->ragged ? (void *)lse : bufs[BUF_STATS], dq, dk, dv};
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
    // (B, S, Hq, Hkv, D, causal, ragged): the slice, the tower, the whole model's tower (two 896x896 images), two
    // small ones; ragged: packed text at 8192 positions, images of different sizes, ops_check's small case
    const int shapes[8][7] = {{1, 8192, 32, 8, 128, 1, 0}, {1, 5185, 16, 16, 64, 0, 0}, {2, 4097, 16, 16, 64, 0, 0},
                              {1, 700, 8, 2, 128, 1, 0},   {1, 333, 4, 4, 64, 0, 0},    {32, 8192, 32, 8, 128, 1, 1},
                              {32, 8192, 16, 16, 64, 0, 1}, {32, 1024, 8, 2, 128, 1, 1}};
    int built = 0;
    size_t at = 0;
    for (int i = 0; i < 8; i++)
        for (int backward = 0; backward < 2; backward++) {
            const int *x = shapes[i];
            // (the benches' backward in both forms; the ragged layout's in the dQ-summing form it takes first)
            for (int accum = backward && x[6]; accum <= (backward && (i < 2 || x[6])); accum++) {
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
