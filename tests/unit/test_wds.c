// Unit tests: the Energon key rule and the .nv-meta files of a dataset directory.
#include <stdlib.h>
#include <unistd.h>

#include "../../common/wds.h"
#include "check.h"

static void key_rule(void) {
    // spec/data.md §1.1: key = path + basename up to the FIRST dot
    static const char *cases[][3] = {
        {"ps_00000001.img0.jpg", "ps_00000001", "img0.jpg"},
        {"image_5.0_000000033471.jpg", "image_5", "0_000000033471.jpg"},
        {"a.b/c.d.json", "a.b/c", "d.json"},
        {"s.json", "s", "json"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *k, *p;
        CHECK(wds_split_name(cases[i][0], &k, &p) == 0);
        CHECK(!strcmp(k, cases[i][1]) && !strcmp(p, cases[i][2]));
        free(k);
        free(p);
    }
    char *k, *p;
    CHECK(wds_split_name("README", &k, &p) == -1);
    CHECK(wds_split_name("dir.x/README", &k, &p) == -1);
    CHECK(wds_split_name(".hidden", &k, &p) == -1);
}

static void nv_meta(void) {
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/test_wds.%d", (int)getpid());
    mkdir_p(dir);
    char *shards[2] = {"pretrain-000000.tar", "pretrain-000001.tar"};
    int64_t counts[2] = {1223, 7};
    Err e;
    CHECK(wds_write_meta(dir, shards, counts, 2, "CrudeWebdataset", &e) == 0);
    char *p = xasprintf("%s/.nv-meta/.info.json", dir);
    char *s = read_text_file(p, NULL, &e);
    CHECK(s && strstr(s, "\"shard_counts\": {\"pretrain-000000.tar\": 1223, \"pretrain-000001.tar\": 7}"));
    free(s);
    free(p);
    p = xasprintf("%s/.nv-meta/split.yaml", dir);
    s = read_text_file(p, NULL, &e);
    CHECK(s && strstr(s, "split_parts:\n  train:\n  - pretrain-000000.tar\n  - pretrain-000001.tar\n"));
    free(s);
    free(p);
    p = xasprintf("%s/.nv-meta/dataset.yaml", dir);
    s = read_text_file(p, NULL, &e);
    CHECK(s && strstr(s, "__class__: CrudeWebdataset"));
    free(s);
    free(p);
    rm_rf(dir);
}

int main(void) {
    RUN(key_rule);
    RUN(nv_meta);
    return CHECK_DONE();
}
