// cudnn_graph.cuh: the graphs of cuDNN's fused attention (cudnn_attn.cu) through its backend API -- the library's
// functions opened at run time (Api), a builder that reads as the graph it builds (Builder), and the forward and
// backward graphs cudnn-frontend builds for its SDPA nodes, for one sequence, a batch of equal lengths, or packed
// sequences of different lengths (the ragged layout). Included once, by cudnn_attn.cu, inside its anonymous
// namespace, after <cudnn_graph.h> and g_cudnn_status.
//
// The graph is the one cudnn-frontend builds for its SDPA node (training, stats out), per head
// b = B sequences, h = Hq, s = S = T / B, d = D, with Q [B, Hq, S, D] and V [B, Hkv, S, D] over our [T, H, D] rows
// (strides H·D between positions) and K read as Kᵀ [B, Hkv, D, S]:
//   S = Q·Kᵀ (fp32) · scale;  causal: S = row ≥ col ? S : lowest   (GEN_INDEX, CMP_GE, BINARY_SELECT)
//   M = max_row S;  E = exp(S − M);  Z = Σ_row E;  stats = M + log Z;  P = E / Z (bf16);  O = P·V
// stats [B, Hq, S, 1] is the natural-log log-sum-exp of the scaled scores, our kernels' lse, written head-major
// and transposed into lse [T, Hq] (ragged: read and written in place, strides {Hq·S, 1, Hq, 1} from each
// sequence's start). The backward's graph is under backward_graph.
#pragma once

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

// A graph under construction: the first failing call is remembered (and every later call skipped), so that the
// builder reads as the graph it builds. Descriptors are kept for the plan's lifetime (never destroyed: a few per
// shape).
struct Builder {
    cudnnStatus_t status = CUDNN_STATUS_SUCCESS;
    const char *where = "";
    int64_t next_uid = 100;  // the graph's virtual tensors' ids (those of its inputs and outputs are below)
    cudnnBackendDescriptor_t ops[64];  // (the ragged backward has 31 operations, 37 on cuDNN 9.6-9.9)
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
    // a bf16 tensor of the graph's inputs or outputs (where ragged, from its sequences' starts)
    cudnnBackendDescriptor_t io(int64_t uid, const int64_t *dims, const int64_t *strides, cudnnBackendDescriptor_t ragged) {
        return tensor(uid, CUDNN_DATA_BFLOAT16, dims, strides, false, false, false, ragged);
    }
    // a tensor inside the graph (where ragged, from its sequences' starts)
    cudnnBackendDescriptor_t virt(cudnnDataType_t type, const int64_t *dims, const int64_t *strides, cudnnBackendDescriptor_t ragged = NULL) {
        return tensor(next_uid++, type, dims, strides, true, false, false, ragged);
    }
    cudnnBackendDescriptor_t scalar(int64_t uid, cudnnDataType_t type) {
        const int64_t one[4] = {1, 1, 1, 1};
        return tensor(uid, type, one, one, false, true);
    }
    void add_op(cudnnBackendDescriptor_t op) {
        if (ok() && nops == (int)(sizeof ops / sizeof *ops)) status = CUDNN_STATUS_NOT_SUPPORTED, where = "more operations than the builder holds";
        if (ok()) ops[nops++] = op;
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
    UID_SEQ_Q, UID_SEQ_KV, UID_OFF_QO, UID_OFF_KV, UID_OFF_STATS, UID_DK_HEADS, UID_DV_HEADS  // (below Builder::next_uid's first)
};

struct Plan {
    int backward, B, S, Hq, Hkv, D, causal;  // B sequences of S positions each (T = B·S), or where ragged at most S
    int ragged;     // packed sequences of different lengths (cuDNN's THD layout): B is their count rounded up (the
                    // sequences past it have length 0), S the positions rounded up; lengths and starts read per call
    int ok;         // 1: built; 0: cuDNN declined the shape (not asked again)
    int want_accum; // (backward) the form asked for first (LLAVA_CUDNN_DQ_ACCUM): part of the plan's key
    int dq_accum;   // (backward) dQ summed in an fp32 buffer (zeroed before each call), else written directly
    cudnnBackendDescriptor_t plan;
    size_t workspace;  // bytes of cuDNN's workspace (a call uses the buffers cudnn_attn.cu's plans share)
};

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
cudnnBackendDescriptor_t padding_mask(Builder &g, const Shapes &sh, const Ragged &r, cudnnBackendDescriptor_t s, cudnnBackendDescriptor_t lowest) {
    const cudnnDataType_t I = CUDNN_DATA_INT32, BOOL = CUDNN_DATA_BOOLEAN;
    cudnnBackendDescriptor_t row = g.virt(I, sh.sd, sh.ss), col = g.virt(I, sh.sd, sh.ss), row_in = g.virt(BOOL, sh.sd, sh.ss),
                             col_in = g.virt(BOOL, sh.sd, sh.ss), keep = g.virt(BOOL, sh.sd, sh.ss), out = g.virt(CUDNN_DATA_FLOAT, sh.sd, sh.ss);
    g.pointwise(CUDNN_POINTWISE_GEN_INDEX, I, s, NULL, NULL, row, 2);
    g.pointwise(CUDNN_POINTWISE_GEN_INDEX, I, s, NULL, NULL, col, 3);
    g.pointwise(CUDNN_POINTWISE_CMP_LT, BOOL, row, r.seq_q, NULL, row_in);
    g.pointwise(CUDNN_POINTWISE_CMP_LT, BOOL, col, r.seq_kv, NULL, col_in);
    g.pointwise(CUDNN_POINTWISE_LOGICAL_AND, BOOL, row_in, col_in, NULL, keep);
    g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, s, lowest, keep, out);
    return out;
}

// row >= col ? s : lowest (the causal mask)
cudnnBackendDescriptor_t causal_mask(Builder &g, const Shapes &sh, cudnnBackendDescriptor_t s, cudnnBackendDescriptor_t lowest) {
    const cudnnDataType_t F = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t row = g.virt(CUDNN_DATA_INT32, sh.sd, sh.ss), col = g.virt(CUDNN_DATA_INT32, sh.sd, sh.ss),
                             keep = g.virt(CUDNN_DATA_BOOLEAN, sh.sd, sh.ss), s3 = g.virt(F, sh.sd, sh.ss);
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
                                cudnnBackendDescriptor_t scale, cudnnBackendDescriptor_t lowest, int causal_here) {
    const cudnnDataType_t F = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t s1 = g.virt(F, sh.sd, sh.ss), s = g.virt(F, sh.sd, sh.ss);
    g.matmul(q, kt, s1, r.seq_q, r.seq_kv);
    g.pointwise(CUDNN_POINTWISE_MUL, F, s1, scale, NULL, s);
    if (r.seq_q) s = padding_mask(g, sh, r, s, lowest);
    return causal_here ? causal_mask(g, sh, s, lowest) : s;
}

// the stats tensor: [B, Hq, S, 1] head-major in the plan's buffer, or where ragged our lse [T, Hq] itself
cudnnBackendDescriptor_t stats_tensor(Builder &g, const Shapes &sh, const Ragged &r) {
    return g.tensor(UID_STATS, CUDNN_DATA_FLOAT, sh.rd, r.lse ? sh.lses : sh.rs, false, false, false, r.lse);
}

// the forward graph of the head comment
void forward_graph(Builder &g, const Plan *p) {
    Shapes sh(p->B, p->S, p->Hq, p->Hkv, p->D);
    const cudnnDataType_t F = CUDNN_DATA_FLOAT, BF = CUDNN_DATA_BFLOAT16;
    Ragged r = ragged_tensors(g, p);
    cudnnBackendDescriptor_t q = g.io(UID_Q, sh.qd, sh.qs, r.qo), kt = g.io(UID_K, sh.ktd, sh.kts, r.kv),
                             v = g.io(UID_V, sh.kd, sh.ks, r.kv), o = g.io(UID_O, sh.qd, sh.qs, r.qo), stats = stats_tensor(g, sh, r),
                             scale = g.scalar(UID_SCALE, F), lowest = p->causal || p->ragged ? g.scalar(UID_LOWEST, F) : NULL;
    cudnnBackendDescriptor_t s = scores(g, sh, r, q, kt, scale, lowest, p->causal);
    cudnnBackendDescriptor_t m = g.virt(F, sh.rd, sh.rs), sub = g.virt(F, sh.sd, sh.ss), e = g.virt(F, sh.sd, sh.ss),
                             z = g.virt(F, sh.rd, sh.rs), logz = g.virt(F, sh.rd, sh.rs), pr = g.virt(BF, sh.sd, sh.ss);
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
    const cudnnDataType_t F = CUDNN_DATA_FLOAT, BF = CUDNN_DATA_BFLOAT16;
    Ragged r = ragged_tensors(g, p);
    cudnnBackendDescriptor_t q = g.io(UID_Q, sh.qd, sh.qs, r.qo), kt = g.io(UID_K, sh.ktd, sh.kts, r.kv),
                             vt = g.io(UID_V, sh.ktd, sh.kts, r.kv), o = g.io(UID_O, sh.qd, sh.qs, r.qo),
                             dout = g.io(UID_DO, sh.qd, sh.qs, r.qo), stats = stats_tensor(g, sh, r),
                             dq = g.io(UID_DQ, sh.qd, sh.qs, r.qo), dk = g.io(UID_DK, sh.kd, sh.ks, r.kv),
                             dv = g.io(UID_DV, sh.kd, sh.ks, r.kv), scale = g.scalar(UID_SCALE, F), one = g.scalar(UID_ONE, F),
                             lowest = p->causal || p->ragged ? g.scalar(UID_LOWEST, F) : NULL;
    // D = Σ_d dO∘O (·1: the dropout scale's place)
    const int64_t td[4] = {B, Hq, S, D}, tsd[4] = {Hq * S * D, S * D, Hq * D, 1};
    cudnnBackendDescriptor_t dod = g.virt(F, td, tsd), dsum = g.virt(F, sh.rd, sh.rs),
                             drow = g.virt(F, sh.rd, sh.rs);
    g.pointwise(CUDNN_POINTWISE_MUL, F, dout, o, NULL, dod);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, dod, dsum);
    g.pointwise(CUDNN_POINTWISE_MUL, F, dsum, one, NULL, drow);
    // P = exp(S − stats)
    cudnnBackendDescriptor_t s = scores(g, sh, r, q, kt, scale, lowest, p->causal && !p->ragged);
    cudnnBackendDescriptor_t sm = g.virt(F, sh.sd, sh.ss), pe = g.virt(F, sh.sd, sh.ss);
    g.pointwise(CUDNN_POINTWISE_SUB, F, s, stats, NULL, sm);
    if (r.seq_q && api.version() < 91000) sm = padding_mask(g, sh, r, sm, lowest);  // (the frontend's workaround for 9.0-9.9)
    if (p->causal && p->ragged) sm = causal_mask(g, sh, sm, lowest);
    g.pointwise(CUDNN_POINTWISE_EXP, F, sm, NULL, NULL, pe);
    // out = xᵀ·y for the product's x [B, Hq, S, S] (fp32, viewed transposed in bf16), summed over each KV head's
    // query heads where there are several (GQA: a product per query head first); extents: keys by queries. The
    // per-head products are virtual [B, Hq, S, D] (cuDNN's workspace), or where ragged, as the current frontend
    // has them, tensors of their own in dK's layout with Hq heads from dK's starts (cuDNN scales the starts by the
    // group size): B·Hq·S·D in the workspace would be 4.3 GB for 32 sequences in 8192 positions of 32 heads of 128.
    const int64_t gd[4] = {B, Hq, S, D}, gs[4] = {Hq * S * D, S * D, D, 1};
    auto transposed_product = [&](cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y, cudnnBackendDescriptor_t out, int64_t heads_uid) {
        cudnnBackendDescriptor_t xt = g.virt(BF, sh.std_, sh.sts);
        g.reshape(x, xt);
        if (p->Hq == p->Hkv) return g.matmul(xt, y, out, r.seq_kv, NULL, r.seq_q);
        cudnnBackendDescriptor_t per_head =
            r.kv ? g.tensor(heads_uid, BF, gd, sh.qs, false, false, false, r.kv) : g.virt(BF, gd, gs);
        g.matmul(xt, y, per_head, r.seq_kv, NULL, r.seq_q);
        g.reduction(CUDNN_REDUCE_TENSOR_ADD, per_head, out);
    };
    transposed_product(pe, dout, dv, UID_DV_HEADS);  // dV = Pᵀ·dO
    // dS = P∘(dP·1 − D)·scale, dP = dO·Vᵀ
    cudnnBackendDescriptor_t dp = g.virt(F, sh.sd, sh.ss), dp1 = g.virt(F, sh.sd, sh.ss),
                             dp2 = g.virt(F, sh.sd, sh.ss), ds0 = g.virt(F, sh.sd, sh.ss),
                             ds = g.virt(F, sh.sd, sh.ss);
    g.matmul(dout, vt, dp, r.seq_q, r.seq_kv);
    g.pointwise(CUDNN_POINTWISE_MUL, F, dp, one, NULL, dp1);
    g.pointwise(CUDNN_POINTWISE_SUB, F, dp1, drow, NULL, dp2);
    g.pointwise(CUDNN_POINTWISE_MUL, F, dp2, pe, NULL, ds0);
    g.pointwise(CUDNN_POINTWISE_MUL, F, ds0, scale, NULL, ds);
    transposed_product(ds, q, dk, UID_DK_HEADS);  // dK = dSᵀ·Q
    // dQ = dS·K (K: Kᵀ viewed back, with Kᵀ's starts)
    cudnnBackendDescriptor_t k = g.virt(BF, sh.kd, sh.ks, r.kv);
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
