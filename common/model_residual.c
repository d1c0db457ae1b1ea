// model_residual.c: the residual stream in the backend's storage type or in fp32 (model_internal.h, Resid):
// each function calls the backend's plain op or its _r32 form.
#include "model_internal.h"

#define ACT(x) ((Act *)(x))
#define CACT(x) ((const Act *)(x))
#define F32(x) ((float *)(x))
#define CF32(x) ((const float *)(x))

Resid model_resid(const Model *m, const ModelWork *w) { return (Resid){m->be, w->fp32_residual != 0}; }

Res *res_alloc(const Resid *r, Arena *A, size_t n) { return arena_uninit(A, n * (r->f32 ? sizeof(float) : r->be->esize)); }
Res *res_zeros(const Resid *r, Arena *A, size_t n) { return arena_bytes(A, n * (r->f32 ? sizeof(float) : r->be->esize)); }

Res *res_of(const Resid *r, Arena *A, Act *x, size_t n) {
    if (!r->f32) return (Res *)x;
    Res *y = res_alloc(r, A, n);
    r->be->widen(F32(y), x, n);
    return y;
}

const Act *res_stored(const Resid *r, Act *buf, const Res *x, size_t n) {
    if (!r->f32) return CACT(x);
    r->be->narrow(buf, CF32(x), n);
    return buf;
}

void res_add(const Resid *r, Res *out, const Res *a, const Act *b, size_t n) {
    if (r->f32) r->be->add_r32(F32(out), CF32(a), b, n);
    else r->be->add(ACT(out), CACT(a), b, n);
}

void res_rmsnorm(const Resid *r, Act *out, float *rstd, const Res *x, const Act *w, int N, int C, float eps) {
    if (r->f32) r->be->rmsnorm_forward_r32(out, rstd, CF32(x), w, N, C, eps);
    else r->be->rmsnorm_forward(out, rstd, CACT(x), w, N, C, eps);
}

void res_add_rmsnorm(const Resid *r, Res *sum, Act *out, float *rstd, const Res *a, const Act *b, const Act *w, int N, int C, float eps) {
    if (r->f32) r->be->add_rmsnorm_forward_r32(F32(sum), out, rstd, CF32(a), b, w, N, C, eps);
    else r->be->add_rmsnorm_forward(ACT(sum), out, rstd, CACT(a), b, w, N, C, eps);
}

const Act *res_rmsnorm_backward(const Resid *r, Res *dinp, Act *buf, float *dw, const Act *dout, const Res *inp, const Act *w,
                                const float *rstd, int N, int C) {
    if (!r->f32) {
        r->be->rmsnorm_backward(ACT(dinp), dw, dout, CACT(inp), w, rstd, N, C);
        return CACT(dinp);
    }
    r->be->rmsnorm_backward_r32(F32(dinp), dinp ? buf : NULL, dw, dout, CF32(inp), w, rstd, N, C);
    return dinp ? buf : NULL;
}

void res_layernorm(const Resid *r, Act *out, float *mean, float *rstd, const Res *x, const Act *w, const Act *b, int N, int C, float eps) {
    if (r->f32) r->be->layernorm_forward_r32(out, mean, rstd, CF32(x), w, b, N, C, eps);
    else r->be->layernorm_forward(out, mean, rstd, CACT(x), w, b, N, C, eps);
}

void res_add_layernorm(const Resid *r, Res *sum, Act *out, float *mean, float *rstd, const Res *a, const Act *b, const Act *w,
                       const Act *bias, int N, int C, float eps) {
    if (r->f32) r->be->add_layernorm_forward_r32(F32(sum), out, mean, rstd, CF32(a), b, w, bias, N, C, eps);
    else r->be->add_layernorm_forward(ACT(sum), out, mean, rstd, CACT(a), b, w, bias, N, C, eps);
}

const Act *res_layernorm_backward(const Resid *r, Res *dinp, Act *buf, float *dw, float *db, const Act *dout, const Res *inp, const Act *w,
                                  const float *mean, const float *rstd, int N, int C) {
    if (!r->f32) {
        r->be->layernorm_backward(ACT(dinp), dw, db, dout, CACT(inp), w, mean, rstd, N, C);
        return CACT(dinp);
    }
    r->be->layernorm_backward_r32(F32(dinp), dinp ? buf : NULL, dw, db, dout, CF32(inp), w, mean, rstd, N, C);
    return dinp ? buf : NULL;
}
