// Unit tests of kernels/cpu: forwards against naive double-precision formulas written here from
// spec/model.md, backwards against central finite differences of L = Σ out·R (R fixed random),
// and accumulation (a second backward adds the same gradient again: pitfalls.md #5).
// Tolerances: forwards 1e-5 relative to the largest |value| (fp32 rounding of short sums);
// finite differences 1e-2 relative L2 (h = 1e-2 in fp32: truncation ~h², rounding ~1e-7·|L|/h).
#include <math.h>
#include <stdlib.h>

#include "../../common/rng.h"
#include "../../kernels/ops.h"
#include "check.h"

static float *randn(size_t n, uint64_t seed, float std) {
    float *x = malloc(n * sizeof(float));
    rng_fill_normal(x, n, seed, 0.0f, std);
    return x;
}
static float *zeros(size_t n) { return calloc(n, sizeof(float)); }
static float *filled(size_t n, float v) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = v;
    return x;
}

static double max_rel(const float *a, const double *ref, size_t n) {
    double m = 0, d = 0;
    for (size_t i = 0; i < n; i++) { m = fmax(m, fabs(ref[i])); d = fmax(d, fabs(a[i] - ref[i])); }
    return d / (m + 1e-30);
}

static double rel_l2(const float *a, const double *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) { num += (a[i] - b[i]) * (a[i] - b[i]); den += b[i] * b[i]; }
    return sqrt(num / (den + 1e-30));
}

// ---- a generic finite-difference check -------------------------------------------------------
typedef double (*LossFn)(void *ctx);  // runs the forward and returns Σ out·R

static double fd_check(LossFn f, void *ctx, float *x, size_t n, const float *grad) {
    double *num = malloc(n * sizeof(double));
    const float h = 1e-2f;
    for (size_t i = 0; i < n; i++) {
        float keep = x[i];
        x[i] = keep + h;
        double lp = f(ctx);
        x[i] = keep - h;
        double lm = f(ctx);
        x[i] = keep;
        num[i] = (lp - lm) / (2.0 * h);
    }
    double e = rel_l2(grad, num, n);
    free(num);
    return e;
}

static double dot(const float *a, const float *r, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * r[i];
    return s;
}

// ---- matmul ------------------------------------------------------------------------------------
typedef struct { int N, K, M; float *x, *w, *b, *out, *R; } MM;
static double mm_loss(void *c) { MM *m = c; matmul_forward(m->out, m->x, m->w, m->b, m->N, m->K, m->M); return dot(m->out, m->R, (size_t)m->N * m->M); }

static void matmul_matches_and_differentiates(void) {
    MM m = {5, 7, 3, NULL, NULL, NULL, NULL, NULL};
    m.x = randn(35, 1, 1); m.w = randn(21, 2, 1); m.b = randn(3, 3, 1); m.out = zeros(15); m.R = randn(15, 4, 1);
    mm_loss(&m);
    double ref[15];
    for (int n = 0; n < 5; n++)
        for (int j = 0; j < 3; j++) {
            double s = m.b[j];
            for (int k = 0; k < 7; k++) s += (double)m.x[n * 7 + k] * m.w[j * 7 + k];
            ref[n * 3 + j] = s;
        }
    CHECK(max_rel(m.out, ref, 15) < 1e-5);
    float *dx = zeros(35), *dw = zeros(21), *db = zeros(3);
    matmul_backward(dx, dw, db, m.R, m.x, m.w, 5, 7, 3);
    CHECK(fd_check(mm_loss, &m, m.x, 35, dx) < 1e-2);
    CHECK(fd_check(mm_loss, &m, m.w, 21, dw) < 1e-2);
    CHECK(fd_check(mm_loss, &m, m.b, 3, db) < 1e-2);
    float db1 = db[0], dw1 = dw[5];
    matmul_backward(NULL, dw, db, m.R, m.x, m.w, 5, 7, 3);  // accumulates, NULL skips
    CHECK(fabsf(db[0] - 2 * db1) < 1e-5f && fabsf(dw[5] - 2 * dw1) < 1e-5f);
    free(m.x); free(m.w); free(m.b); free(m.out); free(m.R); free(dx); free(dw); free(db);
}

// ---- norms -------------------------------------------------------------------------------------
typedef struct { int N, C, rms; float *x, *w, *b, *out, *mean, *rstd, *R; } NM;
static double nm_loss(void *c) {
    NM *m = c;
    if (m->rms) rmsnorm_forward(m->out, m->rstd, m->x, m->w, m->N, m->C, 1e-6f);
    else layernorm_forward(m->out, m->mean, m->rstd, m->x, m->w, m->b, m->N, m->C, 1e-5f);
    return dot(m->out, m->R, (size_t)m->N * m->C);
}

static void norms_match_and_differentiate(void) {
    for (int rms = 0; rms < 2; rms++) {
        NM m = {4, 16, rms, randn(64, 10 + rms, 2), randn(16, 11, 1), randn(16, 12, 1), zeros(64), zeros(4), zeros(4), randn(64, 13, 1)};
        nm_loss(&m);
        double ref[64];
        for (int n = 0; n < 4; n++) {
            double mu = 0, var = 0, ss = 0;
            for (int c = 0; c < 16; c++) { mu += m.x[n * 16 + c]; ss += (double)m.x[n * 16 + c] * m.x[n * 16 + c]; }
            mu /= 16;
            for (int c = 0; c < 16; c++) var += (m.x[n * 16 + c] - mu) * (m.x[n * 16 + c] - mu);
            for (int c = 0; c < 16; c++)
                ref[n * 16 + c] = rms ? m.x[n * 16 + c] / sqrt(ss / 16 + 1e-6) * m.w[c]
                                      : (m.x[n * 16 + c] - mu) / sqrt(var / 16 + 1e-5) * m.w[c] + m.b[c];
        }
        CHECK(max_rel(m.out, ref, 64) < 1e-5);
        float *dx = zeros(64), *dw = zeros(16), *db = zeros(16);
        if (rms) rmsnorm_backward(dx, dw, m.R, m.x, m.w, m.rstd, 4, 16);
        else layernorm_backward(dx, dw, db, m.R, m.x, m.w, m.mean, m.rstd, 4, 16);
        CHECK(fd_check(nm_loss, &m, m.x, 64, dx) < 1e-2);
        CHECK(fd_check(nm_loss, &m, m.w, 16, dw) < 1e-2);
        if (!rms) CHECK(fd_check(nm_loss, &m, m.b, 16, db) < 1e-2);
        free(m.x); free(m.w); free(m.b); free(m.out); free(m.mean); free(m.rstd); free(m.R); free(dx); free(dw); free(db);
    }
}

// ---- activations -------------------------------------------------------------------------------
typedef struct { int swiglu; float *x, *out, *R; } AC;
static double ac_loss(void *c) {
    AC *a = c;
    if (a->swiglu) { swiglu_forward(a->out, a->x, 3, 5); return dot(a->out, a->R, 15); }
    gelu_forward(a->out, a->x, 30);
    return dot(a->out, a->R, 30);
}

static void activations_match_and_differentiate(void) {
    AC g = {0, randn(30, 20, 2), zeros(30), randn(30, 21, 1)};
    ac_loss(&g);
    double ref[30];
    for (int i = 0; i < 30; i++) ref[i] = 0.5 * g.x[i] * (1 + erf(g.x[i] / sqrt(2.0)));  // exact, not tanh
    CHECK(max_rel(g.out, ref, 30) < 1e-5);
    float *dx = zeros(30), *over = randn(30, 24, 5);
    gelu_backward(dx, g.R, g.x, 30);
    CHECK(fd_check(ac_loss, &g, g.x, 30, dx) < 1e-2);
    gelu_backward(over, g.R, g.x, 30);  // overwrites: what was there does not matter
    CHECK(memcmp(over, dx, 30 * sizeof(float)) == 0);
    AC s = {1, randn(30, 22, 2), zeros(15), randn(15, 23, 1)};
    ac_loss(&s);
    for (int n = 0; n < 3; n++)
        for (int i = 0; i < 5; i++) {
            double gg = s.x[n * 10 + i], u = s.x[n * 10 + 5 + i];
            ref[n * 5 + i] = gg / (1 + exp(-gg)) * u;  // first half is the gate
        }
    CHECK(max_rel(s.out, ref, 15) < 1e-5);
    float *dgu = zeros(30), *dgu_over = randn(30, 25, 5);
    swiglu_backward(dgu, s.R, s.x, 3, 5);
    CHECK(fd_check(ac_loss, &s, s.x, 30, dgu) < 1e-2);
    swiglu_backward(dgu_over, s.R, s.x, 3, 5);
    CHECK(memcmp(dgu_over, dgu, 30 * sizeof(float)) == 0);
    free(g.x); free(g.out); free(g.R); free(dx); free(over); free(s.x); free(s.out); free(s.R); free(dgu); free(dgu_over);
}

// ---- rope --------------------------------------------------------------------------------------
typedef struct { float *x, *y, *ang, *R; } RP;
static double rp_loss(void *c) {
    RP *r = c;
    for (int i = 0; i < 48; i++) r->y[i] = r->x[i];
    rope_forward(r->y, r->ang, 3, 2, 8);
    return dot(r->y, r->R, 48);
}

static void rope_matches_and_differentiates(void) {
    int32_t cu[3] = {0, 2, 3};
    float ang[12];
    rope_angles_1d(ang, cu, 2, 8, 10000.0);
    // positions restart: token 2 is position 0 of the second sub-sequence
    CHECK(ang[4] == 1.0f && ang[5] == (float)(1.0 / pow(10000.0, 2.0 / 8)) && ang[8] == 0.0f && ang[11] == 0.0f);
    RP r = {randn(48, 30, 1), zeros(48), ang, randn(48, 31, 1)};
    rp_loss(&r);
    double ref[48];
    for (int t = 0; t < 3; t++)
        for (int h = 0; h < 2; h++)
            for (int j = 0; j < 8; j++) {
                const float *v = r.x + (t * 2 + h) * 8;
                double a = ang[t * 4 + j % 4];
                // x·cos + rotate_half(x)·sin, rotate_half(x) = [−x[4:8], x[0:4]]
                double rot = j < 4 ? -v[j + 4] : v[j - 4];
                ref[(t * 2 + h) * 8 + j] = v[j] * cos(a) + rot * sin(a);
            }
    CHECK(max_rel(r.y, ref, 48) < 1e-5);
    float dx[48];
    for (int i = 0; i < 48; i++) dx[i] = r.R[i];
    rope_backward(dx, ang, 3, 2, 8);
    CHECK(fd_check(rp_loss, &r, r.x, 48, dx) < 1e-2);
    free(r.x); free(r.y); free(r.R);
}

// ---- attention -----------------------------------------------------------------------------------
enum { AT = 7, HQ = 4, HKV = 2, AD = 4 };
typedef struct { int causal; int32_t cu[3]; float *q, *k, *v, *out, *lse, *R; } ATT;
static double at_loss(void *c) {
    ATT *a = c;
    attention_forward(a->out, a->lse, a->q, a->k, a->v, a->cu, 2, HQ, HKV, AD, a->causal);
    return dot(a->out, a->R, AT * HQ * AD);
}

static void attention_matches_and_differentiates(void) {
    for (int causal = 0; causal < 2; causal++) {
        ATT a = {causal, {0, 4, 7}, randn(AT * HQ * AD, 40, 1), randn(AT * HKV * AD, 41, 1), randn(AT * HKV * AD, 42, 1),
                 zeros(AT * HQ * AD), zeros(AT * HQ), randn(AT * HQ * AD, 43, 1)};
        at_loss(&a);
        double ref[AT * HQ * AD];
        for (int t = 0; t < AT; t++)
            for (int h = 0; h < HQ; h++) {
                int s0 = t < 4 ? 0 : 4, s1 = t < 4 ? 4 : 7, e = causal ? t + 1 : s1, hk = h / (HQ / HKV);
                double sc[AT], mx = -1e300, sum = 0;
                for (int j = s0; j < e; j++) {
                    double d = 0;
                    for (int x = 0; x < AD; x++) d += (double)a.q[(t * HQ + h) * AD + x] * a.k[(j * HKV + hk) * AD + x];
                    sc[j] = d / sqrt((double)AD);
                    mx = fmax(mx, sc[j]);
                }
                for (int j = s0; j < e; j++) sum += exp(sc[j] - mx);
                for (int x = 0; x < AD; x++) {
                    double o = 0;
                    for (int j = s0; j < e; j++) o += exp(sc[j] - mx) / sum * a.v[(j * HKV + hk) * AD + x];
                    ref[(t * HQ + h) * AD + x] = o;
                }
            }
        CHECK(max_rel(a.out, ref, AT * HQ * AD) < 1e-5);
        // written whole: what the buffers held before (NaN here) must not reach the gradients
        float *dq = filled(AT * HQ * AD, NAN), *dk = filled(AT * HKV * AD, NAN), *dv = filled(AT * HKV * AD, NAN);
        attention_backward(dq, dk, dv, a.R, a.out, a.lse, a.q, a.k, a.v, a.cu, 2, HQ, HKV, AD, causal);
        CHECK(fd_check(at_loss, &a, a.q, AT * HQ * AD, dq) < 1e-2);
        CHECK(fd_check(at_loss, &a, a.k, AT * HKV * AD, dk) < 1e-2);
        CHECK(fd_check(at_loss, &a, a.v, AT * HKV * AD, dv) < 1e-2);
        free(a.q); free(a.k); free(a.v); free(a.out); free(a.lse); free(a.R); free(dq); free(dk); free(dv);
    }
}

// ---- embedding and loss ----------------------------------------------------------------------------
typedef struct { float *logits; int32_t *tg; } CE;
static double ce_loss(void *c) { CE *x = c; int64_t n; return cross_entropy_forward(x->logits, x->tg, 5, 11, &n); }

static void loss_and_embedding(void) {
    CE c = {randn(55, 50, 3), (int32_t[]){3, -100, 10, 0, -100}};
    int64_t n;
    double l = cross_entropy_forward(c.logits, c.tg, 5, 11, &n), ref = 0;
    for (int t = 0; t < 5; t++) {
        if (c.tg[t] < 0) continue;
        double s = 0;
        for (int i = 0; i < 11; i++) s += exp((double)c.logits[t * 11 + i]);
        ref += log(s) - c.logits[t * 11 + c.tg[t]];
    }
    CHECK(n == 3 && fabs(l - ref / 3) < 1e-6 * fabs(ref));
    float *d = randn(55, 51, 1);  // overwritten: ignored rows become 0
    cross_entropy_backward(d, c.logits, c.tg, 5, 11, 1.0f / 3);
    CHECK(d[11] == 0.0f && d[54] == 0.0f);
    CHECK(fd_check(ce_loss, &c, c.logits, 55, d) < 1e-2);
    float inplace[55];  // written over the logits (the trainer's way): the same values
    memcpy(inplace, c.logits, sizeof inplace);
    cross_entropy_backward(inplace, inplace, c.tg, 5, 11, 1.0f / 3);
    CHECK(memcmp(inplace, d, sizeof inplace) == 0);
    float table[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, out[6], dt[12] = {0};
    int32_t ids[3] = {2, 0, 2};
    embedding_forward(out, ids, table, 3, 2);
    CHECK(out[0] == 4 && out[1] == 5 && out[2] == 0 && out[5] == 5);
    float dout[6] = {1, 2, 3, 4, 5, 6};
    embedding_backward(dt, dout, ids, 3, 2);
    CHECK(dt[4] == 6 && dt[5] == 8 && dt[0] == 3 && dt[1] == 4 && dt[2] == 0);  // repeated id 2 accumulates
    free(c.logits); free(d);
}

static void adamw_matches_pytorch_formula(void) {
    float p[3] = {1.0f, -2.0f, 0.5f}, g[3] = {0.1f, -0.3f, 0.0f}, m[3] = {0}, v[3] = {0};
    double P[3] = {1.0, -2.0, 0.5}, M[3] = {0}, V[3] = {0};
    const double lr = 1e-3, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
    for (int t = 1; t <= 5; t++) {
        const double clip = t % 2 ? 1.0 : 0.25;  // a clipping coefficient on every other step
        adamw_step(p, g, m, v, 3, (float)lr, (float)b1, (float)b2, (float)eps, (float)wd, (float)clip, t);
        for (int i = 0; i < 3; i++) {  // clip_grad_norm_'s scaling, then torch.optim.AdamW (decoupled decay, bias correction)
            double gi = g[i] * clip;
            P[i] *= 1 - lr * wd;
            M[i] = b1 * M[i] + (1 - b1) * gi;
            V[i] = b2 * V[i] + (1 - b2) * gi * gi;
            double mh = M[i] / (1 - pow(b1, t)), vh = V[i] / (1 - pow(b2, t));
            P[i] -= lr * mh / (sqrt(vh) + eps);
        }
    }
    CHECK(max_rel(p, P, 3) < 1e-6);
}

int main(void) {
    RUN(matmul_matches_and_differentiates);
    RUN(norms_match_and_differentiate);
    RUN(activations_match_and_differentiate);
    RUN(rope_matches_and_differentiates);
    RUN(attention_matches_and_differentiates);
    RUN(loss_and_embedding);
    RUN(adamw_matches_pytorch_formula);
    return CHECK_DONE();
}
