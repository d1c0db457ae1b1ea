// Unit tests: the training loader over packed shards made here (raw caption pairs -> pack_run):
// epoch order, rank sharding, and an exact resume from a saved cursor.
#include <stdlib.h>
#include <unistd.h>

#include "../../common/bpe_train.h"
#include "../../common/image.h"
#include "../../common/loader.h"
#include "../../common/pack.h"
#include "../../common/rng.h"
#include "../../common/wds.h"
#include "check.h"

static char dir[64], packed[96], *shard_paths[4];
static int nshards;

static void make_data(void) {
    snprintf(dir, sizeof dir, "/tmp/test_loader.%d", (int)getpid());
    mkdir_p(dir);
    Err e;
    char *raw = xasprintf("%s/raw.tar", dir);
    WdsWriter *w = wds_create(raw, &e);
    static const char *words[] = {"red", "blue", "circle", "square", "left", "right", "big", "small"};
    char text[4096] = "";
    uint64_t st = 99;
    for (int i = 0; i < 300; i++) {
        Image img = {56 + 14 * (int)(splitmix64(&st) % 5), 56 + 14 * (int)(splitmix64(&st) % 5), NULL};
        img.rgb = xmalloc((size_t)img.w * img.h * 3);
        for (int p = 0; p < img.w * img.h * 3; p++) img.rgb[p] = (uint8_t)(splitmix64(&st) & 0xff);
        size_t n;
        uint8_t *jpg = image_encode_jpeg(&img, 85, &n);
        char cap[128], key[16];
        snprintf(cap, sizeof cap, "A %s %s on the %s.", words[splitmix64(&st) % 2], words[2 + splitmix64(&st) % 2], words[4 + splitmix64(&st) % 2]);
        if (i < 20) { strcat(text, cap); strcat(text, "\n"); }
        snprintf(key, sizeof key, "s%05d", i);
        WdsMember m[2] = {{"jpg", jpg, n}, {"txt", (uint8_t *)cap, strlen(cap)}};
        wds_write(w, key, m, 2, &e);
        free(jpg);
        image_free(&img);
    }
    wds_finish(w, &e);
    char *tok = xasprintf("%s/tok", dir);
    mkdir_p(tok);
    bpe_train_write(text, strlen(text), 300, 300, tok, &e);
    snprintf(packed, sizeof packed, "%s/packed", dir);
    char *inputs[1] = {raw};
    PackOptions o = {.tokenizer = tok, .out = packed, .max_len = 96, .min_pixels = 3136, .max_pixels = 20000,
                     .per_shard = 16, .shard_index = 0, .num_shards = 1, .threads = 2, .policy = "auto", .inputs = inputs, .ninputs = 1};
    pack_run(&o);
    for (nshards = 0; nshards < 4; nshards++) {
        shard_paths[nshards] = xasprintf("%s/packed-%06d.tar", packed, nshards);
        if (!path_exists(shard_paths[nshards])) { free(shard_paths[nshards]); break; }
    }
    free(raw);
    free(tok);
}

static Loader *open_loader(uint64_t seed, int rank, int world, int64_t start, int workers) {
    LoaderOptions o = {.shards = shard_paths, .nshards = nshards, .rank = rank, .world = world, .seed = seed,
                       .workers = workers, .prefetch = 4, .start = start};
    Err e;
    Loader *l = loader_open(&o, &e);
    if (!l) printf("# %s\n", e.msg);
    return l;
}

static uint64_t digest(const Batch *b) {  // FNV over everything a training step consumes
    uint64_t h = 1469598103934665603ull;
    const uint8_t *parts[5] = {(const uint8_t *)b->ids, (const uint8_t *)b->labels, (const uint8_t *)b->cu_seqlens,
                               (const uint8_t *)b->pixels, (const uint8_t *)b->grid_thw};
    size_t sizes[5] = {(size_t)b->n * 4, (size_t)b->n * 4, (size_t)(b->nseq + 1) * 4, (size_t)b->rows * IMG_PATCH_DIM * 4,
                       (size_t)b->nimg * 12};
    for (int p = 0; p < 5; p++)
        for (size_t i = 0; i < sizes[p]; i++) h = (h ^ parts[p][i]) * 1099511628211ull;
    return h;
}

static void epoch_covers_every_sequence_once(void) {
    CHECK(nshards >= 2);
    Loader *l = open_loader(3, 0, 1, 0, 2);
    int64_t n = loader_epoch_size(l);
    CHECK(n > 30);
    char (*keys)[32] = xcalloc((size_t)n, 32);
    Err e;
    for (int64_t i = 0; i < n; i++) {
        Batch b;
        CHECK(loader_next(l, &b, &e) == 0);
        memcpy(keys[i], b.key, 32);
        int pads = 0;
        for (int t = 0; t < b.n; t++) pads += b.ids[t] == 312;  // <|image_pad|> = special base 300 + 12
        int64_t rows = 0;
        for (int k = 0; k < b.nimg; k++) rows += (int64_t)b.grid_thw[3 * k + 1] * b.grid_thw[3 * k + 2];
        CHECK(b.n <= 96 && b.cu_seqlens[b.nseq] == b.n && rows == b.rows && pads * 4 == rows && b.position == i);
        batch_free(&b);
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = i + 1; j < n; j++) CHECK(strcmp(keys[i], keys[j]) != 0);
    loader_close(l);
    // the same seed gives the same order (with another worker count); another seed another order
    Loader *a = open_loader(3, 0, 1, 0, 1), *c = open_loader(4, 0, 1, 0, 2);
    int same = 1, differ = 0;
    for (int64_t i = 0; i < n; i++) {
        Batch x, y;
        loader_next(a, &x, &e);
        loader_next(c, &y, &e);
        same &= !strcmp(x.key, keys[i]);
        differ |= strcmp(y.key, keys[i]) != 0;
        batch_free(&x);
        batch_free(&y);
    }
    CHECK(same && differ);
    loader_close(a);
    loader_close(c);
    free(keys);
}

static void ranks_are_disjoint(void) {
    Loader *r0 = open_loader(5, 0, 2, 0, 1), *r1 = open_loader(5, 1, 2, 0, 1), *one = open_loader(5, 0, 1, 0, 1);
    int64_t n = loader_epoch_size(r0), all = loader_epoch_size(one);
    CHECK(n == all / 2 && loader_epoch_size(r1) == n);
    Err e;
    int overlap = 0;
    char (*k0)[32] = xcalloc((size_t)n, 32);
    for (int64_t i = 0; i < n; i++) { Batch b; loader_next(r0, &b, &e); memcpy(k0[i], b.key, 32); batch_free(&b); }
    for (int64_t i = 0; i < n; i++) {
        Batch b;
        loader_next(r1, &b, &e);
        for (int64_t j = 0; j < n; j++) overlap |= !strcmp(k0[j], b.key);
        batch_free(&b);
    }
    CHECK(!overlap);
    free(k0);
    loader_close(r0);
    loader_close(r1);
    loader_close(one);
}

static void resume_from_cursor_mid_epoch(void) {
    Loader *a = open_loader(11, 0, 1, 0, 2);
    int64_t n = loader_epoch_size(a);
    Err e;
    for (int i = 0; i < 7; i++) { Batch b; loader_next(a, &b, &e); batch_free(&b); }
    int64_t cursor = loader_cursor(a);
    CHECK(cursor == 7);
    int64_t m = n + 5;  // across the epoch boundary too
    uint64_t *want = xmalloc((size_t)m * sizeof(uint64_t));
    for (int64_t i = 0; i < m; i++) { Batch b; loader_next(a, &b, &e); want[i] = digest(&b); batch_free(&b); }
    loader_close(a);
    Loader *r = open_loader(11, 0, 1, cursor, 3);
    int same = 1;
    for (int64_t i = 0; i < m; i++) { Batch b; loader_next(r, &b, &e); same &= digest(&b) == want[i]; batch_free(&b); }
    CHECK(same);
    loader_close(r);
    free(want);
}

int main(void) {
    make_data();
    RUN(epoch_covers_every_sequence_once);
    RUN(ranks_are_disjoint);
    RUN(resume_from_cursor_mid_epoch);
    rm_rf(dir);
    for (int i = 0; i < nshards; i++) free(shard_paths[i]);
    return CHECK_DONE();
}
