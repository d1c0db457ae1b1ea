// train_ckpt.c: see train_ckpt.h.
#include "train_ckpt.h"

#include <dirent.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "convert.h"
#include "hfdir.h"
#include "mcore.h"
#include "safetensors.h"

int ckpt_find_resume(const char *save, int64_t *iteration, Err *e) {
    if (!dir_is_mcore(save)) return 0;
    char name[64];
    if (mcore_read_tracker(save, name, sizeof name, e)) return -1;
    if (!strcmp(name, "release")) {
        err_set(e, "%s: holds a release checkpoint; --save must be a training output directory", save);
        return -1;
    }
    *iteration = atoll(name + 5);
    return 1;
}

static char *iter_path(const char *save, int64_t iteration, const char *rel) {
    char name[64];
    mcore_iter_dirname(name, sizeof name, iteration);
    return rel ? xasprintf("%s/%s/%s", save, name, rel) : xasprintf("%s/%s", save, name);
}

static char *optim_rel(int r, int world) { return xasprintf("mp_rank_00/optim_dp_%03d_of_%03d.safetensors", r, world); }

static const char *jstr(json_t *j, const char *k) {
    json_t *v = json_object_get(j, k);
    return json_is_string(v) ? json_string_value(v) : "";
}

int ckpt_load_state(const char *save, int64_t iteration, const TrainOptions *o, Model *m, Adam *opt, TrainState *st,
                    int world, Err *e) {
    char *path = iter_path(save, iteration, "state.json");
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) { err_set(e, "%s: %s", path, je.text); free(path); return -1; }
    int rc = 0;
    int saved_world = (int)json_integer_value(json_object_get(j, "world_size"));
    json_t *cur = json_object_get(j, "loader_cursor");
    if (saved_world != world)
        err_set(e, "%s: saved by %d data-parallel ranks, resumed with %d (the optimizer shards and loader cursors need the same)", path, saved_world, world), rc = -1;
    else if (json_integer_value(json_object_get(j, "global_batch")) != o->stage.global_batch)
        err_set(e, "%s: global batch %lld, but this run asks for %lld", path, (long long)json_integer_value(json_object_get(j, "global_batch")), (long long)o->stage.global_batch), rc = -1;
    else if (strcmp(jstr(j, "trainable"), o->stage.trainable) || strcmp(jstr(j, "frozen"), o->stage.frozen))
        err_set(e, "%s: trainable set '%s' minus '%s', but this run trains '%s' minus '%s'", path, jstr(j, "trainable"), jstr(j, "frozen"), o->stage.trainable, o->stage.frozen), rc = -1;
    else if ((size_t)json_integer_value(json_object_get(j, "flat_size")) != opt->n)
        err_set(e, "%s: optimizer vector of %lld floats, this model has %zu", path, (long long)json_integer_value(json_object_get(j, "flat_size")), opt->n), rc = -1;
    else if (!json_is_array(cur) || (int)json_array_size(cur) != world || world > 256)
        err_set(e, "%s: loader_cursor: expected one cursor per rank", path), rc = -1;
    if (!rc) {
        st->iteration = iteration;
        st->consumed = json_integer_value(json_object_get(j, "consumed_samples"));
        st->skipped = json_integer_value(json_object_get(j, "skipped_iterations"));
        st->adam_t = json_integer_value(json_object_get(j, "adam_step"));
        st->world = world;
        for (int r = 0; r < world; r++) st->cursor[r] = json_integer_value(json_array_get(cur, (size_t)r));
        opt->t = st->adam_t;
    }
    json_decref(j);
    free(path);
    // fp32 masters of every shard (the model file holds them rounded to its dtype), this rank's moments
    float *flat = xcalloc(opt->n ? opt->n : 1, sizeof(float));
    for (int r = 0; r < world && !rc; r++) {
        char *rel = optim_rel(r, world), *p = iter_path(save, iteration, rel);
        StFile f;
        size_t lo, hi;
        comm_shard_of(opt->n, world, r, &lo, &hi);
        if (st_open(&f, p, e)) rc = -1;
        else {
            const char *names[3] = {"param", "exp_avg", "exp_avg_sq"};
            float *dst[3] = {flat + lo, opt->m, opt->v};
            for (int k = 0; k < 3 && !rc; k++) {
                const StTensor *t = st_find(&f, names[k]);
                if (!t || t->dtype != DT_F32 || t->ndim != 1 || (size_t)t->shape[0] != hi - lo) {
                    err_set(e, "%s: expected '%s' F32 [%zu]", p, names[k], hi - lo);
                    rc = -1;
                } else if (k == 0 || lo == opt->lo) {
                    memcpy(dst[k], t->data, (hi - lo) * sizeof(float));
                }
            }
            st_close(&f);
        }
        free(rel);
        free(p);
    }
    if (!rc) adam_params_from_flat(opt, m, flat);
    free(flat);
    return rc;
}

int ckpt_prepare_root(const char *save, const char *from, int resume, int64_t iteration, Err *e) {
    (void)iteration;
    if (mkdir_p(save)) { err_set(e, "%s: cannot create the output directory", save); return -1; }
    char *hf = path_join(save, MCORE_HF_FILES);
    int rc = 0;
    if (!resume && !is_dir(hf)) {
        char *src = path_join(from, MCORE_HF_FILES), *tmp = xasprintf("%s.tmp.%d", hf, (int)getpid());
        rm_rf(tmp);
        if (mkdir_p(tmp) || copy_aux_files(src, tmp, NULL, e) < 0 || rename(tmp, hf)) {
            if (!e->msg[0]) err_set(e, "%s: cannot copy the config and tokenizer files", hf);
            rm_rf(tmp);
            rc = -1;
        }
        free(src);
        free(tmp);
    }
    free(hf);
    return rc;
}

FILE *ckpt_open_metrics(const char *save, int64_t iteration, Err *e) {
    char *path = path_join(save, "metrics.jsonl");
    size_t len = 0;
    Err ignore;
    char *old = path_exists(path) ? read_text_file(path, &len, &ignore) : NULL;
    FILE *f = fopen(path, "w");
    if (!f) { err_set(e, "%s: cannot write", path); free(old); free(path); return NULL; }
    for (char *line = old, *next; line && *line; line = next) {  // keep the lines of committed iterations
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        else next = line + strlen(line);
        const char *it = strstr(line, "\"iteration\": ");
        if (it && atoll(it + 13) <= iteration) fprintf(f, "%s\n", line);
    }
    fflush(f);
    free(old);
    free(path);
    return f;
}

// Removes committed iterations beyond the newest `keep` (keep <= 0: keep all).
static void prune(const char *save, int64_t keep) {
    if (keep <= 0) return;
    DIR *d = opendir(save);
    if (!d) return;
    int64_t *its = NULL;
    int n = 0;
    for (struct dirent *de; (de = readdir(d));)
        if (!strncmp(de->d_name, "iter_", 5) && strlen(de->d_name) == 12) {
            its = xrealloc(its, (size_t)(n + 1) * sizeof(int64_t));
            its[n++] = atoll(de->d_name + 5);
        }
    closedir(d);
    for (int i = 0; i < n; i++) {
        int newer = 0;
        for (int k = 0; k < n; k++) newer += its[k] > its[i];
        if (newer >= keep) {
            char *p = iter_path(save, its[i], NULL);
            rm_rf(p);
            free(p);
        }
    }
    free(its);
}

static int write_state(const char *path, const TrainOptions *o, const TrainState *st, size_t flat, const int64_t *cursor, int world, Err *e) {
    const StagePreset *s = &o->stage;
    json_t *j = json_object(), *cur = json_array();
    for (int r = 0; r < world; r++) json_array_append_new(cur, json_integer(cursor[r]));
    json_object_set_new(j, "program", json_string(o->program));
    json_object_set_new(j, "stage", json_string(s->stage));
    json_object_set_new(j, "iteration", json_integer(st->iteration));
    json_object_set_new(j, "consumed_samples", json_integer(st->consumed));
    json_object_set_new(j, "skipped_iterations", json_integer(st->skipped));
    json_object_set_new(j, "adam_step", json_integer(st->adam_t));
    json_object_set_new(j, "world_size", json_integer(world));
    json_object_set_new(j, "global_batch", json_integer(s->global_batch));
    json_object_set_new(j, "micro_batch", json_integer(s->micro_batch));
    json_object_set_new(j, "trainable", json_string(s->trainable));
    json_object_set_new(j, "frozen", json_string(s->frozen));
    json_object_set_new(j, "flat_size", json_integer((json_int_t)flat));
    json_object_set_new(j, "loader_cursor", cur);
    json_object_set_new(j, "seed", json_integer(o->seed));
    json_t *sch = json_object();  // Megatron's opt_param_scheduler, steps in samples
    json_object_set_new(sch, "max_lr", json_real(s->lr));
    json_object_set_new(sch, "min_lr", json_real(s->min_lr));
    json_object_set_new(sch, "lr_warmup_steps", json_real(s->warmup_fraction * (double)s->iterations * (double)s->global_batch));
    json_object_set_new(sch, "lr_decay_steps", json_integer(s->iterations * s->global_batch));
    json_object_set_new(sch, "lr_decay_style", json_string("cosine"));
    json_object_set_new(sch, "num_steps", json_integer(st->consumed));
    json_object_set_new(sch, "start_wd", json_real(s->weight_decay));
    json_object_set_new(sch, "end_wd", json_real(s->weight_decay));
    json_object_set_new(j, "scheduler", sch);
    json_t *opt = json_object();
    json_object_set_new(opt, "beta1", json_real(s->beta1));
    json_object_set_new(opt, "beta2", json_real(s->beta2));
    json_object_set_new(opt, "eps", json_real(s->eps));
    json_object_set_new(opt, "clip_grad", json_real(s->clip_grad));
    json_object_set_new(opt, "iterations", json_integer(s->iterations));
    json_object_set_new(opt, "save_interval", json_integer(s->save_interval));
    json_object_set_new(opt, "max_len", json_integer(s->max_len));
    json_object_set_new(j, "optimizer", opt);
    json_object_set_new(j, "rng", json_pack("{s:s}", "note", "no random state: no dropout, the loader order is a function of seed and cursor"));
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(j);
    int rc = write_text_file(path, text, e);
    free(text);
    return rc;
}

int ckpt_save(const TrainOptions *o, const Model *m, const Adam *opt, Comm *c, TrainState *st, int64_t my_cursor, Err *e) {
    int rank = comm_rank(c), world = comm_world(c), rc = 0;
    char *dir = iter_path(o->save, st->iteration, NULL), *rankdir = iter_path(o->save, st->iteration, "mp_rank_00");
    if (rank == 0) {  // an existing directory of this iteration is an uncommitted earlier attempt
        rm_rf(dir);
        if (mkdir_p(rankdir)) { err_set(e, "%s: cannot create", rankdir); rc = -1; }
    }
    if (comm_barrier(c, e)) rc = -1;
    if (!rc && rank == 0) {
        ModelMap mm;
        modelmap_init(&mm, &m->cfg);
        char *p = path_join(rankdir, "model.safetensors");
        rc = mcore_write_rank_file(&mm, m->w, m->dtype, p, e);
        free(p);
        modelmap_free(&mm);
    }
    if (!rc) {  // this rank's optimizer shard: fp32 masters (the model's own weights on the cpu) and moments
        float *flat = NULL;
        const float *param = opt->hm;
        if (!param) {
            flat = xcalloc(opt->n ? opt->n : 1, sizeof(float));
            adam_params_to_flat(opt, m, flat);
            param = flat + opt->lo;
        }
        char *rel = optim_rel(rank, world), *p = iter_path(o->save, st->iteration, rel);
        StWriter *w = stw_new_file(p, e);
        int64_t len[1] = {(int64_t)(opt->hi - opt->lo)};
        if (!w || stw_declare(w, "param", DT_F32, 1, len, e) || stw_declare(w, "exp_avg", DT_F32, 1, len, e) ||
            stw_declare(w, "exp_avg_sq", DT_F32, 1, len, e) || stw_open(w, e) || stw_write(w, "param", param, e) ||
            stw_write(w, "exp_avg", opt->m, e) || stw_write(w, "exp_avg_sq", opt->v, e) || stw_finish(w, e))
            rc = -1;
        if (w) stw_free(w);
        free(rel); free(p); free(flat);
    }
    int64_t cursors[256];  // every rank's loader cursor, for state.json: gathered 16 at a time
    for (int base = 0; base < world; base += 16) {
        double chunk[16] = {0};
        int k = world - base < 16 ? world - base : 16;
        if (rank >= base && rank < base + k) chunk[rank - base] = (double)my_cursor;  // exact below 2^53
        if (comm_allreduce_f64(c, chunk, k, e)) rc = -1;
        for (int r = 0; r < k; r++) cursors[base + r] = (int64_t)chunk[r];
    }
    double ok = rc ? 1.0 : 0.0;
    if (comm_allreduce_f64(c, &ok, 1, e)) rc = -1;
    if (!rc && ok > 0) { err_set(e, "a rank failed to write its part of iteration %lld", (long long)st->iteration); rc = -1; }
    if (!rc && rank == 0) {
        char *sp = path_join(dir, "state.json");
        rc = write_state(sp, o, st, opt->n, cursors, world, e);
        free(sp);
        const char *pause = getenv("LLAVA_SAVE_PAUSE");  // test hook: widen the window before the commit
        if (!rc && pause) usleep((useconds_t)(atof(pause) * 1e6));
        fsync_dir(dir);
        char name[64];
        mcore_iter_dirname(name, sizeof name, st->iteration);
        if (!rc) rc = mcore_write_tracker(o->save, name, e);
        if (!rc) prune(o->save, o->keep);
    }
    if (comm_barrier(c, e)) rc = -1;
    free(dir);
    free(rankdir);
    return rc;
}
