// loader.c: see loader.h.
#include "loader.h"

#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "rng.h"
#include "wds.h"

typedef struct { int shard; uint64_t offset; } Ref;

typedef struct {
    int64_t pos;
    int state;  // 0 empty, 1 taken by a worker, 2 ready
    int rc;
    Batch b;
    Err e;
} Slot;

struct Loader {
    LoaderOptions o;
    Ref *refs;
    int64_t n, per_rank;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t *threads;
    Slot *slots;
    int nslots;
    int64_t next_job, next_out;
    int stop;
    // permutation cache: one epoch at a time per caller, computed under the lock
    int64_t perm_epoch;
    int64_t *perm;
};

void batch_free(Batch *b) {
    free(b->ids); free(b->labels); free(b->cu_seqlens); free(b->pixels); free(b->grid_thw);
    memset(b, 0, sizeof *b);
}

// Fisher-Yates over 0..n-1 from (seed, epoch): the same order on every rank and every run.
static void permute(int64_t *p, int64_t n, uint64_t seed, int64_t epoch) {
    uint64_t st = seed * 0x9e3779b97f4a7c15ull ^ (uint64_t)epoch * 0xbf58476d1ce4e5b9ull;
    for (int64_t i = 0; i < n; i++) p[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(splitmix64(&st) % (uint64_t)(i + 1));
        int64_t t = p[i]; p[i] = p[j]; p[j] = t;
    }
}

// Sample behind a rank position (called with the lock held).
static Ref ref_at(Loader *l, int64_t pos) {
    int64_t epoch = pos / l->per_rank, k = pos % l->per_rank;
    if (epoch != l->perm_epoch) { permute(l->perm, l->n, l->o.seed, epoch); l->perm_epoch = epoch; }
    return l->refs[l->perm[k * l->o.world + l->o.rank]];
}

static const WdsMember *member_or_fail(const WdsSample *s, const char *part, const char *shard, Err *e) {
    const WdsMember *m = wds_member(s, part);
    if (!m) err_set(e, "%s: packed sample '%s' lacks its '%s' member", shard, s->key, part);
    return m;
}

static int32_t *copy_i32(const WdsMember *m, int *n) {
    *n = (int)(m->size / 4);
    int32_t *v = xmalloc(m->size + 4);
    memcpy(v, m->data, m->size);
    return v;
}

// Reads and prepares one packed sequence.
static int build(Loader *l, Ref r, int64_t pos, Batch *b, Err *e) {
    memset(b, 0, sizeof *b);
    b->position = pos;
    const char *shard = l->o.shards[r.shard];
    WdsReader *rd = wds_open_at(shard, r.offset, e);
    if (!rd) return -1;
    WdsSample s;
    int rc = wds_next(rd, &s, e);
    wds_close(rd);
    if (rc != 1) { if (rc == 0) err_set(e, "%s: no sample at byte %llu", shard, (unsigned long long)r.offset); return -1; }
    snprintf(b->key, sizeof b->key, "%s", s.key);
    const WdsMember *ids = member_or_fail(&s, "ids.i32", shard, e), *lab = ids ? member_or_fail(&s, "labels.i32", shard, e) : NULL,
                    *cu = lab ? member_or_fail(&s, "cu_seqlens.i32", shard, e) : NULL, *js = cu ? member_or_fail(&s, "json", shard, e) : NULL;
    json_t *meta = js ? json_loadb((const char *)js->data, js->size, 0, NULL) : NULL;
    if (!meta) {
        if (js) err_set(e, "%s: packed sample '%s': json member is not valid JSON", shard, s.key);
        wds_sample_free(&s);
        return -1;
    }
    int nl, ncu;
    b->ids = copy_i32(ids, &b->n);
    b->labels = copy_i32(lab, &nl);
    b->cu_seqlens = copy_i32(cu, &ncu);
    b->nseq = ncu - 1;
    json_t *images = json_object_get(meta, "images");
    b->nimg = (int)json_array_size(images);
    b->grid_thw = xcalloc((size_t)b->nimg * 3 + 1, sizeof(int32_t));
    int64_t rows = 0;
    size_t i;
    json_t *im;
    json_array_foreach(images, i, im) {
        int h = (int)json_integer_value(json_object_get(im, "height")), w = (int)json_integer_value(json_object_get(im, "width"));
        b->grid_thw[3 * i] = 1;
        b->grid_thw[3 * i + 1] = h / IMG_PATCH;
        b->grid_thw[3 * i + 2] = w / IMG_PATCH;
        rows += (int64_t)(h / IMG_PATCH) * (w / IMG_PATCH);
    }
    b->rows = rows;
    b->pixels = xmalloc((size_t)rows * IMG_PATCH_DIM * sizeof(float) + 4);
    int64_t at = 0;
    rc = 0;
    json_array_foreach(images, i, im) {
        const char *name = json_string_value(json_object_get(im, "member"));
        const WdsMember *m = name ? wds_member(&s, name) : NULL;
        int h = b->grid_thw[3 * i + 1] * IMG_PATCH, w = b->grid_thw[3 * i + 2] * IMG_PATCH;
        Image img, rs;
        if (!m || nl != b->n || h % IMG_FACTOR || w % IMG_FACTOR || h <= 0 || w <= 0) {
            err_set(e, "%s: packed sample '%s': image %zu is missing or has a size that is not a multiple of 28", shard, s.key, i);
            rc = -1;
            break;
        }
        if (image_decode(m->data, m->size, name, &img, e)) { rc = -1; break; }
        if (img.w == w && img.h == h) rs = img;
        else { image_resize_bicubic(&img, w, h, &rs); image_free(&img); }
        image_to_patches(&rs, b->pixels + (size_t)at * IMG_PATCH_DIM);
        image_free(&rs);
        at += (int64_t)(h / IMG_PATCH) * (w / IMG_PATCH);
    }
    json_decref(meta);
    wds_sample_free(&s);
    if (rc) batch_free(b);
    return rc;
}

static void *worker(void *arg) {
    Loader *l = arg;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->stop && l->next_job - l->next_out >= l->nslots) pthread_cond_wait(&l->cv, &l->mu);
        if (l->stop) break;
        int64_t pos = l->next_job++;
        Slot *s = &l->slots[pos % l->nslots];
        s->pos = pos;
        s->state = 1;
        Ref r = ref_at(l, pos);
        pthread_mutex_unlock(&l->mu);
        Batch b;
        Err e;
        int rc = build(l, r, pos, &b, &e);
        pthread_mutex_lock(&l->mu);
        s->b = b;
        s->rc = rc;
        s->e = e;
        s->state = 2;
        pthread_cond_broadcast(&l->cv);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

Loader *loader_open(const LoaderOptions *o, Err *e) {
    if (o->world < 1 || o->rank < 0 || o->rank >= o->world || o->nshards < 1) {
        err_set(e, "loader: bad rank %d / world %d or no shards", o->rank, o->world);
        return NULL;
    }
    Loader *l = xcalloc(1, sizeof *l);
    l->o = *o;
    for (int s = 0; s < o->nshards; s++) {
        uint64_t *off;
        int64_t k = wds_index(o->shards[s], &off, e);
        if (k < 0) { free(l->refs); free(l); return NULL; }
        l->refs = xrealloc(l->refs, (size_t)(l->n + k + 1) * sizeof(Ref));
        for (int64_t i = 0; i < k; i++) l->refs[l->n + i] = (Ref){s, off[i]};
        l->n += k;
        free(off);
    }
    l->per_rank = l->n / o->world;
    if (l->per_rank == 0) {
        err_set(e, "loader: %lld packed sequences cannot feed %d ranks", (long long)l->n, o->world);
        free(l->refs);
        free(l);
        return NULL;
    }
    l->perm = xmalloc((size_t)l->n * sizeof(int64_t));
    l->perm_epoch = -1;
    l->next_job = l->next_out = o->start;
    l->nslots = o->prefetch > 0 ? o->prefetch : 2 * (o->workers > 0 ? o->workers : 1);
    l->slots = xcalloc((size_t)l->nslots, sizeof(Slot));
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    int nw = o->workers > 0 ? o->workers : 1;
    l->threads = xcalloc((size_t)nw, sizeof(pthread_t));
    for (int i = 0; i < nw; i++) pthread_create(&l->threads[i], NULL, worker, l);
    return l;
}

int loader_next(Loader *l, Batch *b, Err *e) {
    pthread_mutex_lock(&l->mu);
    Slot *s = &l->slots[l->next_out % l->nslots];
    while (!(s->state == 2 && s->pos == l->next_out)) pthread_cond_wait(&l->cv, &l->mu);
    int rc = s->rc;
    *b = s->b;
    if (rc) *e = s->e;
    memset(&s->b, 0, sizeof s->b);
    s->state = 0;
    l->next_out++;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    return rc;
}

int64_t loader_cursor(const Loader *l) { return l->next_out; }
int64_t loader_epoch_size(const Loader *l) { return l->per_rank; }

void loader_close(Loader *l) {
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    l->stop = 1;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    int nw = l->o.workers > 0 ? l->o.workers : 1;
    for (int i = 0; i < nw; i++) pthread_join(l->threads[i], NULL);
    for (int i = 0; i < l->nslots; i++) batch_free(&l->slots[i].b);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
    free(l->threads);
    free(l->slots);
    free(l->perm);
    free(l->refs);
    free(l);
}
