// safetensors.c: see safetensors.h.
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int64_t shape_numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

const char *shape_str(int ndim, const int64_t *shape, char *buf, size_t len) {
    size_t off = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, "%s%ld", i ? ", " : "", (long)shape[i]);
    if (off < len) snprintf(buf + off, len - off, "]");
    return buf;
}

// ---- reading ----------------------------------------------------------------------------------

static int cmp_begin(const void *a, const void *b) {
    const StTensor *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end < y->end ? -1 : x->end > y->end);
}

// Parses one header entry; `e` names the file and the tensor.
static int parse_entry(StTensor *t, const char *path, const char *name, json_t *v, Err *e) {
    if (!json_is_object(v)) { err_set(e, "%s: tensor '%s': header entry is not an object", path, name); return -1; }
    json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"), *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd)) { err_set(e, "%s: tensor '%s': missing string 'dtype'", path, name); return -1; }
    t->dtype = dtype_from_name(json_string_value(jd));
    if (t->dtype == DT_INVALID) {
        err_set(e, "%s: tensor '%s': unknown dtype '%s' (expected F32, BF16, F16, I32, I64, U8, BOOL, ...)", path, name,
                json_string_value(jd));
        return -1;
    }
    if (!json_is_array(js) || json_array_size(js) > ST_MAX_DIMS) {
        err_set(e, "%s: tensor '%s': 'shape' must be an array of at most %d integers", path, name, ST_MAX_DIMS);
        return -1;
    }
    t->ndim = (int)json_array_size(js);
    uint64_t numel = 1;
    for (int i = 0; i < t->ndim; i++) {
        json_t *d = json_array_get(js, (size_t)i);
        if (!json_is_integer(d) || json_integer_value(d) < 0) {
            err_set(e, "%s: tensor '%s': shape entry %d is not a non-negative integer", path, name, i);
            return -1;
        }
        t->shape[i] = json_integer_value(d);
        if (t->shape[i] && numel > UINT64_MAX / 16 / (uint64_t)t->shape[i]) {
            err_set(e, "%s: tensor '%s': shape is too large", path, name);
            return -1;
        }
        numel *= (uint64_t)t->shape[i];
    }
    if (!json_is_array(jo) || json_array_size(jo) != 2 || !json_is_integer(json_array_get(jo, 0)) ||
        !json_is_integer(json_array_get(jo, 1))) {
        err_set(e, "%s: tensor '%s': 'data_offsets' must be [begin, end]", path, name);
        return -1;
    }
    json_int_t b = json_integer_value(json_array_get(jo, 0)), en = json_integer_value(json_array_get(jo, 1));
    if (b < 0 || en < b) {
        err_set(e, "%s: tensor '%s': data_offsets [%lld, %lld] are not an ordered byte range", path, name, (long long)b,
                (long long)en);
        return -1;
    }
    t->begin = (uint64_t)b;
    t->end = (uint64_t)en;
    uint64_t want = numel * dtype_size(t->dtype);
    if (t->end - t->begin != want) {
        char sb[128];
        err_set(e, "%s: tensor '%s': %s %s needs %llu bytes but data_offsets [%llu, %llu] give %llu", path, name,
                dtype_name(t->dtype), shape_str(t->ndim, t->shape, sb, sizeof sb), (unsigned long long)want,
                (unsigned long long)t->begin, (unsigned long long)t->end, (unsigned long long)(t->end - t->begin));
        return -1;
    }
    t->nbytes = (size_t)want;
    return 0;
}

// The last JSON string that ends before `pos` in the header text (jansson reports the position of a
// duplicate key, not the key), copied into a static buffer for the error message.
static const char *key_before(const uint8_t *text, int pos) {
    static char key[256];
    int end = pos - 1;
    while (end > 0 && text[end] != '"') end--;
    int start = end - 1;
    while (start > 0 && !(text[start] == '"' && text[start - 1] != '\\')) start--;
    int n = end - start - 1;
    if (start < 0 || n <= 0) return "?";
    if (n > (int)sizeof key - 1) n = (int)sizeof key - 1;
    memcpy(key, text + start + 1, (size_t)n);
    key[n] = 0;
    return key;
}

int st_open(StFile *f, const char *path, Err *e) {
    memset(f, 0, sizeof *f);
    strmap_init(&f->index);
    int fd = open(path, O_RDONLY);
    if (fd < 0) { err_set(e, "%s: cannot open: %s", path, strerror(errno)); return -1; }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        err_set(e, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    size_t size = (size_t)st.st_size;
    if (size < 8) {
        err_set(e, "%s: truncated: %zu bytes, a safetensors file starts with an 8-byte header length", path, size);
        close(fd);
        return -1;
    }
    uint8_t *map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) { err_set(e, "%s: mmap failed: %s", path, strerror(errno)); return -1; }
    f->path = xstrdup(path);
    f->map = map;
    f->size = size;

    uint64_t hlen;
    memcpy(&hlen, map, 8);  // little-endian host assumed (x86-64, aarch64)
    if (hlen > size - 8 || hlen > ST_MAX_HEADER) {
        err_set(e, "%s: header length %llu runs past the end of the file (%zu bytes) or the 100 MB limit", path,
                (unsigned long long)hlen, size);
        goto fail;
    }
    json_error_t je;
    json_t *root = json_loadb((const char *)map + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (strstr(je.text, "duplicate object key"))
            err_set(e, "%s: duplicate tensor name '%s' in the header", path, key_before(map + 8, je.position));
        else
            err_set(e, "%s: header is not valid JSON (%s at byte %d)", path, je.text, je.position);
        goto fail;
    }
    if (!json_is_object(root)) {
        err_set(e, "%s: header is not a JSON object", path);
        json_decref(root);
        goto fail;
    }
    f->tensors = xcalloc(json_object_size(root), sizeof(StTensor));
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            const char *mk;
            json_t *mv;
            if (!json_is_object(val)) { err_set(e, "%s: __metadata__ is not an object", path); goto fail_json; }
            json_object_foreach(val, mk, mv) if (!json_is_string(mv)) {
                err_set(e, "%s: __metadata__ value '%s' is not a string", path, mk);
                goto fail_json;
            }
            continue;
        }
        StTensor *t = &f->tensors[f->n];
        if (parse_entry(t, path, key, val, e) != 0) goto fail_json;
        t->name = xstrdup(key);
        f->n++;
    }
    json_decref(root);

    // The byte ranges must tile the data buffer: sorted by begin, each starts where the last ended.
    uint64_t data_size = size - 8 - hlen;
    qsort(f->tensors, (size_t)f->n, sizeof(StTensor), cmp_begin);
    uint64_t pos = 0;
    for (int i = 0; i < f->n; i++) {
        StTensor *t = &f->tensors[i];
        if (t->begin < pos) {
            err_set(e, "%s: tensor '%s' (bytes %llu..%llu) overlaps tensor '%s'", path, t->name,
                    (unsigned long long)t->begin, (unsigned long long)t->end, f->tensors[i - 1].name);
            goto fail;
        }
        if (t->begin > pos) {
            err_set(e, "%s: hole of %llu bytes in the data buffer before tensor '%s'", path,
                    (unsigned long long)(t->begin - pos), t->name);
            goto fail;
        }
        if (t->end > data_size) {
            err_set(e, "%s: truncated: tensor '%s' needs bytes %llu..%llu of the data buffer but the file holds %llu",
                    path, t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                    (unsigned long long)data_size);
            goto fail;
        }
        pos = t->end;
        t->data = map + 8 + hlen + t->begin;
        if (strmap_put(&f->index, t->name, i) != 0) {
            err_set(e, "%s: duplicate tensor name '%s'", path, t->name);
            goto fail;
        }
    }
    if (pos != data_size) {
        err_set(e, "%s: %llu trailing bytes after the last tensor", path, (unsigned long long)(data_size - pos));
        goto fail;
    }
    return 0;
fail_json:
    json_decref(root);
fail:
    st_close(f);
    return -1;
}

void st_close(StFile *f) {
    if (f->map) munmap(f->map, f->size);
    for (int i = 0; i < f->n; i++) free(f->tensors[i].name);
    free(f->tensors);
    free(f->path);
    strmap_free(&f->index);
    memset(f, 0, sizeof *f);
}

const StTensor *st_find(const StFile *f, const char *name) {
    int i = strmap_get(&f->index, name);
    return i < 0 ? NULL : &f->tensors[i];
}

void st_release(const StTensor *t) {
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)t->data + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
    uintptr_t hi = ((uintptr_t)t->data + t->nbytes) & ~((uintptr_t)page - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

// ---- writing ----------------------------------------------------------------------------------

typedef struct {
    char *name;
    DType dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t nbytes;
    int shard;
    uint64_t offset;  // absolute file offset of the data
    int written;
} WEntry;

typedef struct {
    char *final, *tmp;
    int fd;
    uint64_t data_bytes;
} WShard;

struct StWriter {
    char *dir, *base;
    uint64_t max_shard;
    WEntry *e;
    int n, cap;
    StrMap index;
    WShard *shards;
    int nshards;
    int opened;
};

StWriter *stw_new(const char *dir, const char *base, uint64_t max_shard_bytes) {
    StWriter *w = xcalloc(1, sizeof *w);
    w->dir = xstrdup(dir);
    w->base = xstrdup(base);
    w->max_shard = max_shard_bytes;
    strmap_init(&w->index);
    return w;
}

int stw_num_shards(const StWriter *w) { return w->nshards; }

StWriter *stw_new_file(const char *path, Err *e) {
    static const char ext[] = ".safetensors";
    size_t n = strlen(path), k = sizeof ext - 1;
    const char *slash = strrchr(path, '/'), *base = slash ? slash + 1 : path;
    if (!str_ends_with(path, ext) || strlen(base) == k) {
        err_set(e, "%s: expected a file name ending in .safetensors", path);
        return NULL;
    }
    char *dir = slash ? xasprintf("%.*s", (int)(slash - path), path) : xstrdup(".");
    char *stem = xasprintf("%.*s", (int)(n - k - (size_t)(base - path)), base);
    StWriter *w = stw_new(dir, stem, 0);
    free(dir);
    free(stem);
    return w;
}

int stw_declare(StWriter *w, const char *name, DType dtype, int ndim, const int64_t *shape, Err *e) {
    if (w->opened) { err_set(e, "%s: tensor '%s' declared after the layout was fixed", w->dir, name); return -1; }
    if (ndim > ST_MAX_DIMS || dtype_size(dtype) == 0) { err_set(e, "%s: bad declaration of '%s'", w->dir, name); return -1; }
    if (strmap_put(&w->index, name, w->n) != 0) { err_set(e, "%s: tensor '%s' declared twice", w->dir, name); return -1; }
    if (w->n == w->cap) w->e = xrealloc(w->e, (size_t)(w->cap = w->cap ? 2 * w->cap : 64) * sizeof(WEntry));
    WEntry *t = &w->e[w->n++];
    memset(t, 0, sizeof *t);
    t->name = xstrdup(name);
    t->dtype = dtype;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof(int64_t));
    t->nbytes = (uint64_t)shape_numel(ndim, shape) * dtype_size(dtype);
    return 0;
}

static int pwrite_all(int fd, const void *buf, uint64_t n, uint64_t off) {
    const uint8_t *p = buf;
    while (n) {
        size_t chunk = n > (1u << 30) ? (1u << 30) : (size_t)n;
        ssize_t r = pwrite(fd, p, chunk, (off_t)off);
        if (r < 0) { if (errno == EINTR) continue; return -1; }
        p += r; n -= (uint64_t)r; off += (uint64_t)r;
    }
    return 0;
}

// Header JSON of one shard, padded with spaces so the data buffer starts 8-byte aligned.
static char *shard_header(StWriter *w, int s, uint64_t *hlen) {
    json_t *root = json_object();
    json_object_set_new(root, "__metadata__", json_pack("{s:s}", "format", "pt"));
    uint64_t pos = 0;
    for (int i = 0; i < w->n; i++) {
        WEntry *t = &w->e[i];
        if (t->shard != s) continue;
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
        json_object_set_new(root, t->name,
                            json_pack("{s:s, s:o, s:[I,I]}", "dtype", dtype_name(t->dtype), "shape", shape,
                                      "data_offsets", (json_int_t)pos, (json_int_t)(pos + t->nbytes)));
        t->offset = pos;  // relative for now; made absolute once the header length is known
        pos += t->nbytes;
    }
    char *js = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    size_t len = strlen(js), padded = (len + 8 + 7) / 8 * 8 - 8;
    js = xrealloc(js, padded + 1);
    memset(js + len, ' ', padded - len);
    js[padded] = 0;
    *hlen = padded;
    return js;
}

int stw_open(StWriter *w, Err *e) {
    // Greedy split in declaration order: a shard closes when the next tensor would overflow it;
    // an oversized tensor gets a shard of its own.
    uint64_t cur = 0;
    int s = 0;
    for (int i = 0; i < w->n; i++) {
        if (w->max_shard && cur > 0 && cur + w->e[i].nbytes > w->max_shard) { s++; cur = 0; }
        w->e[i].shard = s;
        cur += w->e[i].nbytes;
    }
    w->nshards = s + 1;
    w->shards = xcalloc((size_t)w->nshards, sizeof(WShard));
    for (s = 0; s < w->nshards; s++) {
        WShard *sh = &w->shards[s];
        sh->fd = -1;
        sh->final = w->nshards == 1 ? xasprintf("%s/%s.safetensors", w->dir, w->base)
                                    : xasprintf("%s/%s-%05d-of-%05d.safetensors", w->dir, w->base, s + 1, w->nshards);
        sh->tmp = xasprintf("%s.tmp", sh->final);
    }
    w->opened = 1;
    for (s = 0; s < w->nshards; s++) {
        WShard *sh = &w->shards[s];
        uint64_t hlen;
        char *hdr = shard_header(w, s, &hlen);
        uint64_t data = 0;
        for (int i = 0; i < w->n; i++)
            if (w->e[i].shard == s) { w->e[i].offset += 8 + hlen; data += w->e[i].nbytes; }
        sh->data_bytes = data;
        sh->fd = open(sh->tmp, O_RDWR | O_CREAT | O_TRUNC, 0644);
        int ok = sh->fd >= 0;
        uint8_t len8[8];
        memcpy(len8, &hlen, 8);
        ok = ok && pwrite_all(sh->fd, len8, 8, 0) == 0 && pwrite_all(sh->fd, hdr, hlen, 8) == 0 &&
             ftruncate(sh->fd, (off_t)(8 + hlen + data)) == 0;
        free(hdr);
        if (!ok) { err_set(e, "%s: cannot write: %s", sh->tmp, strerror(errno)); return -1; }
    }
    return 0;
}

int stw_write(StWriter *w, const char *name, const void *data, Err *e) {
    int i = strmap_get(&w->index, name);
    if (i < 0 || !w->opened) { err_set(e, "%s: tensor '%s' was not declared", w->dir, name); return -1; }
    WEntry *t = &w->e[i];
    WShard *sh = &w->shards[t->shard];
    if (pwrite_all(sh->fd, data, t->nbytes, t->offset) != 0) {
        err_set(e, "%s: write failed: %s", sh->tmp, strerror(errno));
        return -1;
    }
    t->written = 1;
    return 0;
}

int stw_finish(StWriter *w, Err *e) {
    if (!w->opened && stw_open(w, e) != 0) return -1;
    for (int i = 0; i < w->n; i++)
        if (!w->e[i].written) { err_set(e, "%s: tensor '%s' was declared but never written", w->dir, w->e[i].name); return -1; }
    for (int s = 0; s < w->nshards; s++) {
        WShard *sh = &w->shards[s];
        if (fsync(sh->fd) != 0 || close(sh->fd) != 0) {
            sh->fd = -1;
            err_set(e, "%s: fsync failed: %s", sh->tmp, strerror(errno));
            return -1;
        }
        sh->fd = -1;
        if (rename(sh->tmp, sh->final) != 0) { err_set(e, "%s: rename failed: %s", sh->final, strerror(errno)); return -1; }
        free(sh->tmp);
        sh->tmp = NULL;
    }
    if (w->nshards > 1) {
        uint64_t total = 0;
        json_t *map = json_object();
        for (int i = 0; i < w->n; i++) {
            total += w->e[i].nbytes;
            const char *f = strrchr(w->shards[w->e[i].shard].final, '/') + 1;
            json_object_set_new(map, w->e[i].name, json_string(f));
        }
        json_t *root = json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)total, "weight_map", map);
        char *js = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        json_decref(root);
        char *path = xasprintf("%s/%s.safetensors.index.json", w->dir, w->base);
        char *text = xasprintf("%s\n", js);
        int rc = write_text_file(path, text, e);
        free(js); free(text); free(path);
        if (rc) return -1;
    }
    fsync_dir(w->dir);
    return 0;
}

void stw_free(StWriter *w) {
    if (!w) return;
    for (int s = 0; s < w->nshards; s++) {
        if (w->shards[s].fd >= 0) close(w->shards[s].fd);
        if (w->shards[s].tmp) { unlink(w->shards[s].tmp); free(w->shards[s].tmp); }
        free(w->shards[s].final);
    }
    for (int i = 0; i < w->n; i++) free(w->e[i].name);
    free(w->shards);
    free(w->e);
    free(w->dir);
    free(w->base);
    strmap_free(&w->index);
    free(w);
}
