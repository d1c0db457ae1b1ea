// pack.c: see pack.h.
#include "pack.h"

#include <jansson.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "config.h"
#include "image.h"
#include "tokenizer.h"
#include "wds.h"

enum { R_OK, R_MISSING_IMAGE, R_BAD_IMAGE, R_BAD_JSON, R_EMPTY, R_MISMATCH, R_OVER_LENGTH, R_NO_TEXT, R_COUNT };
static const char *REASONS[R_COUNT] = {"ok", "missing_image", "bad_image_header", "malformed_json", "empty_conversation",
                                       "image_placeholder_mismatch", "over_length", "no_text_member"};

typedef struct {
    WdsSample raw;
    int reason;
    IntVec ids, labels;
    int nimg;
    const WdsMember **img;  // into raw, in image order
    int *h, *w;             // resized sizes
} Item;

static int is_image_part(const char *part) {
    const char *dot = strrchr(part, '.');
    const char *ext = dot ? dot + 1 : part;
    return !strcmp(ext, "jpg") || !strcmp(ext, "jpeg") || !strcmp(ext, "png") || !strcmp(ext, "webp");
}

static ChatPolicy policy_of(const char *name) { return chat_policy_from_name(name); }

// Renders one raw sample into ids and labels, or sets the reason it is dropped.
static void process(Tokenizer *t, const PackOptions *o, Item *it) {
    const WdsSample *s = &it->raw;
    const WdsMember *js = wds_member(s, "json"), *txt = wds_member(s, "txt");
    json_t *j = NULL;
    ChatSample cs;
    memset(&cs, 0, sizeof cs);
    ChatPolicy pol = policy_of(o->policy);
    it->img = xcalloc((size_t)s->n + 1, sizeof *it->img);
    if (js) {
        j = json_loadb((const char *)js->data, js->size, 0, NULL);
        if (!json_is_object(j)) { it->reason = R_BAD_JSON; goto done; }
        json_t *texts = json_object_get(j, "texts");
        if (texts) {  // MultiMixQA: messages in "texts", images named in "name"
            json_t *conv = json_pack("{s:O}", "messages", texts);
            Err e;
            int rc = chat_parse(conv, &cs, &e);
            json_decref(conv);
            if (rc) { it->reason = strstr(e.msg, "empty") || strstr(e.msg, "no assistant") ? R_EMPTY : R_BAD_JSON; goto done; }
            size_t i;
            json_t *nm;
            json_array_foreach(json_object_get(j, "name"), i, nm) {
                const WdsMember *m = json_is_string(nm) ? wds_member(s, json_string_value(nm)) : NULL;
                if (!m) { it->reason = R_MISSING_IMAGE; goto done; }
                it->img[it->nimg++] = m;
            }
            if (pol == CHAT_AUTO) pol = CHAT_MULTITURN;
        } else {      // LLaVA conversations / messages; images are the image members in order
            Err e;
            if (chat_parse(j, &cs, &e)) { it->reason = strstr(e.msg, "empty") || strstr(e.msg, "no assistant") ? R_EMPTY : R_BAD_JSON; goto done; }
            for (int i = 0; i < s->n; i++) if (is_image_part(s->m[i].name)) it->img[it->nimg++] = &s->m[i];
            if (pol == CHAT_AUTO) pol = json_object_get(j, "conversations") ? CHAT_VQA : CHAT_MULTITURN;
            if (json_object_get(j, "image") && it->nimg == 0) { it->reason = R_MISSING_IMAGE; goto done; }
        }
    } else if (txt) {  // caption pair: image + txt
        json_t *conv = json_pack("{s:[{s:s, s:s}, {s:s, s:s%}]}", "messages", "role", "user", "content", "<image>", "role",
                                 "assistant", "content", (const char *)txt->data, txt->size);
        Err e;
        int rc = conv ? chat_parse(conv, &cs, &e) : -1;
        json_decref(conv);
        if (rc) { it->reason = R_BAD_JSON; goto done; }
        for (int i = 0; i < s->n; i++) if (is_image_part(s->m[i].name)) it->img[it->nimg++] = &s->m[i];
        if (it->nimg == 0) { it->reason = R_MISSING_IMAGE; goto done; }
        if (pol == CHAT_AUTO) pol = CHAT_CAPTION;
    } else {
        it->reason = R_NO_TEXT;
        goto done;
    }
    it->h = xcalloc((size_t)it->nimg + 1, sizeof(int));
    it->w = xcalloc((size_t)it->nimg + 1, sizeof(int));
    int *counts = xcalloc((size_t)it->nimg + 1, sizeof(int));
    for (int i = 0; i < it->nimg; i++) {
        int w, h;
        Err e;
        if (image_probe(it->img[i]->data, it->img[i]->size, it->img[i]->name, &w, &h, &e) ||
            smart_resize(h, w, o->min_pixels, o->max_pixels, &it->h[i], &it->w[i], it->img[i]->name, &e)) {
            it->reason = R_BAD_IMAGE;
            free(counts);
            goto done;
        }
        counts[i] = image_llm_tokens(it->h[i], it->w[i]);
    }
    if (chat_count_images(&cs) != it->nimg) { it->reason = R_MISMATCH; free(counts); goto done; }
    ChatOptions co = {.policy = pol, .min_pixels = o->min_pixels, .max_pixels = o->max_pixels};
    Err e;
    if (chat_encode(t, &cs, &co, counts, it->nimg, &it->ids, &it->labels, &e)) it->reason = R_BAD_JSON;
    else if ((int64_t)it->ids.n > o->max_len) it->reason = R_OVER_LENGTH;
    free(counts);
done:
    chat_free(&cs);
    json_decref(j);
}

// ---- best-fit decreasing -------------------------------------------------------------------------
// Bins are looked up by remaining capacity through a Fenwick tree of counts per capacity value, so
// the tightest bin that still fits is found in O(log max_len).

typedef struct { int64_t *tree; int n; } Fenwick;
static void fw_add(Fenwick *f, int i, int64_t v) { for (i++; i <= f->n; i += i & -i) f->tree[i] += v; }
static int64_t fw_sum(const Fenwick *f, int i) { int64_t s = 0; for (i++; i > 0; i -= i & -i) s += f->tree[i]; return s; }
static int fw_find(const Fenwick *f, int64_t k) {  // smallest i with sum(0..i) >= k
    int pos = 0, step = 1;
    while (step * 2 <= f->n) step *= 2;
    for (; step; step /= 2)
        if (pos + step <= f->n && f->tree[pos + step] < k) { pos += step; k -= f->tree[pos]; }
    return pos;  // 0-based index
}

typedef struct { int *items; int n, cap, used; } Bin;

static const Item *sort_base;
static int by_len_desc(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    size_t lx = sort_base[x].ids.n, ly = sort_base[y].ids.n;
    if (lx != ly) return lx > ly ? -1 : 1;
    return x - y;
}

static int pack_bins(const Item *items, int n, int max_len, Bin **out) {
    int *order = xmalloc((size_t)(n + 1) * sizeof(int)), m = 0;
    for (int i = 0; i < n; i++) if (items[i].reason == R_OK) order[m++] = i;
    sort_base = items;
    qsort(order, (size_t)m, sizeof(int), by_len_desc);
    Fenwick f = {xcalloc((size_t)max_len + 2, sizeof(int64_t)), max_len + 1};
    int **by_cap = xcalloc((size_t)max_len + 1, sizeof(int *));  // stacks of bin ids per remaining capacity
    int *by_cap_n = xcalloc((size_t)max_len + 1, sizeof(int)), *by_cap_c = xcalloc((size_t)max_len + 1, sizeof(int));
    Bin *bins = NULL;
    int nb = 0, cb = 0;
    for (int k = 0; k < m; k++) {
        int it = order[k], len = (int)items[it].ids.n, b;
        int64_t before = len > 0 ? fw_sum(&f, len - 1) : 0;
        if (fw_sum(&f, max_len) > before) {  // a bin with remaining capacity >= len exists
            int cap = fw_find(&f, before + 1);
            b = by_cap[cap][--by_cap_n[cap]];
            fw_add(&f, cap, -1);
        } else {
            if (nb == cb) bins = xrealloc(bins, (size_t)(cb = cb ? 2 * cb : 256) * sizeof(Bin));
            bins[nb] = (Bin){NULL, 0, 0, 0};
            b = nb++;
        }
        Bin *bn = &bins[b];
        if (bn->n == bn->cap) bn->items = xrealloc(bn->items, (size_t)(bn->cap = bn->cap ? 2 * bn->cap : 8) * sizeof(int));
        bn->items[bn->n++] = it;
        bn->used += len;
        int rem = max_len - bn->used;
        if (by_cap_n[rem] == by_cap_c[rem]) by_cap[rem] = xrealloc(by_cap[rem], (size_t)(by_cap_c[rem] = by_cap_c[rem] ? 2 * by_cap_c[rem] : 4) * sizeof(int));
        by_cap[rem][by_cap_n[rem]++] = b;
        fw_add(&f, rem, 1);
    }
    for (int c = 0; c <= max_len; c++) free(by_cap[c]);
    free(by_cap); free(by_cap_n); free(by_cap_c); free(f.tree); free(order);
    *out = bins;
    return nb;
}

// ---- output -------------------------------------------------------------------------------------

static void write_sequence(WdsWriter *w, const char *key, const Item *items, const Bin *b, Err *e, int *rc) {
    IntVec ids = {0}, labels = {0}, cu = {0};
    intvec_push(&cu, 0);
    int nimg = 0;
    for (int k = 0; k < b->n; k++) nimg += items[b->items[k]].nimg;
    WdsMember *m = xcalloc((size_t)nimg + 4, sizeof(WdsMember));
    json_t *samples = json_array(), *images = json_array();
    int mi = 4;
    for (int k = 0; k < b->n; k++) {
        const Item *it = &items[b->items[k]];
        for (size_t i = 0; i < it->ids.n; i++) { intvec_push(&ids, it->ids.v[i]); intvec_push(&labels, it->labels.v[i]); }
        intvec_push(&cu, (int)ids.n);
        json_array_append_new(samples, json_string(it->raw.key));
        for (int i = 0; i < it->nimg; i++) {
            const char *dot = strrchr(it->img[i]->name, '.');
            char *name = xasprintf("img%d.%s", mi - 4, dot ? dot + 1 : "jpg");
            json_array_append_new(images, json_pack("{s:s, s:i, s:i}", "member", name, "height", it->h[i], "width", it->w[i]));
            m[mi++] = (WdsMember){name, it->img[i]->data, it->img[i]->size};
        }
    }
    json_t *mj = json_pack("{s:o, s:o}", "samples", samples, "images", images);
    char *meta = json_dumps(mj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(mj);
    m[0] = (WdsMember){"ids.i32", (uint8_t *)ids.v, ids.n * 4};
    m[1] = (WdsMember){"labels.i32", (uint8_t *)labels.v, labels.n * 4};
    m[2] = (WdsMember){"cu_seqlens.i32", (uint8_t *)cu.v, cu.n * 4};
    m[3] = (WdsMember){"json", (uint8_t *)meta, strlen(meta)};
    if (!*rc && wds_write(w, key, m, mi, e)) *rc = -1;
    for (int i = 4; i < mi; i++) free(m[i].name);
    free(m);
    free(meta);
    intvec_free(&ids);
    intvec_free(&labels);
    intvec_free(&cu);
}

int pack_run(const PackOptions *o) {
    double t0 = now_seconds();
    Err e;
    if (o->max_len < 16 || o->max_len > (1 << 24)) die_input("--max-len: expected 16 to 16777216");
    if (o->num_shards < 1 || o->shard_index < 0 || o->shard_index >= o->num_shards)
        die_input("--shard-index %d / --num-shards %d: expected 0 <= index < count", o->shard_index, o->num_shards);
    if (policy_of(o->policy) == CHAT_INVALID) die_input("--policy: expected auto, caption, vqa or multiturn");
    Tokenizer *probe = tok_load(o->tokenizer, &e);
    if (!probe) die_input("%s", e.msg);
    tok_free(probe);
    if (mkdir_p(o->out)) die_input("%s: cannot create directory", o->out);

    // Read this slice's samples; a damaged shard stops the reading there.
    Item *items = NULL;
    int n = 0, cap = 0;
    int64_t global = 0, samples_in = 0;
    char damage[sizeof e.msg] = "";
    for (int f = 0; f < o->ninputs && !damage[0]; f++) {
        WdsReader *r = wds_open(o->inputs[f], &e);
        if (!r) die_input("%s", e.msg);
        WdsSample s;
        int rc;
        while ((rc = wds_next(r, &s, &e)) == 1) {
            if (global++ % o->num_shards != o->shard_index) { wds_sample_free(&s); continue; }
            if (n == cap) items = xrealloc(items, (size_t)(cap = cap ? 2 * cap : 1024) * sizeof(Item));
            memset(&items[n], 0, sizeof(Item));
            items[n++].raw = s;
        }
        if (rc < 0) snprintf(damage, sizeof damage, "%s", e.msg);
        wds_close(r);
    }
    samples_in = n;

    // Render and measure, one tokenizer per thread; results land by index, so any thread count
    // gives the same bytes.
    int threads = o->threads > 0 ? o->threads : 1;
#pragma omp parallel num_threads(threads)
    {
        Err te;
        Tokenizer *t = tok_load(o->tokenizer, &te);
#pragma omp for schedule(dynamic, 32)
        for (int i = 0; i < n; i++) process(t, o, &items[i]);
        tok_free(t);
    }

    Bin *bins;
    int nb = pack_bins(items, n, (int)o->max_len, &bins);
    int64_t dropped[R_COUNT] = {0}, tokens = 0, packed = 0;
    for (int i = 0; i < n; i++) {
        dropped[items[i].reason]++;
        if (items[i].reason == R_OK) { tokens += (int64_t)items[i].ids.n; packed++; }
    }

    // Shards of per_shard sequences.
    char prefix[64];
    if (o->num_shards > 1) snprintf(prefix, sizeof prefix, "packed-s%05dof%05d-", o->shard_index, o->num_shards);
    else snprintf(prefix, sizeof prefix, "packed-");
    int nshards = (int)((nb + o->per_shard - 1) / o->per_shard), rc = 0;
    char **names = xcalloc((size_t)nshards + 1, sizeof(char *));
    int64_t *counts = xcalloc((size_t)nshards + 1, sizeof(int64_t));
    for (int s = 0; s < nshards && !rc; s++) {
        names[s] = xasprintf("%s%06d.tar", prefix, s);
        char *path = path_join(o->out, names[s]);
        WdsWriter *w = wds_create(path, &e);
        free(path);
        if (!w) { rc = -1; break; }
        for (int64_t b = s * o->per_shard; b < nb && b < (s + 1) * o->per_shard && !rc; b++) {
            char key[64];
            snprintf(key, sizeof key, "ps_%08lld", (long long)b);
            write_sequence(w, key, items, &bins[b], &e, &rc);
        }
        counts[s] = wds_count(w);
        if (rc) wds_abort(w);
        else if (wds_finish(w, &e)) rc = -1;
    }
    if (rc) die_internal("%s", e.msg);
    if (o->num_shards == 1 && wds_write_meta(o->out, names, counts, nshards, "CrudeWebdataset", &e)) die_internal("%s", e.msg);

    json_t *drop = json_object();
    for (int r = 1; r < R_COUNT; r++) json_object_set_new(drop, REASONS[r], json_integer(dropped[r]));
    double fill = nb ? (double)tokens / ((double)nb * (double)o->max_len) : 0.0;
    json_t *rep = json_pack("{s:I, s:I, s:o, s:I, s:I, s:f, s:f, s:I, s:i, s:i, s:I, s:I, s:f}", "samples_in",
                            (json_int_t)samples_in, "samples_packed", (json_int_t)packed, "dropped", drop, "sequences",
                            (json_int_t)nb, "tokens", (json_int_t)tokens, "fill_ratio", fill, "padding_compression",
                            nb ? (double)packed / nb : 0.0, "max_len", (json_int_t)o->max_len, "shard_index",
                            o->shard_index, "num_shards", o->num_shards, "min_pixels", (json_int_t)o->min_pixels,
                            "max_pixels", (json_int_t)o->max_pixels, "seconds", now_seconds() - t0);
    if (damage[0]) json_object_set_new(rep, "error", json_string(damage));
    char *rname = o->num_shards > 1 ? xasprintf("report.s%05dof%05d.json", o->shard_index, o->num_shards) : xstrdup("report.json");
    char *rpath = path_join(o->out, rname);
    if (json_write_file(rpath, rep, &e)) die_internal("%s", e.msg);
    fprintf(stderr, "pack: %lld samples in, %lld packed into %d sequences of <= %lld tokens (fill %.3f, %.1f samples per "
            "sequence), %lld dropped; %.0f samples/s\n", (long long)samples_in, (long long)packed, nb,
            (long long)o->max_len, fill, nb ? (double)packed / nb : 0.0, (long long)(samples_in - packed),
            samples_in / (now_seconds() - t0));
    json_decref(rep);
    free(rpath);
    free(rname);
    for (int s = 0; s < nshards; s++) free(names[s]);
    free(names);
    free(counts);
    for (int b = 0; b < nb; b++) free(bins[b].items);
    free(bins);
    for (int i = 0; i < n; i++) {
        wds_sample_free(&items[i].raw);
        intvec_free(&items[i].ids);
        intvec_free(&items[i].labels);
        free(items[i].img); free(items[i].h); free(items[i].w);
    }
    free(items);
    if (damage[0]) { fprintf(stderr, "pack: %s\n", damage); return 2; }
    return 0;
}
