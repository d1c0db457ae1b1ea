// wds.c: see wds.h.
#include "wds.h"

#include "strmap.h"

#include <errno.h>
#include <fcntl.h>
#include <libtar.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

// ---- libtar I/O over plain files or gzip streams, counting bytes ---------------------------------
// libtar addresses its stream by an int; a small table maps that int to our stream state.

typedef struct {
    int used, fd;
    gzFile gz;         // reading .tar.gz
    uint64_t pos;      // bytes read or written (uncompressed)
} Stream;

#define MAX_STREAMS 256
static Stream streams[MAX_STREAMS];
static pthread_mutex_t streams_lock = PTHREAD_MUTEX_INITIALIZER;

static int stream_new(int fd, gzFile gz) {
    pthread_mutex_lock(&streams_lock);
    int h = -1;
    for (int i = 0; i < MAX_STREAMS && h < 0; i++)
        if (!streams[i].used) { streams[i] = (Stream){1, fd, gz, 0}; h = i; }
    pthread_mutex_unlock(&streams_lock);
    return h;
}

static ssize_t s_read(int h, void *buf, size_t n) {
    Stream *s = &streams[h];
    ssize_t r = s->gz ? gzread(s->gz, buf, (unsigned)n) : read(s->fd, buf, n);
    if (r > 0) s->pos += (uint64_t)r;
    return r;
}
static ssize_t s_write(int h, const void *buf, size_t n) {
    Stream *s = &streams[h];
    size_t done = 0;
    while (done < n) {
        ssize_t r = write(s->fd, (const char *)buf + done, n - done);
        if (r < 0) { if (errno == EINTR) continue; return -1; }
        done += (size_t)r;
    }
    s->pos += n;
    return (ssize_t)n;
}
static int s_close(int h) {
    Stream *s = &streams[h];
    int rc = s->gz ? (gzclose(s->gz) == Z_OK ? 0 : -1) : close(s->fd);
    pthread_mutex_lock(&streams_lock);
    s->used = 0;
    pthread_mutex_unlock(&streams_lock);
    return rc;
}
static int s_open_unused(const char *p, int f, ...) { (void)p; (void)f; return -1; }
static tartype_t stream_type = {s_open_unused, s_close, s_read, s_write};

// ---- names ----------------------------------------------------------------------------------------

int wds_split_name(const char *path, char **key, char **part) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strchr(base, '.');
    if (!dot || dot == base) return -1;
    *key = xasprintf("%.*s", (int)(dot - path), path);
    *part = xstrdup(dot + 1);
    return 0;
}

static int is_dunder(const char *path) {  // __[^/]*__ anywhere in the basename
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t n = strlen(base);
    return n >= 4 && !strncmp(base, "__", 2) && !strcmp(base + n - 2, "__");
}

void wds_sample_free(WdsSample *s) {
    for (int i = 0; i < s->n; i++) { free(s->m[i].name); free(s->m[i].data); }
    free(s->m);
    free(s->key);
    memset(s, 0, sizeof *s);
}

const WdsMember *wds_member(const WdsSample *s, const char *part) {
    for (int i = 0; i < s->n; i++) if (!strcmp(s->m[i].name, part)) return &s->m[i];
    return NULL;
}

// ---- reading ---------------------------------------------------------------------------------------

struct WdsReader {
    char *path;
    TAR *t;
    int h;
    int done;
    // one member read ahead: the first member of the next sample
    int have_pending;
    char *pend_key;
    WdsMember pend;
    uint64_t pend_offset;
    StrMap seen;  // keys already finished: a repeat later in the shard is an error
};

WdsReader *wds_open(const char *path, Err *e) { return wds_open_at(path, 0, e); }

WdsReader *wds_open_at(const char *path, uint64_t offset, Err *e) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) { err_set(e, "%s: cannot open: %s", path, strerror(errno)); return NULL; }
    uint8_t magic[2] = {0, 0};
    ssize_t m = pread(fd, magic, 2, 0);
    gzFile gz = NULL;
    if (offset) {
        if (m == 2 && magic[0] == 0x1f && magic[1] == 0x8b) { close(fd); err_set(e, "%s: cannot seek in a gzip shard", path); return NULL; }
        if (lseek(fd, (off_t)offset, SEEK_SET) != (off_t)offset) { close(fd); err_set(e, "%s: cannot seek to byte %llu", path, (unsigned long long)offset); return NULL; }
    }
    if (m == 2 && magic[0] == 0x1f && magic[1] == 0x8b) {
        gz = gzdopen(fd, "rb");
        if (!gz) { close(fd); err_set(e, "%s: cannot open gzip stream", path); return NULL; }
    }
    int h = stream_new(fd, gz);
    if (h < 0) { if (gz) gzclose(gz); else close(fd); err_set(e, "%s: too many open shards", path); return NULL; }
    streams[h].pos = offset;
    WdsReader *r = xcalloc(1, sizeof *r);
    r->path = xstrdup(path);
    r->h = h;
    strmap_init(&r->seen);
    if (tar_fdopen(&r->t, h, (char *)path, &stream_type, O_RDONLY, 0, TAR_GNU) != 0) {
        err_set(e, "%s: cannot read as tar", path);
        s_close(h);
        free(r->path);
        free(r);
        return NULL;
    }
    return r;
}

void wds_close(WdsReader *r) {
    if (!r) return;
    tar_close(r->t);  // closes the stream through s_close
    free(r->pend_key);
    free(r->pend.name);
    free(r->pend.data);
    strmap_free(&r->seen);
    free(r->path);
    free(r);
}

// Reads the next regular member: 1 ok, 0 end, -1 damage.
static int next_member(WdsReader *r, char **path, uint8_t **data, size_t *size, uint64_t *offset, Err *e) {
    char *pax_path = NULL;
    for (;;) {
        uint64_t at = streams[r->h].pos;
        int rc = th_read(r->t);
        if (rc == 1) { free(pax_path); return 0; }
        if (rc != 0) {
            err_set(e, "%s: damaged tar header at byte %llu", r->path, (unsigned long long)at);
            free(pax_path);
            return -1;
        }
        size_t n = th_get_size(r->t);
        uint8_t *buf = xmalloc(n + T_BLOCKSIZE);
        for (size_t off = 0; off < n; off += T_BLOCKSIZE) {
            if (tar_block_read(r->t, buf + off) != T_BLOCKSIZE) {
                err_set(e, "%s: truncated: member at byte %llu needs %zu bytes of data", r->path, (unsigned long long)at, n);
                free(buf);
                free(pax_path);
                return -1;
            }
        }
        char type = r->t->th_buf.typeflag;
        if (type == 'x') {  // pax extended header: only "path" matters here
            free(pax_path);
            pax_path = NULL;
            for (size_t p = 0; p < n;) {
                char *end;
                long len = strtol((char *)buf + p, &end, 10);
                if (len <= 0 || p + (size_t)len > n) break;
                if (!strncmp(end, " path=", 6)) pax_path = xasprintf("%.*s", (int)(buf + p + len - 1 - (uint8_t *)end - 6), end + 6);
                p += (size_t)len;
            }
            free(buf);
            continue;
        }
        if (!(type == '0' || type == '\0' || type == '7')) { free(buf); continue; }  // directories, links, 'g'
        char *name = pax_path ? pax_path : th_get_pathname(r->t);
        if (!pax_path && name) name = xstrdup(name);  // libtar's buffer is reused by the next th_read
        *path = name;
        *data = buf;
        *size = n;
        *offset = at;
        return 1;
    }
}

// The next member with its key and part: the one held back by the previous call, or a new one
// from the tar. 1 ok, 0 end, -1 damage.
static int next_keyed(WdsReader *r, char **key, WdsMember *m, uint64_t *off, Err *e) {
    if (r->have_pending) {
        r->have_pending = 0;
        *key = r->pend_key;
        *m = r->pend;
        *off = r->pend_offset;
        r->pend_key = NULL;
        memset(&r->pend, 0, sizeof r->pend);
        return 1;
    }
    for (;;) {
        char *path;
        int rc = next_member(r, &path, &m->data, &m->size, off, e);
        if (rc <= 0) return rc;
        if (is_dunder(path)) { free(path); free(m->data); continue; }
        rc = wds_split_name(path, key, &m->name);
        if (rc) err_set(e, "%s: member '%s' at byte %llu has no extension, so it belongs to no sample", r->path, path,
                        (unsigned long long)*off);
        free(path);
        if (rc) { free(m->data); return -1; }
        return 1;
    }
}

int wds_next(WdsReader *r, WdsSample *s, Err *e) {
    memset(s, 0, sizeof *s);
    while (!r->done) {
        char *key;
        WdsMember m;
        uint64_t off;
        int rc = next_keyed(r, &key, &m, &off, e);
        if (rc <= 0) {
            r->done = 1;
            if (rc < 0) { wds_sample_free(s); return -1; }
            break;
        }
        if (s->n && strcmp(key, s->key)) {  // first member of the next sample: hold it for the next call
            r->have_pending = 1;
            r->pend_key = key;
            r->pend = m;
            r->pend_offset = off;
            break;
        }
        if (s->n == 0) {
            if (strmap_get(&r->seen, key) >= 0) {
                err_set(e, "%s: sample key '%s' at byte %llu repeats an earlier sample (members must be consecutive)",
                        r->path, key, (unsigned long long)off);
                free(key); free(m.name); free(m.data);
                r->done = 1;
                return -1;
            }
            s->key = key;
            s->offset = off;
        } else {
            free(key);
        }
        s->m = xrealloc(s->m, (size_t)(s->n + 1) * sizeof(WdsMember));
        s->m[s->n++] = m;
    }
    if (s->n == 0) return 0;
    strmap_put(&r->seen, s->key, 1);
    return 1;
}

// ---- writing ---------------------------------------------------------------------------------------

// Resets the header buffer; th_set_path keeps a strdup'd GNU long name in it that is ours to free.
static void clear_header(TAR *t) {
    free(t->th_buf.gnu_longname);
    free(t->th_buf.gnu_longlink);
    memset(&t->th_buf, 0, sizeof t->th_buf);
}

struct WdsWriter {
    char *path, *tmp;
    TAR *t;
    int h;
    uint64_t *offsets;
    int64_t n, cap;
};

WdsWriter *wds_create(const char *path, Err *e) {
    WdsWriter *w = xcalloc(1, sizeof *w);
    w->path = xstrdup(path);
    w->tmp = xasprintf("%s.tmp", path);
    int fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { err_set(e, "%s: cannot create: %s", w->tmp, strerror(errno)); goto fail; }
    w->h = stream_new(fd, NULL);
    if (w->h < 0) { close(fd); err_set(e, "%s: too many open shards", path); goto fail; }
    if (tar_fdopen(&w->t, w->h, w->tmp, &stream_type, O_WRONLY, 0644, TAR_GNU) != 0) {
        s_close(w->h);
        err_set(e, "%s: cannot write tar", path);
        goto fail;
    }
    return w;
fail:
    unlink(w->tmp);
    free(w->tmp);
    free(w->path);
    free(w);
    return NULL;
}

int64_t wds_count(const WdsWriter *w) { return w->n; }

int wds_write(WdsWriter *w, const char *key, const WdsMember *m, int n, Err *e) {
    if (strchr(strrchr(key, '/') ? strrchr(key, '/') + 1 : key, '.')) {
        err_set(e, "%s: sample key '%s' contains a dot (Energon would split it)", w->path, key);
        return -1;
    }
    if (w->n + 1 >= w->cap) w->offsets = xrealloc(w->offsets, (size_t)(w->cap = w->cap ? 2 * w->cap : 1024) * sizeof(uint64_t));
    w->offsets[w->n++] = streams[w->h].pos;
    uint8_t block[T_BLOCKSIZE];
    for (int i = 0; i < n; i++) {
        char *name = xasprintf("%s.%s", key, m[i].name);
        clear_header(w->t);
        th_set_type(w->t, S_IFREG | 0644);
        th_set_path(w->t, name);
        th_set_mode(w->t, S_IFREG | 0644);
        int_to_oct(0, w->t->th_buf.uid, 8);
        int_to_oct(0, w->t->th_buf.gid, 8);
        th_set_mtime(w->t, 0);
        th_set_size(w->t, m[i].size);
        th_finish(w->t);
        free(name);
        if (th_write(w->t) != 0) { err_set(e, "%s: write failed: %s", w->tmp, strerror(errno)); return -1; }
        for (size_t off = 0; off < m[i].size; off += T_BLOCKSIZE) {
            size_t k = m[i].size - off < T_BLOCKSIZE ? m[i].size - off : T_BLOCKSIZE;
            memset(block, 0, sizeof block);
            memcpy(block, m[i].data + off, k);
            if (tar_block_write(w->t, block) != T_BLOCKSIZE) { err_set(e, "%s: write failed", w->tmp); return -1; }
        }
    }
    return 0;
}

int wds_finish(WdsWriter *w, Err *e) {
    int rc = 0;
    if (tar_append_eof(w->t) != 0) { err_set(e, "%s: write failed", w->tmp); rc = -1; }
    w->offsets[w->n] = streams[w->h].pos - 2 * T_BLOCKSIZE;  // end = after the last member, before the EOF blocks
    if (!rc && fsync(streams[w->h].fd) != 0) { err_set(e, "%s: fsync failed", w->tmp); rc = -1; }
    clear_header(w->t);
    if (tar_close(w->t) != 0 && !rc) { err_set(e, "%s: close failed", w->tmp); rc = -1; }
    if (!rc && rename(w->tmp, w->path) != 0) { err_set(e, "%s: rename failed", w->path); rc = -1; }
    if (!rc) {  // .tar.idx: little-endian uint64 offsets, count + 1 entries
        char *idx = xasprintf("%s.idx", w->path), *itmp = xasprintf("%s.idx.tmp", w->path);
        FILE *f = fopen(itmp, "wb");
        rc = f && fwrite(w->offsets, sizeof(uint64_t), (size_t)w->n + 1, f) == (size_t)w->n + 1 ? 0 : -1;
        if (f && fclose(f) != 0) rc = -1;
        if (!rc && rename(itmp, idx) != 0) rc = -1;
        if (rc) { err_set(e, "%s: cannot write", idx); unlink(itmp); }
        free(idx);
        free(itmp);
    } else {
        unlink(w->tmp);
    }
    free(w->offsets);
    free(w->tmp);
    free(w->path);
    free(w);
    return rc;
}

void wds_abort(WdsWriter *w) {
    if (!w) return;
    clear_header(w->t);
    tar_close(w->t);
    unlink(w->tmp);
    free(w->offsets);
    free(w->tmp);
    free(w->path);
    free(w);
}

// ---- .nv-meta ----------------------------------------------------------------------------------------

int wds_write_meta(const char *dir, char *const *shards, const int64_t *counts, int n, const char *sample_type, Err *e) {
    char *meta = path_join(dir, ".nv-meta");
    if (mkdir_p(meta)) { err_set(e, "%s: cannot create", meta); free(meta); return -1; }
    char *ds = xasprintf("sample_type:\n  __module__: megatron.energon\n  __class__: %s\n", sample_type);
    size_t cap = 256;
    for (int i = 0; i < n; i++) cap += strlen(shards[i]) + 64;
    char *split = xmalloc(cap), *info = xmalloc(cap);
    size_t a = (size_t)sprintf(split, "exclude: []\nsplit_parts:\n  train:\n");
    size_t b = (size_t)sprintf(info, "{\"energon_version\": \"7.1.0\", \"shard_counts\": {");
    for (int i = 0; i < n; i++) {
        a += (size_t)sprintf(split + a, "  - %s\n", shards[i]);
        b += (size_t)sprintf(info + b, "%s\"%s\": %lld", i ? ", " : "", shards[i], (long long)counts[i]);
    }
    sprintf(split + a, "  val: []\n  test: []\n");
    sprintf(info + b, "}}\n");
    char *p1 = path_join(meta, "dataset.yaml"), *p2 = path_join(meta, "split.yaml"), *p3 = path_join(meta, ".info.json");
    int rc = write_text_file(p1, ds, e) || write_text_file(p2, split, e) || write_text_file(p3, info, e) ? -1 : 0;
    free(p1); free(p2); free(p3); free(ds); free(split); free(info); free(meta);
    return rc;
}

int64_t wds_index(const char *path, uint64_t **offsets, Err *e) {
    char *idx = xasprintf("%s.idx", path);
    size_t len;
    Err ignore;
    char *raw = path_exists(idx) ? read_text_file(idx, &len, &ignore) : NULL;
    free(idx);
    if (raw && len >= 8 && len % 8 == 0) {
        *offsets = xmalloc(len);
        memcpy(*offsets, raw, len);
        free(raw);
        return (int64_t)(len / 8) - 1;
    }
    free(raw);
    WdsReader *r = wds_open(path, e);
    if (!r) return -1;
    int64_t n = 0, cap = 64;
    uint64_t *o = xmalloc((size_t)cap * sizeof(uint64_t));
    WdsSample s;
    int rc;
    while ((rc = wds_next(r, &s, e)) == 1) {
        if (n + 1 >= cap) o = xrealloc(o, (size_t)(cap *= 2) * sizeof(uint64_t));
        o[n++] = s.offset;
        wds_sample_free(&s);
    }
    o[n] = streams[r->h].pos;
    wds_close(r);
    if (rc < 0) { free(o); return -1; }
    *offsets = o;
    return n;
}
