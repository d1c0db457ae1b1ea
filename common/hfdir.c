// hfdir.c: see hfdir.h.
#include "hfdir.h"

#include <dirent.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"

static void push(HfDir *h, const StTensor *t) {
    h->t = xrealloc(h->t, (size_t)(h->n + 1) * sizeof *h->t);
    h->t[h->n] = t;
    strmap_put(&h->map, t->name, h->n);
    h->n++;
}

static int open_indexed(HfDir *h, const char *index_path, Err *e) {
    json_t *root = json_read_file(index_path, e);
    if (!root) return -1;
    json_t *wm = json_object_get(root, "weight_map");
    int rc = -1;
    if (!json_is_object(wm)) { err_set(e, "%s: weight_map: missing or not an object", index_path); goto out; }
    // Shards in first-mention order.
    StrMap shard_ix;
    strmap_init(&shard_ix);
    const char *name;
    json_t *v;
    json_object_foreach(wm, name, v) {
        if (!json_is_string(v)) { err_set(e, "%s: weight_map['%s']: expected a file name", index_path, name); goto out_map; }
        const char *f = json_string_value(v);
        if (strchr(f, '/') || !strcmp(f, "..")) { err_set(e, "%s: weight_map['%s']: '%s' is not a file name", index_path, name, f); goto out_map; }
        if (strmap_get(&shard_ix, f) >= 0) continue;
        strmap_put(&shard_ix, f, h->nfiles);
        h->files = xrealloc(h->files, (size_t)(h->nfiles + 1) * sizeof(StFile));
        char *path = path_join(h->dir, f);
        int ok = st_open(&h->files[h->nfiles], path, e) == 0;
        free(path);
        if (!ok) goto out_map;
        h->nfiles++;
    }
    json_object_foreach(wm, name, v) {
        int fi = strmap_get(&shard_ix, json_string_value(v));
        const StTensor *t = st_find(&h->files[fi], name);
        if (!t) {
            err_set(e, "%s: tensor '%s' is listed in the index but missing from %s", index_path, name, json_string_value(v));
            goto out_map;
        }
        push(h, t);
    }
    for (int fi = 0; fi < h->nfiles; fi++)
        for (int i = 0; i < h->files[fi].n; i++) {
            const StTensor *t = &h->files[fi].tensors[i];
            int at = strmap_get(&h->map, t->name);
            if (at < 0 || h->t[at] != t) {
                err_set(e, "%s: tensor '%s' of %s is not listed for that file in %s", h->files[fi].path, t->name,
                        strrchr(h->files[fi].path, '/') + 1, index_path);
                goto out_map;
            }
        }
    rc = 0;
out_map:
    strmap_free(&shard_ix);
out:
    json_decref(root);
    return rc;
}

int hfdir_open(HfDir *h, const char *dir, Err *e) {
    memset(h, 0, sizeof *h);
    h->dir = xstrdup(dir);
    strmap_init(&h->map);
    if (!is_dir(dir)) { err_set(e, "%s: not a directory", dir); hfdir_close(h); return -1; }
    char *index = path_join(dir, "model.safetensors.index.json");
    char *single = path_join(dir, "model.safetensors");
    int rc;
    if (path_exists(index)) {
        rc = open_indexed(h, index, e);
    } else if (path_exists(single)) {
        h->files = xcalloc(1, sizeof(StFile));
        rc = st_open(&h->files[0], single, e);
        if (rc == 0) {
            h->nfiles = 1;
            for (int i = 0; i < h->files[0].n; i++) push(h, &h->files[0].tensors[i]);
        }
    } else {
        err_set(e, "%s: no model.safetensors or model.safetensors.index.json", dir);
        rc = -1;
    }
    free(index);
    free(single);
    if (rc) hfdir_close(h);
    return rc;
}

void hfdir_close(HfDir *h) {
    for (int i = 0; i < h->nfiles; i++) st_close(&h->files[i]);
    free(h->files);
    free(h->t);
    free(h->dir);
    strmap_free(&h->map);
    memset(h, 0, sizeof *h);
}

const StTensor *hfdir_find(const HfDir *h, const char *name) {
    int i = strmap_get(&h->map, name);
    return i < 0 ? NULL : h->t[i];
}

const char *hfdir_path_of(const HfDir *h, const StTensor *t) {
    for (int f = 0; t && f < h->nfiles; f++)
        if (t >= h->files[f].tensors && t < h->files[f].tensors + h->files[f].n) return h->files[f].path;
    return h->nfiles == 1 ? h->files[0].path : h->dir;
}

int check_weight(const StTensor *t, const char *file, const char *want_name, int ndim, const int64_t *shape,
                 DType *group_dtype, Err *e) {
    char a[128], b[128];
    if (!t) { err_set(e, "%s: missing tensor '%s'", file, want_name); return -1; }
    if (t->ndim != ndim || memcmp(t->shape, shape, (size_t)ndim * sizeof(int64_t))) {
        err_set(e, "%s: tensor '%s' has shape %s but the config implies %s", file, want_name,
                shape_str(t->ndim, t->shape, a, sizeof a), shape_str(ndim, shape, b, sizeof b));
        return -1;
    }
    if (t->dtype != DT_F32 && t->dtype != DT_BF16 && t->dtype != DT_F16) {
        err_set(e, "%s: tensor '%s' has dtype %s (expected F32, BF16 or F16 weights)", file, want_name, dtype_name(t->dtype));
        return -1;
    }
    if (*group_dtype == DT_INVALID) *group_dtype = t->dtype;
    else if (*group_dtype != t->dtype) {
        err_set(e, "%s: tensor '%s' has dtype %s, unlike the %s of the tensors it is fused with", file, want_name,
                dtype_name(t->dtype), dtype_name(*group_dtype));
        return -1;
    }
    return 0;
}

int is_aux_file(const char *name) {
    if (name[0] == '.') return 0;
    if (str_ends_with(name, ".safetensors") || str_ends_with(name, ".safetensors.index.json")) return 0;
    if (str_ends_with(name, ".tmp") || strstr(name, ".tmp.")) return 0;
    return 1;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int copy_aux_files(const char *src, const char *dst, const char *const *skip, Err *e) {
    DIR *d = opendir(src);
    if (!d) { err_set(e, "%s: cannot list directory", src); return -1; }
    char **names = NULL;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!is_aux_file(de->d_name)) continue;
        int skipped = 0;
        for (const char *const *s = skip; s && *s; s++) if (!strcmp(*s, de->d_name)) skipped = 1;
        char *path = path_join(src, de->d_name);
        struct stat st;
        if (!skipped && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            names = xrealloc(names, (size_t)(n + 1) * sizeof *names);
            names[n++] = xstrdup(de->d_name);
        }
        free(path);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    int rc = n;
    for (int i = 0; i < n; i++) {
        char *from = path_join(src, names[i]), *to = path_join(dst, names[i]);
        if (rc >= 0 && copy_file(from, to, e) != 0) rc = -1;
        free(from); free(to); free(names[i]);
    }
    free(names);
    return rc;
}
