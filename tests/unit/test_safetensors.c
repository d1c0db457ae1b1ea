// Unit tests: safetensors writing (layout, alignment, sharding, index) and the reader's validation
// of hand-made headers.
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "../../common/hfdir.h"
#include "../../common/safetensors.h"
#include "check.h"

static char dir[256];

// Writes 8-byte length + header text + n data bytes.
static void write_raw(const char *name, const char *header, size_t ndata) {
    char *path = path_join(dir, name);
    FILE *f = fopen(path, "wb");
    uint64_t n = strlen(header);
    fwrite(&n, 8, 1, f);
    fwrite(header, 1, n, f);
    for (size_t i = 0; i < ndata; i++) fputc((int)i, f);
    fclose(f);
    free(path);
}

static int open_raw(const char *name, Err *e) {
    char *path = path_join(dir, name);
    StFile f;
    int rc = st_open(&f, path, e);
    if (rc == 0) st_close(&f);
    free(path);
    return rc;
}

static void writer_roundtrip_with_shards(void) {
    Err e;
    char *d = path_join(dir, "w");
    mkdir_p(d);
    StWriter *w = stw_new(d, "model", 100);  // 100-byte shards
    int64_t s1[2] = {4, 5}, s2[1] = {30}, s3[1] = {0}, s4[1] = {3};
    float a[20];
    uint16_t b[30];
    int32_t c[3] = {7, -8, 9};
    for (int i = 0; i < 20; i++) a[i] = (float)i * 0.5f;
    for (int i = 0; i < 30; i++) b[i] = (uint16_t)(1000 + i);
    CHECK(stw_declare(w, "a", DT_F32, 2, s1, &e) == 0);   // 80 bytes
    CHECK(stw_declare(w, "b", DT_BF16, 1, s2, &e) == 0);  // 60 bytes: new shard
    CHECK(stw_declare(w, "empty", DT_F32, 1, s3, &e) == 0);
    CHECK(stw_declare(w, "c", DT_I32, 1, s4, &e) == 0);
    CHECK(stw_declare(w, "a", DT_F32, 1, s4, &e) == -1);  // declared twice
    CHECK(stw_open(w, &e) == 0);
    CHECK_EQ_INT(stw_num_shards(w), 2);
    CHECK(stw_write(w, "c", c, &e) == 0);  // any order
    CHECK(stw_write(w, "a", a, &e) == 0);
    CHECK(stw_write(w, "b", b, &e) == 0);
    CHECK(stw_finish(w, &e) == -1);  // "empty" never written
    CHECK_STR_CONTAINS(e.msg, "'empty'");
    CHECK(stw_write(w, "empty", NULL, &e) == 0);
    CHECK(stw_finish(w, &e) == 0);
    stw_free(w);

    HfDir h;
    CHECK(hfdir_open(&h, d, &e) == 0);
    CHECK_EQ_INT(h.nfiles, 2);
    CHECK_EQ_INT(h.n, 4);
    const StTensor *t = hfdir_find(&h, "a");
    CHECK(t && t->dtype == DT_F32 && t->ndim == 2 && t->shape[1] == 5 && !memcmp(t->data, a, sizeof a));
    t = hfdir_find(&h, "b");
    CHECK(t && t->dtype == DT_BF16 && !memcmp(t->data, b, sizeof b));
    t = hfdir_find(&h, "c");
    CHECK(t && !memcmp(t->data, c, sizeof c));
    t = hfdir_find(&h, "empty");
    CHECK(t && t->nbytes == 0);
    // Every shard's data starts 8-byte aligned (header padded with spaces).
    for (int i = 0; i < h.nfiles; i++) {
        uint64_t n;
        memcpy(&n, h.files[i].map, 8);
        CHECK((8 + n) % 8 == 0);
        CHECK(h.files[i].map[8 + n - 1] == ' ' || h.files[i].map[8 + n - 1] == '}');
    }
    hfdir_close(&h);
    char *idx = path_join(d, "model.safetensors.index.json");
    char *text = read_text_file(idx, NULL, &e);
    CHECK(text && strstr(text, "\"total_size\": 152") && strstr(text, "model-00002-of-00002.safetensors"));
    free(text);
    free(idx);
    free(d);
}

static void single_file_has_no_index(void) {
    Err e;
    char *d = path_join(dir, "one");
    mkdir_p(d);
    StWriter *w = stw_new(d, "model", 0);
    int64_t s[1] = {2};
    float x[2] = {1, 2};
    stw_declare(w, "x", DT_F32, 1, s, &e);
    stw_open(w, &e);
    stw_write(w, "x", x, &e);
    CHECK(stw_finish(w, &e) == 0);
    stw_free(w);
    char *idx = path_join(d, "model.safetensors.index.json"), *one = path_join(d, "model.safetensors");
    CHECK(!path_exists(idx) && path_exists(one));
    free(idx);
    free(one);
    free(d);
}

static void reader_accepts_scalars_and_metadata(void) {
    Err e;
    write_raw("ok.st", "{\"__metadata__\":{\"format\":\"pt\"},\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
                       "\"z\":{\"dtype\":\"I64\",\"shape\":[0,3],\"data_offsets\":[4,4]}}", 4);
    CHECK(open_raw("ok.st", &e) == 0);
}

static void reader_rejects_bad_headers(void) {
    Err e;
    write_raw("hole.st", "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}}", 4);
    CHECK(open_raw("hole.st", &e) == -1);
    CHECK_STR_CONTAINS(e.msg, "hole");
    write_raw("trail.st", "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 4);
    CHECK(open_raw("trail.st", &e) == -1);
    CHECK_STR_CONTAINS(e.msg, "trailing");
    write_raw("neg.st", "{\"a\":{\"dtype\":\"U8\",\"shape\":[-2],\"data_offsets\":[0,2]}}", 2);
    CHECK(open_raw("neg.st", &e) == -1);
    CHECK_STR_CONTAINS(e.msg, "'a'");
    write_raw("arr.st", "[1,2]", 0);
    CHECK(open_raw("arr.st", &e) == -1);
    CHECK_STR_CONTAINS(e.msg, "not a JSON object");
    write_raw("meta.st", "{\"__metadata__\":{\"format\":3}}", 0);
    CHECK(open_raw("meta.st", &e) == -1);
    CHECK_STR_CONTAINS(e.msg, "__metadata__");
    write_raw("offs.st", "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,0]}}", 2);
    CHECK(open_raw("offs.st", &e) == -1);
    CHECK_STR_CONTAINS(e.msg, "data_offsets");
    write_raw("nodt.st", "{\"a\":{\"shape\":[2],\"data_offsets\":[0,2]}}", 2);
    CHECK(open_raw("nodt.st", &e) == -1);
    CHECK_STR_CONTAINS(e.msg, "dtype");
    write_raw("huge.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,8],\"data_offsets\":[0,2]}}", 2);
    CHECK(open_raw("huge.st", &e) == -1);
    CHECK_STR_CONTAINS(e.msg, "'a'");
    // Header length beyond the 100 MB limit, though the file is "large enough" by its own claim.
    char *path = path_join(dir, "big.st");
    FILE *f = fopen(path, "wb");
    uint64_t n = 200000000ull;
    fwrite(&n, 8, 1, f);
    fclose(f);
    CHECK(truncate(path, 200000100) == 0);
    CHECK(open_raw("big.st", &e) == -1);
    CHECK_STR_CONTAINS(e.msg, "100 MB");
    unlink(path);
    free(path);
    write_raw("short.st", "", 0);
    path = path_join(dir, "tiny.st");
    f = fopen(path, "wb");
    fputs("abc", f);
    fclose(f);
    CHECK(open_raw("tiny.st", &e) == -1);
    CHECK_STR_CONTAINS(e.msg, "truncated");
    free(path);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/test_safetensors.%d", (int)getpid());
    mkdir_p(dir);
    RUN(writer_roundtrip_with_shards);
    RUN(single_file_has_no_index);
    RUN(reader_accepts_scalars_and_metadata);
    RUN(reader_rejects_bad_headers);
    rm_rf(dir);
    return CHECK_DONE();
}
