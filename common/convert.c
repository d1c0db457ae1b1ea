// convert.c: see convert.h.
#include "convert.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int is_extra_state(const char *name) {
    const char *s = strstr(name, "._extra_state");
    return s && s[13] == 0;  // Transformer Engine bookkeeping, not weights
}

int dir_is_mcore(const char *dir) {
    char *t = path_join(dir, MCORE_TRACKER);
    int r = path_exists(t);
    free(t);
    return r;
}

int read_checkpoint_config(const char *dir, int is_mcore, ModelConfig *m, Err *e) {
    char *sub = is_mcore ? path_join(dir, MCORE_HF_FILES) : xstrdup(dir);
    char *path = path_join(sub, "config.json");
    int rc = cfg_model_read(m, path, e);
    free(path);
    free(sub);
    return rc;
}

int source_open_hf(Source *s, const ModelMap *mm, const char *dir, Err *e) {
    memset(s, 0, sizeof *s);
    s->label = xstrdup(dir);
    if (hfdir_open(&s->hf, dir, e)) { free(s->label); s->label = NULL; return -1; }
    s->dtype = xcalloc((size_t)mm->ng, sizeof(DType));
    StrMap expected;
    strmap_init(&expected);
    int rc = 0;
    for (int gi = 0; gi < mm->ng && !rc; gi++) {
        const MGroup *g = &mm->g[gi];
        for (int k = 0; k < g->n_hf && !rc; k++) {
            const ParamSpec *p = &mm->ps[g->hf[k]];
            strmap_put(&expected, p->name, 1);
            const StTensor *t = hfdir_find(&s->hf, p->name);
            rc = check_weight(t, hfdir_path_of(&s->hf, t), p->name, p->ndim, p->shape, &s->dtype[gi], e);
        }
    }
    for (int i = 0; i < s->hf.n && !rc; i++)
        if (strmap_get(&expected, s->hf.t[i]->name) < 0) {
            err_set(e, "%s: unexpected tensor '%s' (not part of the model its config.json describes)", dir, s->hf.t[i]->name);
            rc = -1;
        }
    strmap_free(&expected);
    if (rc) source_close(s);
    return rc;
}

static void rank_path(char *buf, size_t len, const char *iter_dir, int t, int q, int pp, int pp_names) {
    char name[32];
    mcore_rank_dirname(name, sizeof name, t, q, pp_names ? 2 : pp);
    snprintf(buf, len, "%s/%s/model.safetensors", iter_dir, name);
}

int source_open_mcore(Source *s, const ModelMap *mm, const char *root, const char *iter_name, Err *e) {
    memset(s, 0, sizeof *s);
    char iter_buf[64];
    if (!iter_name) {
        if (mcore_read_tracker(root, iter_buf, sizeof iter_buf, e)) return -1;
        iter_name = iter_buf;
    }
    char *iter_dir = path_join(root, iter_name);
    s->is_mcore = 1;
    s->label = xstrdup(iter_dir);
    int rc = mcore_detect_parallel(iter_dir, &s->par, e);
    if (!rc) rc = mcore_check_parallel(&mm->cfg, s->par, iter_dir, e);
    char first[64];
    mcore_rank_dirname(first, sizeof first, 0, 0, 2);
    char *probe = path_join(iter_dir, first);
    int pp_names = s->par.pp > 1 || is_dir(probe);
    free(probe);
    int nr = s->par.tp * s->par.pp;
    if (!rc) s->ranks = xcalloc((size_t)nr, sizeof(StFile));
    for (int q = 0; q < s->par.pp && !rc; q++)
        for (int t = 0; t < s->par.tp && !rc; t++) {
            char path[4096];
            rank_path(path, sizeof path, iter_dir, t, q, s->par.pp, pp_names);
            rc = st_open(&s->ranks[q * s->par.tp + t], path, e);
        }
    s->dtype = xcalloc((size_t)mm->ng, sizeof(DType));
    // Every rank holds exactly the groups of its stage, at its piece shape.
    for (int q = 0; q < s->par.pp && !rc; q++)
        for (int t = 0; t < s->par.tp && !rc; t++) {
            StFile *f = &s->ranks[q * s->par.tp + t];
            int held = 0;
            for (int gi = 0; gi < mm->ng && !rc; gi++) {
                const MGroup *g = &mm->g[gi];
                if (mgroup_stage(g, mm, s->par.pp) != q) continue;
                char name[192];
                int64_t shape[4];
                mgroup_name(g, mm, s->par.pp, name, sizeof name);
                mgroup_rank_shape(g, mm, s->par.tp, shape);
                rc = check_weight(st_find(f, name), f->path, name, g->ndim, shape, &s->dtype[gi], e);
                held++;
            }
            for (int i = 0; i < f->n && !rc; i++)
                if (is_extra_state(f->tensors[i].name)) held++;
            if (!rc && held != f->n)
                for (int i = 0; i < f->n && !rc; i++) {
                    const char *nm = f->tensors[i].name;
                    int known = is_extra_state(nm);
                    for (int gi = 0; gi < mm->ng && !known; gi++) {
                        char name[192];
                        if (mgroup_stage(&mm->g[gi], mm, s->par.pp) != q) continue;
                        mgroup_name(&mm->g[gi], mm, s->par.pp, name, sizeof name);
                        known = !strcmp(name, nm);
                    }
                    if (!known) {
                        err_set(e, "%s: unexpected tensor '%s' (not part of the model its config.json describes)", f->path, nm);
                        rc = -1;
                    }
                }
        }
    free(iter_dir);
    if (rc) source_close(s);
    return rc;
}

void source_close(Source *s) {
    if (s->is_mcore) {
        for (int i = 0; s->ranks && i < s->par.tp * s->par.pp; i++)
            if (s->ranks[i].map) st_close(&s->ranks[i]);
        free(s->ranks);
    } else {
        hfdir_close(&s->hf);
    }
    free(s->dtype);
    free(s->label);
    memset(s, 0, sizeof *s);
}

// The group's full tensor (TP = 1, no vocabulary padding) into `full`.
static int source_full(const ModelMap *mm, Source *s, int gi, void *full, Err *e) {
    const MGroup *g = &mm->g[gi];
    size_t es = dtype_size(s->dtype[gi]);
    if (!s->is_mcore) {
        const void *hf[3];
        const StTensor *t[3];
        for (int k = 0; k < g->n_hf; k++) {
            t[k] = hfdir_find(&s->hf, mm->ps[g->hf[k]].name);
            hf[k] = t[k]->data;
        }
        mgroup_pack(g, mm, hf, es, full);
        for (int k = 0; k < g->n_hf; k++) st_release(t[k]);
        return 0;
    }
    int q = mgroup_stage(g, mm, s->par.pp);
    char name[192];
    mgroup_name(g, mm, s->par.pp, name, sizeof name);
    for (int r = 0; r < s->par.tp; r++) {
        StFile *f = &s->ranks[q * s->par.tp + r];
        const StTensor *t = st_find(f, name);
        if (g->split == SPLIT_REPL && r > 0) {
            // Replicas must agree; a difference means a broken checkpoint, not a choice to make here.
            if (memcmp(t->data, full, t->nbytes)) {
                err_set(e, "%s: replicated tensor '%s' differs from the copy on TP rank 0", f->path, name);
                return -1;
            }
        } else {
            mgroup_gather(g, mm, t->data, s->par.tp, r, es, full);
        }
        st_release(t);
    }
    return 0;
}

// Largest buffer a group needs: its full tensor, or one TP piece when vocabulary padding makes
// the piece larger (TP 1 with a vocabulary that is not a multiple of 128). tp = 0: HF output.
static size_t max_group_bytes(const ModelMap *mm, const Source *s, int tp) {
    size_t m = 0;
    for (int gi = 0; gi < mm->ng; gi++) {
        const MGroup *g = &mm->g[gi];
        size_t es = dtype_size(s->dtype[gi]), b = (size_t)mgroup_numel(g) * es;
        if (tp > 0) {
            int64_t shape[4];
            mgroup_rank_shape(g, mm, tp, shape);
            size_t pb = es;
            for (int d = 0; d < g->ndim; d++) pb *= (size_t)shape[d];
            if (pb > b) b = pb;
        }
        if (b > m) m = b;
    }
    return m;
}

int write_mcore_iter(const ModelMap *mm, Source *src, const char *iter_dir, Parallel par, Err *e) {
    if (mcore_check_parallel(&mm->cfg, par, iter_dir, e)) return -1;
    int nr = par.tp * par.pp, rc = 0;
    StWriter **w = xcalloc((size_t)nr, sizeof *w);
    for (int q = 0; q < par.pp; q++)
        for (int t = 0; t < par.tp; t++) {
            char name[32];
            mcore_rank_dirname(name, sizeof name, t, q, par.pp);
            char *dir = path_join(iter_dir, name);
            if (mkdir_p(dir)) { err_set(e, "%s: cannot create", dir); free(dir); rc = -1; goto out; }
            w[q * par.tp + t] = stw_new(dir, "model", 0);
            free(dir);
        }
    for (int gi = 0; gi < mm->ng && !rc; gi++) {
        const MGroup *g = &mm->g[gi];
        char name[192];
        int64_t shape[4];
        mgroup_name(g, mm, par.pp, name, sizeof name);
        mgroup_rank_shape(g, mm, par.tp, shape);
        int q = mgroup_stage(g, mm, par.pp);
        for (int t = 0; t < par.tp && !rc; t++) rc = stw_declare(w[q * par.tp + t], name, src->dtype[gi], g->ndim, shape, e);
    }
    for (int i = 0; i < nr && !rc; i++) rc = stw_open(w[i], e);
    size_t cap = max_group_bytes(mm, src, par.tp);
    char *full = rc ? NULL : xmalloc(cap), *piece = rc ? NULL : xmalloc(cap);
    for (int gi = 0; gi < mm->ng && !rc; gi++) {
        const MGroup *g = &mm->g[gi];
        size_t es = dtype_size(src->dtype[gi]);
        char name[192];
        mgroup_name(g, mm, par.pp, name, sizeof name);
        int q = mgroup_stage(g, mm, par.pp);
        rc = source_full(mm, src, gi, full, e);
        for (int t = 0; t < par.tp && !rc; t++) {
            mgroup_scatter(g, mm, full, par.tp, t, es, piece);
            rc = stw_write(w[q * par.tp + t], name, piece, e);
        }
    }
    for (int i = 0; i < nr && !rc; i++) rc = stw_finish(w[i], e);
    free(full);
    free(piece);
out:
    for (int i = 0; i < nr; i++) stw_free(w[i]);
    free(w);
    return rc;
}

int write_hf_weights(const ModelMap *mm, Source *src, const char *dir, uint64_t max_shard, Err *e) {
    StWriter *w = stw_new(dir, "model", max_shard);
    int rc = 0;
    for (int gi = 0; gi < mm->ng && !rc; gi++)
        for (int k = 0; k < mm->g[gi].n_hf && !rc; k++) {
            const ParamSpec *p = &mm->ps[mm->g[gi].hf[k]];
            rc = stw_declare(w, p->name, src->dtype[gi], p->ndim, p->shape, e);
        }
    if (!rc) rc = stw_open(w, e);
    size_t cap = max_group_bytes(mm, src, 0);
    char *full = xmalloc(cap), *out = xmalloc(cap);
    for (int gi = 0; gi < mm->ng && !rc; gi++) {
        const MGroup *g = &mm->g[gi];
        size_t es = dtype_size(src->dtype[gi]);
        rc = source_full(mm, src, gi, full, e);
        if (rc) break;
        void *hf[3];
        size_t off = 0;
        for (int k = 0; k < g->n_hf; k++) {
            hf[k] = out + off;
            off += (size_t)param_numel(&mm->ps[g->hf[k]]) * es;
        }
        mgroup_unpack(g, mm, full, hf, es);
        for (int k = 0; k < g->n_hf && !rc; k++) rc = stw_write(w, mm->ps[g->hf[k]].name, hf[k], e);
    }
    if (!rc) rc = stw_finish(w, e);
    free(full);
    free(out);
    stw_free(w);
    return rc;
}

// ---- the two conversion programs ---------------------------------------------------------------

static const char *iter_arg_name(const char *iter, char *buf, size_t len) {
    if (!iter) return NULL;
    if (!strcmp(iter, "release")) return "release";
    char *end;
    long long k = strtoll(iter, &end, 10);
    if (!*iter || *end || k < 0) die_input("--iter: expected an iteration number or \"release\", got '%s'", iter);
    mcore_iter_dirname(buf, len, k);
    return buf;
}

static void report(const char *prog, const ModelMap *mm, const char *out, double t0) {
    int64_t bytes = 0;
    for (int i = 0; i < mm->np; i++) bytes += param_numel(&mm->ps[i]);
    fprintf(stderr, "%s: wrote %d tensors (%.3f G parameters) to %s in %.1f s, peak RSS %.2f GB\n", prog, mm->np,
            (double)bytes / 1e9, out, now_seconds() - t0, (double)peak_rss_bytes() / 1e9);
}

void run_hf2mcore(const char *in, const char *out, Parallel par, const char *iter, int force) {
    double t0 = now_seconds();
    Err e;
    int from_mcore = dir_is_mcore(in) || (iter && is_dir(in));
    if (!is_dir(in)) die_input("%s: not a directory", in);
    ModelConfig m;
    if (read_checkpoint_config(in, from_mcore, &m, &e)) die_input("%s", e.msg);
    ModelMap mm;
    modelmap_init(&mm, &m);
    if (mcore_check_parallel(&m, par, in, &e)) die_input("%s", e.msg);
    char ib[64];
    Source src;
    if (from_mcore ? source_open_mcore(&src, &mm, in, iter_arg_name(iter, ib, sizeof ib), &e) : source_open_hf(&src, &mm, in, &e))
        die_input("%s", e.msg);
    OutDir o;
    outdir_begin(&o, out, force);
    char *iter_dir = path_join(o.tmp, "release"), *hf_dir = path_join(o.tmp, MCORE_HF_FILES);
    char *aux_src = from_mcore ? path_join(in, MCORE_HF_FILES) : xstrdup(in);
    if (mkdir_p(iter_dir) || mkdir_p(hf_dir)) die_internal("%s: cannot create", o.tmp);
    if (write_mcore_iter(&mm, &src, iter_dir, par, &e)) die_input("%s", e.msg);
    if (copy_aux_files(aux_src, hf_dir, NULL, &e) < 0) die_input("%s", e.msg);
    if (mcore_write_tracker(o.tmp, "release", &e)) die_internal("%s", e.msg);  // the commit marker, last
    outdir_commit(&o);
    report("hf2mcore", &mm, out, t0);
    source_close(&src);
    modelmap_free(&mm);
    free(iter_dir);
    free(hf_dir);
    free(aux_src);
}

void run_mcore2hf(const char *in, const char *out, const char *iter, uint64_t max_shard, int force) {
    double t0 = now_seconds();
    Err e;
    if (!is_dir(in)) die_input("%s: not a directory", in);
    if (!iter && !dir_is_mcore(in)) die_input("%s: no %s (not an mcore checkpoint)", in, MCORE_TRACKER);
    ModelConfig m;
    if (read_checkpoint_config(in, 1, &m, &e)) die_input("%s", e.msg);
    ModelMap mm;
    modelmap_init(&mm, &m);
    char ib[64];
    Source src;
    if (source_open_mcore(&src, &mm, in, iter_arg_name(iter, ib, sizeof ib), &e)) die_input("%s", e.msg);
    OutDir o;
    outdir_begin(&o, out, force);
    if (write_hf_weights(&mm, &src, o.tmp, max_shard, &e)) die_input("%s", e.msg);
    char *aux_src = path_join(in, MCORE_HF_FILES);
    if (copy_aux_files(aux_src, o.tmp, NULL, &e) < 0) die_input("%s", e.msg);
    outdir_commit(&o);
    report("mcore2hf", &mm, out, t0);
    source_close(&src);
    modelmap_free(&mm);
    free(aux_src);
}

float *mcore_group_fp32(const ModelMap *mm, int gi, float *const *t, char *name, size_t name_len, int *ndim,
                        int64_t shape[4], Err *e) {
    const MGroup *g = &mm->g[gi];
    int given = 0;
    for (int k = 0; k < g->n_hf; k++) given += t[g->hf[k]] != NULL;
    if (given == 0) return NULL;
    mgroup_name(g, mm, 1, name, name_len);
    if (given != g->n_hf) {
        err_set(e, "mcore tensor '%s' fuses %d HF tensors but only %d are given", name, g->n_hf, given);
        return NULL;
    }
    const void *hf[3];
    for (int k = 0; k < g->n_hf; k++) hf[k] = t[g->hf[k]];
    float *full = xmalloc((size_t)mgroup_numel(g) * sizeof(float));
    mgroup_pack(g, mm, hf, sizeof(float), full);
    *ndim = g->ndim;
    mgroup_rank_shape(g, mm, 1, shape);
    int64_t n = 1;
    for (int i = 0; i < g->ndim; i++) n *= shape[i];
    float *piece = xmalloc((size_t)n * sizeof(float));
    mgroup_scatter(g, mm, full, 1, 0, sizeof(float), piece);
    free(full);
    return piece;
}

int source_read_fp32(const ModelMap *mm, Source *s, float *const *w, DType *dtype, Err *e) {
    for (int gi = 0; gi < mm->ng; gi++) {
        const MGroup *g = &mm->g[gi];
        DType dt = s->dtype[gi];
        size_t es = dtype_size(dt);
        if (gi == 0 && dtype) *dtype = dt;
        char *full = xmalloc((size_t)mgroup_numel(g) * es);
        if (source_full(mm, s, gi, full, e)) { free(full); return -1; }
        void *parts[3];
        for (int k = 0; k < g->n_hf; k++) parts[k] = xmalloc((size_t)param_numel(&mm->ps[g->hf[k]]) * es);
        mgroup_unpack(g, mm, full, parts, es);
        for (int k = 0; k < g->n_hf; k++) {
            convert_floats(w[g->hf[k]], DT_F32, parts[k], dt, (size_t)param_numel(&mm->ps[g->hf[k]]));
            free(parts[k]);
        }
        free(full);
    }
    return 0;
}

int mcore_write_rank_file(const ModelMap *mm, float *const *w, DType dt, const char *path, Err *e) {
    StWriter *sw = stw_new_file(path, e);
    if (!sw) return -1;
    int rc = 0;
    for (int gi = 0; gi < mm->ng && !rc; gi++) {
        char name[192];
        int64_t shape[4];
        mgroup_name(&mm->g[gi], mm, 1, name, sizeof name);
        mgroup_rank_shape(&mm->g[gi], mm, 1, shape);
        rc = stw_declare(sw, name, dt, mm->g[gi].ndim, shape, e);
    }
    if (!rc) rc = stw_open(sw, e);
    for (int gi = 0; gi < mm->ng && !rc; gi++) {
        char name[192];
        int ndim;
        int64_t shape[4];
        float *piece = mcore_group_fp32(mm, gi, w, name, sizeof name, &ndim, shape, e);
        if (!piece) { rc = -1; break; }
        int64_t n = shape_numel(ndim, shape);
        void *out = piece;
        if (dt != DT_F32) {
            out = xmalloc((size_t)n * dtype_size(dt));
            convert_floats(out, dt, piece, DT_F32, (size_t)n);
        }
        rc = stw_write(sw, name, out, e);
        if (out != piece) free(out);
        free(piece);
    }
    if (!rc) rc = stw_finish(sw, e);
    stw_free(sw);
    return rc;
}
