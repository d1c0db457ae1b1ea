// elementwise.cu: activations, RoPE (and the tower's QKV split), embedding, cross-entropy and AdamW on the GPU
// (ops_cuda.h), and reduce_parts; the norms are in norms.cu. Row-wise ops give a row to a block; statistics and
// sums are fp32. Weight gradients that sum over rows go through per-block partial sums added in a fixed order,
// never atomics, so a run repeats bit for bit.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common_cuda.cuh"
#include "ops_cuda.h"


// out[c] += Σ_parts part[p, c] in a fixed order: a block takes 32 columns; lane y of 32 sums the parts
// p ≡ y (mod 32) in order, then the 32 lane sums are added in lane order. (One thread per column summing
// every part in turn was latency-bound: the per-head QK-norm weights have 128 columns and 4096 parts.)
enum { RP_LANES = 32 };
__global__ static void reduce_parts_kernel(float *out, const float *part, int nparts, int C) {
    __shared__ float lane_sum[RP_LANES][33];
    int c = blockIdx.x * 32 + threadIdx.x, y = threadIdx.y;
    float s = 0.0f;
    if (c < C)
        for (int p = y; p < nparts; p += RP_LANES) s += part[(size_t)p * C + c];
    lane_sum[y][threadIdx.x] = s;
    __syncthreads();
    if (y == 0 && c < C) {
        float t = 0.0f;
        for (int l = 0; l < RP_LANES; l++) t += lane_sum[l][threadIdx.x];
        out[c] += t;
    }
}

void reduce_parts(float *out, const float *part, int nparts, int C) {
    reduce_parts_kernel<<<(C + 31) / 32, dim3(32, RP_LANES), 0, g_stream>>>(out, part, nparts, C);
    LAUNCH_CHECK();
}

// ---- activations ----
// Each has a scalar kernel (any size) and one over 8 elements per thread, taken when the sizes are
// multiples of 8 and the pointers 16-byte aligned; both compute the same float expressions.
__device__ __forceinline__ float gelu_f(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }
__device__ __forceinline__ float gelu_d(float v) {  // d gelu / dv
    float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f)), pdf = expf(-0.5f * v * v) * 0.3989422804014327f;
    return cdf + v * pdf;
}
__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }
// d out/d gate and d out/d up of out = silu(g)·u, times the incoming gradient d, into dg and du
__device__ __forceinline__ void swiglu_grad(float g, float u, float d, float *dg, float *du) {
    float s = 1.0f / (1.0f + expf(-g));
    *dg = d * u * s * (1.0f + g * (1.0f - s));
    *du = d * g * s;
}

__global__ static void gelu_fwd(bf16_t *out, const bf16_t *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) st(out, i, gelu_f(ld(x, i)));
}
__global__ static void gelu_bwd(bf16_t *dinp, const bf16_t *dy, const bf16_t *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) st(dinp, i, ld(dy, i) * gelu_d(ld(x, i)));
}
__global__ static void gelu_fwd8(bf16_t *out, const bf16_t *x, size_t n8) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n8) return;
    float v[8];
    load8(v, x + 8 * i);
#pragma unroll
    for (int k = 0; k < 8; k++) v[k] = gelu_f(v[k]);
    store8(out + 8 * i, v);
}
__global__ static void gelu_bwd8(bf16_t *dinp, const bf16_t *dy, const bf16_t *x, size_t n8) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n8) return;
    float v[8], d[8];
    load8(v, x + 8 * i), load8(d, dy + 8 * i);
#pragma unroll
    for (int k = 0; k < 8; k++) d[k] = d[k] * gelu_d(v[k]);
    store8(dinp + 8 * i, d);
}
__global__ static void swiglu_fwd(bf16_t *out, const bf16_t *gu, int N, int F) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)N * F) return;
    size_t n = i / F, f = i % F;
    float g = ld(gu, n * 2 * F + f), u = ld(gu, n * 2 * F + F + f);
    st(out, i, silu(g) * u);
}
__global__ static void swiglu_bwd(bf16_t *dgu, const bf16_t *dy, const bf16_t *gu, int N, int F) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)N * F) return;
    size_t n = i / F, f = i % F, ig = n * 2 * F + f, iu = ig + F;
    float dg, du;
    swiglu_grad(ld(gu, ig), ld(gu, iu), ld(dy, i), &dg, &du);
    st(dgu, ig, dg);
    st(dgu, iu, du);
}
// 8 columns per thread, rows on grid.y (strided past 65535): no 64-bit division per element
__global__ static void swiglu_fwd8(bf16_t *out, const bf16_t *gu, int N, int F) {
    int f = 8 * (blockIdx.x * blockDim.x + threadIdx.x);
    if (f >= F) return;
    for (size_t n = blockIdx.y; n < (size_t)N; n += gridDim.y) {
        float g[8], u[8];
        load8(g, gu + n * 2 * F + f), load8(u, gu + n * 2 * F + F + f);
#pragma unroll
        for (int k = 0; k < 8; k++) g[k] = silu(g[k]) * u[k];
        store8(out + n * F + f, g);
    }
}
__global__ static void swiglu_bwd8(bf16_t *dgu, const bf16_t *dy, const bf16_t *gu, int N, int F) {
    int f = 8 * (blockIdx.x * blockDim.x + threadIdx.x);
    if (f >= F) return;
    for (size_t n = blockIdx.y; n < (size_t)N; n += gridDim.y) {
        size_t ig = n * 2 * F + f, iu = ig + F;
        float g[8], u[8], d[8], dg[8], du[8];
        load8(g, gu + ig), load8(u, gu + iu), load8(d, dy + n * F + f);
#pragma unroll
        for (int k = 0; k < 8; k++) swiglu_grad(g[k], u[k], d[k], &dg[k], &du[k]);
        store8(dgu + ig, dg), store8(dgu + iu, du);
    }
}

static unsigned blocks(size_t n) { return (unsigned)((n + 255) / 256); }

static bool by8(size_t n, const void *a, const void *b, const void *c) {
    return n % 8 == 0 && aligned16(a) && aligned16(b) && (!c || aligned16(c));
}
static dim3 rows_grid(int N, int F) { return dim3((unsigned)((F / 8 + 255) / 256), (unsigned)(N < 65535 ? N : 65535)); }

extern "C" void cuda_gelu_forward(bf16 *out, const bf16 *inp, size_t n) {
    if (!n) return;
    if (by8(n, out, inp, NULL)) gelu_fwd8<<<blocks(n / 8), 256, 0, g_stream>>>(B16(out), CB16(inp), n / 8);
    else gelu_fwd<<<blocks(n), 256, 0, g_stream>>>(B16(out), CB16(inp), n);
    LAUNCH_CHECK();
}
extern "C" void cuda_gelu_backward(bf16 *dinp, const bf16 *dout, const bf16 *inp, size_t n) {
    if (!n) return;
    if (by8(n, dinp, dout, inp)) gelu_bwd8<<<blocks(n / 8), 256, 0, g_stream>>>(B16(dinp), CB16(dout), CB16(inp), n / 8);
    else gelu_bwd<<<blocks(n), 256, 0, g_stream>>>(B16(dinp), CB16(dout), CB16(inp), n);
    LAUNCH_CHECK();
}
extern "C" void cuda_swiglu_forward(bf16 *out, const bf16 *gu, int N, int F) {
    if (!N || !F) return;
    if (by8((size_t)F, out, gu, NULL)) swiglu_fwd8<<<rows_grid(N, F), 256, 0, g_stream>>>(B16(out), CB16(gu), N, F);
    else swiglu_fwd<<<blocks((size_t)N * F), 256, 0, g_stream>>>(B16(out), CB16(gu), N, F);
    LAUNCH_CHECK();
}
extern "C" void cuda_swiglu_backward(bf16 *dgu, const bf16 *dout, const bf16 *gu, int N, int F) {
    if (!N || !F) return;
    if (by8((size_t)F, dgu, dout, gu)) swiglu_bwd8<<<rows_grid(N, F), 256, 0, g_stream>>>(B16(dgu), CB16(dout), CB16(gu), N, F);
    else swiglu_bwd<<<blocks((size_t)N * F), 256, 0, g_stream>>>(B16(dgu), CB16(dout), CB16(gu), N, F);
    LAUNCH_CHECK();
}

// ---- RoPE (rotate_half pairs (j, j + D/2)), in place ----
__global__ static void rope_kernel(bf16_t *x, const float *ang, int T, int H, int D, float sign) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    int half = D / 2;
    if (i >= (size_t)T * H * half) return;
    int j = i % half;
    size_t th = i / half, t = th / H;
    float a = ang[t * half + j], c = cosf(a), s = sign * sinf(a);
    size_t base = th * D;
    float x0 = ld(x, base + j), x1 = ld(x, base + j + half);
    st(x, base + j, x0 * c - x1 * s);
    st(x, base + j + half, x1 * c + x0 * s);
}
// the same over 8 consecutive pairs per thread (16-byte accesses), for D/2 a multiple of 8
__global__ static void rope_kernel8(bf16_t *x, const float *ang, int T, int H, int D, float sign) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    int half = D / 2, per = half / 8;
    if (i >= (size_t)T * H * per) return;
    int j = (int)(i % per) * 8;
    size_t th = i / per, t = th / H;
    bf16_t *x0p = x + th * D + j, *x1p = x0p + half;
    float x0[8], x1[8], a[8];
    load8(x0, x0p), load8(x1, x1p);
    *reinterpret_cast<float4 *>(a) = *reinterpret_cast<const float4 *>(ang + t * half + j);
    *reinterpret_cast<float4 *>(a + 4) = *reinterpret_cast<const float4 *>(ang + t * half + j + 4);
#pragma unroll
    for (int k = 0; k < 8; k++) {
        float c = cosf(a[k]), s = sign * sinf(a[k]), y0 = x0[k] * c - x1[k] * s, y1 = x1[k] * c + x0[k] * s;
        x0[k] = y0, x1[k] = y1;
    }
    store8(x0p, x0), store8(x1p, x1);
}

static void rope_launch(bf16 *x, const float *angles, int T, int H, int D, float sign) {
    if (D % 16 == 0 && aligned16(x) && aligned16(angles))
        rope_kernel8<<<blocks((size_t)T * H * D / 16), 256, 0, g_stream>>>(B16(x), angles, T, H, D, sign);
    else
        rope_kernel<<<blocks((size_t)T * H * D / 2), 256, 0, g_stream>>>(B16(x), angles, T, H, D, sign);
    LAUNCH_CHECK();
}
extern "C" void cuda_rope_forward(bf16 *x, const float *angles, int T, int H, int D) { rope_launch(x, angles, T, H, D, 1.0f); }
extern "C" void cuda_rope_backward(bf16 *dx, const float *angles, int T, int H, int D) { rope_launch(dx, angles, T, H, D, -1.0f); }

// ---- the vision tower's QKV split with RoPE, and its backward ----
// wide: the fused product's rows [Q | K | V] (3·H·D); q, k, v: [T, H, D]. A thread takes W consecutive pairs
// (j .. j + W, and the same + D/2) of one (token, head) in each of Q, K and V: Q's and K's rotated, V's copied.
// MERGE: the backward, from q, k, v (their gradients) into wide with the inverse rotation. One pass instead of
// three strided copies and two in-place rotations (together 5% of the tower's step).
template <int W> __device__ __forceinline__ void load_w(float *x, const bf16_t *p) {
    if constexpr (W == 8) load8(x, p);
    else x[0] = ld(p, 0);
}
template <int W> __device__ __forceinline__ void store_w(bf16_t *p, const float *x) {
    if constexpr (W == 8) store8(p, x);
    else st(p, 0, x[0]);
}
template <int W, bool MERGE>
__global__ static void qkv_rope_kernel(bf16_t *wide, bf16_t *q, bf16_t *k, bf16_t *v, const float *ang, int T, int H, int D) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    int half = D / 2, per = half / W;
    if (i >= (size_t)T * H * per) return;
    int j = (int)(i % per) * W;
    size_t th = i / per, t = th / H, C = (size_t)H * D;
    float c[W], s[W];
#pragma unroll
    for (int e = 0; e < W; e++) {
        sincosf(ang[t * half + j + e], &s[e], &c[e]);  // (one range reduction for both)
        if (MERGE) s[e] = -s[e];
    }
    bf16_t *narrow[3] = {q, k, v}, *src[3], *dst[3];
    float x0[3][W], x1[3][W];
#pragma unroll
    for (int part = 0; part < 3; part++) {  // every load first (the stores might alias them as far as the compiler knows)
        bf16_t *w0 = wide + t * 3 * C + part * C + (th % H) * D + j, *n0 = narrow[part] + th * D + j;
        src[part] = MERGE ? n0 : w0, dst[part] = MERGE ? w0 : n0;
        load_w<W>(x0[part], src[part]), load_w<W>(x1[part], src[part] + half);
    }
#pragma unroll
    for (int part = 0; part < 3; part++) {
#pragma unroll
        for (int e = 0; part < 2 && e < W; e++) {
            float y0 = x0[part][e] * c[e] - x1[part][e] * s[e], y1 = x1[part][e] * c[e] + x0[part][e] * s[e];
            x0[part][e] = y0, x1[part][e] = y1;
        }
        store_w<W>(dst[part], x0[part]), store_w<W>(dst[part] + half, x1[part]);
    }
}
template <bool MERGE> static void qkv_rope_launch(bf16 *wide, bf16 *q, bf16 *k, bf16 *v, const float *angles, int T, int H, int D) {
    size_t pairs = (size_t)T * H * (D / 2);
    if (D % 16 == 0 && aligned16(wide) && aligned16(q) && aligned16(k) && aligned16(v) && !cuda_safe_kernels())
        qkv_rope_kernel<8, MERGE><<<blocks(pairs / 8), 256, 0, g_stream>>>(B16(wide), B16(q), B16(k), B16(v), angles, T, H, D);
    else
        qkv_rope_kernel<1, MERGE><<<blocks(pairs), 256, 0, g_stream>>>(B16(wide), B16(q), B16(k), B16(v), angles, T, H, D);
    LAUNCH_CHECK();
}
extern "C" void cuda_qkv_split_rope(bf16 *q, bf16 *k, bf16 *v, const bf16 *qkv, const float *angles, int T, int H, int D) {
    qkv_rope_launch<false>((bf16 *)qkv, q, k, v, angles, T, H, D);
}
extern "C" void cuda_qkv_merge_rope_backward(bf16 *dqkv, const bf16 *dq, const bf16 *dk, const bf16 *dv, const float *angles, int T, int H,
                                             int D) {
    qkv_rope_launch<true>(dqkv, (bf16 *)dq, (bf16 *)dk, (bf16 *)dv, angles, T, H, D);
}

// ---- embedding ----
__global__ static void embed_fwd(bf16_t *out, const int32_t *ids, const bf16_t *table, int T, int C) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (size_t)T * C) out[i] = table[(size_t)ids[i / C] * C + i % C];
}
// A block per distinct id adds that id's token rows in token order (deterministic; no atomics): the
// tokens grouped by id (order[off[u] .. off[u+1]) for id uniq[u]) are built on the host.
__global__ static void embed_bwd(float *dtable, const bf16_t *dy, const int32_t *uniq, const int32_t *off, const int32_t *order,
                                 int C) {
    int u = blockIdx.x;
    float *row = dtable + (size_t)uniq[u] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float s = row[c];
        for (int i = off[u]; i < off[u + 1]; i++) s += ld(dy, (size_t)order[i] * C + c);
        row[c] = s;
    }
}
static int cmp_id_then_pos(const void *a, const void *b) {  // (id, position) pairs
    const int32_t *x = (const int32_t *)a, *y = (const int32_t *)b;
    return x[0] != y[0] ? (x[0] < y[0] ? -1 : 1) : (x[1] < y[1] ? -1 : x[1] > y[1]);
}
extern "C" void cuda_embedding_forward(bf16 *out, const int32_t *ids, const bf16 *table, int T, int C) { embed_fwd<<<blocks((size_t)T * C), 256, 0, g_stream>>>(B16(out), ids, CB16(table), T, C); LAUNCH_CHECK(); }
extern "C" void cuda_embedding_backward(float *dtable, const bf16 *dout, const int32_t *ids_host, int T, int C) {
    if (T <= 0) return;
    // the tokens grouped by id on the host: [uniq | off | order] go up together. The host buffers grow with
    // the largest T seen and are kept (the step loop does not allocate).
    static int32_t *pairs, *host;
    static int cap;
    if (T > cap) {
        free(pairs);
        free(host);
        pairs = (int32_t *)xmalloc((size_t)T * 2 * sizeof(int32_t));
        host = (int32_t *)xmalloc((size_t)(3 * T + 1) * sizeof(int32_t));
        cap = pairs && host ? T : 0;
        if (!cap) { cuda_note_error("cuda_embedding_backward", "out of host memory"); return; }
    }
    for (int t = 0; t < T; t++) { pairs[2 * t] = ids_host[t]; pairs[2 * t + 1] = t; }
    qsort(pairs, (size_t)T, 2 * sizeof(int32_t), cmp_id_then_pos);
    int nu = 0;
    int32_t *uniq = host, *off = host + T, *order = host + 2 * T + 1;
    for (int t = 0; t < T; t++) {
        if (t == 0 || pairs[2 * t] != pairs[2 * t - 2]) { uniq[nu] = pairs[2 * t]; off[nu++] = t; }
        order[t] = pairs[2 * t + 1];
    }
    off[nu] = T;
    // packed as uniq[nu] | off[nu + 1] | order[T] in one upload
    int32_t *dev = (int32_t *)cuda_scratch((size_t)(3 * T + 1) * sizeof(int32_t));
    memmove(host + nu, off, (size_t)(nu + 1) * sizeof(int32_t));
    memmove(host + 2 * nu + 1, order, (size_t)T * sizeof(int32_t));
    cuda_upload(dev, host, (size_t)(2 * nu + 1 + T) * sizeof(int32_t));
    embed_bwd<<<nu, C >= 1024 ? 256 : 128, 0, g_stream>>>(dtable, CB16(dout), dev, dev + nu, dev + 2 * nu + 1, C);
    LAUNCH_CHECK();
}

// ---- cross-entropy: a block per row, max and Σexp in fp32, no probabilities stored ----
// One pass for the statistics: each thread keeps a running maximum m and Σ exp(x − m), rescaled when m
// grows (the online softmax), reading 8 logits per 16-byte load where the row is aligned; then the block
// combines its threads' pairs. Every thread of the block gets the row's maximum and Σ exp(x − max).
__device__ __forceinline__ void online_add(float *m, float *s, float x) {
    if (x > *m) { *s = *s * expf(*m - x) + 1.0f; *m = x; }  // exp(−inf) = 0 for the first element
    else if (x > -INFINITY) *s += expf(x - *m);             // a −inf logit adds nothing (and no NaN)
}
__device__ static void row_max_sumexp(const bf16_t *x, int V, float *mx_out, float *sum_out) {
    float m = -INFINITY, s = 0.0f;
    if (V % 8 == 0 && aligned16(x)) {
        for (int i = 8 * threadIdx.x; i < V; i += 8 * blockDim.x) {
            float v[8];
            load8(v, x + i);
#pragma unroll
            for (int k = 0; k < 8; k++) online_add(&m, &s, v[k]);
        }
    } else {
        for (int i = threadIdx.x; i < V; i += blockDim.x) online_add(&m, &s, ld(x, i));
    }
    float mx = block_max(m);
    *mx_out = mx;
    *sum_out = block_sum(s > 0.0f ? s * expf(m - mx) : 0.0f);  // a thread without elements adds 0
}
__global__ static void ce_fwd(float *losses, const bf16_t *logits, const int32_t *targets, int V) {
    size_t row = blockIdx.x;
    if (targets[row] < 0) { if (threadIdx.x == 0) losses[row] = 0.0f; return; }
    const bf16_t *x = logits + row * V;
    float mx, s;
    row_max_sumexp(x, V, &mx, &s);
    if (threadIdx.x == 0) losses[row] = logf(s) + mx - ld(x, targets[row]);
}
// softmax(x)·scale, less scale at the target
__device__ __forceinline__ float ce_grad(float x, float mx, float inv, bool target, float scale) {
    return (expf(x - mx) * inv - (target ? 1.0f : 0.0f)) * scale;
}
// dlogits may be logits: each thread reads its elements before it writes them. losses (optional): the row's
// loss as ce_fwd computes it, its target logit read before the statistics' block barriers, so before any
// thread overwrites it.
__global__ static void ce_bwd(float *losses, bf16_t *dlogits, const bf16_t *logits, const int32_t *targets, int V, float scale) {
    size_t row = blockIdx.x;
    bf16_t *d = dlogits + row * V;
    const bf16_t *x = logits + row * V;
    int tgt = targets[row];
    bool vec = V % 8 == 0 && aligned16(x) && aligned16(d);
    if (tgt < 0) {
        float z[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (losses && threadIdx.x == 0) losses[row] = 0.0f;
        if (vec) for (int i = 8 * threadIdx.x; i < V; i += 8 * blockDim.x) store8(d + i, z);
        else for (int i = threadIdx.x; i < V; i += blockDim.x) st(d, i, 0.0f);
        return;
    }
    float xt = losses && threadIdx.x == 0 ? ld(x, tgt) : 0.0f;
    float mx, s;
    row_max_sumexp(x, V, &mx, &s);
    if (losses && threadIdx.x == 0) losses[row] = logf(s) + mx - xt;
    float inv = 1.0f / s;
    if (vec) {
        for (int i = 8 * threadIdx.x; i < V; i += 8 * blockDim.x) {
            float v[8];
            load8(v, x + i);
#pragma unroll
            for (int k = 0; k < 8; k++) v[k] = ce_grad(v[k], mx, inv, i + k == tgt, scale);
            store8(d + i, v);
        }
    } else {
        for (int i = threadIdx.x; i < V; i += blockDim.x) st(d, i, ce_grad(ld(x, i), mx, inv, i == tgt, scale));
    }
}
extern "C" void cuda_cross_entropy_forward(float *losses, const bf16 *logits, const int32_t *targets, int T, int V) { ce_fwd<<<T, 1024, 0, g_stream>>>(losses, CB16(logits), targets, V); LAUNCH_CHECK(); }
extern "C" void cuda_cross_entropy_backward(bf16 *dlogits, const bf16 *logits, const int32_t *targets, int T, int V, float scale) { ce_bwd<<<T, 1024, 0, g_stream>>>(NULL, B16(dlogits), CB16(logits), targets, V, scale); LAUNCH_CHECK(); }
extern "C" void cuda_cross_entropy_fused(float *losses, bf16 *dlogits, const bf16 *logits, const int32_t *targets, int T, int V, float scale) {
    ce_bwd<<<T, 1024, 0, g_stream>>>(losses, B16(dlogits), CB16(logits), targets, V, scale);
    LAUNCH_CHECK();
}

// ---- AdamW in PyTorch's order, fp32 state; the bf16 copy rounded to nearest even ----
struct AdamwHyper {
    float lr, b1, b2, eps, gs, step, bc2_sqrt;  // step = lr / (1 − β1ᵗ), bc2_sqrt = √(1 − β2ᵗ)
};
// element i of master, grad, m, v; its weight at *param (NULL: none)
__device__ __forceinline__ void adamw_at(size_t i, float *master, bf16_t *param, const float *grad, float *m, float *v, float wd,
                                         const AdamwHyper &h) {
    float g = __fmul_rn(grad[i], h.gs), p = master[i] * (1.0f - h.lr * wd);
    float mi = m[i] + (1.0f - h.b1) * (g - m[i]), vi = h.b2 * v[i] + (1.0f - h.b2) * g * g;
    p -= h.step * mi / (sqrtf(vi) / h.bc2_sqrt + h.eps);
    m[i] = mi;
    v[i] = vi;
    master[i] = p;
    if (param) *param = __float2bfloat16_rn(p);
}
static AdamwHyper adamw_hyper(float lr, float beta1, float beta2, float eps, float grad_scale, int64_t t) {
    float bc1 = 1.0f - powf(beta1, (float)t), bc2 = 1.0f - powf(beta2, (float)t);
    return AdamwHyper{lr, beta1, beta2, eps, grad_scale, lr / bc1, sqrtf(bc2)};
}
__global__ static void adamw_kernel(float *master, bf16_t *param, const float *grad, float *m, float *v, size_t n, float wd, AdamwHyper h) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) adamw_at(i, master, param ? param + i : NULL, grad, m, v, wd, h);
}
// adamw_segments: a block per chunk of at most ADAM_CHUNK elements of one segment
enum { ADAM_CHUNK = 4096 };
struct AdamChunk {
    size_t off;      // of the chunk's first element in the flat vectors
    bf16_t *param;   // its weight (NULL: none)
    int n;
    float wd;
};
__global__ static void adamw_chunks_kernel(float *master, const float *grad, float *m, float *v, const AdamChunk *chunks, AdamwHyper h) {
    AdamChunk c = chunks[blockIdx.x];
    for (int e = threadIdx.x; e < c.n; e += blockDim.x) adamw_at(c.off + e, master, c.param ? c.param + e : NULL, grad, m, v, c.wd, h);
}
extern "C" void cuda_adamw_step(float *master, bf16 *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1,
                                float beta2, float eps, float weight_decay, float grad_scale, int64_t t) {
    if (n)
        adamw_kernel<<<blocks(n), 256, 0, g_stream>>>(master, B16(param), grad, m, v, n, weight_decay,
                                                      adamw_hyper(lr, beta1, beta2, eps, grad_scale, t));
    LAUNCH_CHECK();
}
// Many small fp32 arrays zeroed in one launch (Backend.zero_floats): a block per chunk of at most ADAM_CHUNK floats
struct ZeroChunk {
    float *p;
    int n;
};
__global__ static void zero_chunks_kernel(const ZeroChunk *chunks) {
    ZeroChunk c = chunks[blockIdx.x];
    for (int e = threadIdx.x; e < c.n; e += blockDim.x) c.p[e] = 0.0f;
}
// The chunks of k arrays of len(i) elements each (at most ADAM_CHUNK a chunk), made on the host by
// make(i, first element, elements) and uploaded (stream-ordered, through the staging ring) into a device table
// kept from call to call (grown, never shrunk: the step loop stops allocating); *count gets their number (0:
// nothing to launch, NULL returned).
template <class T, class Len, class Make>
static const T *chunk_table(T **dev, size_t *cap, int k, Len len, Make make, size_t *count) {
    size_t n = 0;
    for (int i = 0; i < k; i++) n += (len(i) + ADAM_CHUNK - 1) / ADAM_CHUNK;
    *count = n;
    if (!n) return NULL;
    T *host = (T *)xmalloc(n * sizeof(T));
    if (!host) { cuda_note_error("chunk_table", "out of host memory"); *count = 0; return NULL; }
    size_t c = 0;
    for (int i = 0; i < k; i++)
        for (size_t e = 0; e < len(i); e += ADAM_CHUNK) host[c++] = make(i, e, (int)(len(i) - e < (size_t)ADAM_CHUNK ? len(i) - e : (size_t)ADAM_CHUNK));
    if (n > *cap) {
        cuda_release(*dev);  // (after the old table's last read)
        *cap = n;
        *dev = (T *)cuda_alloc(n * sizeof(T));
    }
    cuda_upload(*dev, host, n * sizeof(T));  // (copied into the staging ring: host may go)
    free(host);
    return *dev;
}
extern "C" void cuda_zero_floats(float *const *p, const size_t *n, int k) {
    static ZeroChunk *dev;
    static size_t cap;
    size_t count;
    const ZeroChunk *table = chunk_table(&dev, &cap, k, [&](int i) { return n[i]; },
                                         [&](int i, size_t e, int len) { return ZeroChunk{p[i] + e, len}; }, &count);
    if (!count) return;
    zero_chunks_kernel<<<(unsigned)count, 256, 0, g_stream>>>(table);
    LAUNCH_CHECK();
}
extern "C" void cuda_adamw_segments(float *master, const float *grad, float *m, float *v, const AdamSeg *seg, int nseg, float lr,
                                    float beta1, float beta2, float eps, float grad_scale, int64_t t) {
    static AdamChunk *dev;
    static size_t cap;
    size_t count;
    const AdamChunk *table = chunk_table(&dev, &cap, nseg, [&](int s) { return seg[s].n; },
                                         [&](int s, size_t e, int len) {
                                             bf16_t *p = (bf16_t *)seg[s].param;
                                             return AdamChunk{seg[s].off + e, p ? p + e : NULL, len, seg[s].wd};
                                         },
                                         &count);
    if (!count) return;
    adamw_chunks_kernel<<<(unsigned)count, 256, 0, g_stream>>>(master, grad, m, v, table, adamw_hyper(lr, beta1, beta2, eps, grad_scale, t));
    LAUNCH_CHECK();
}
