// shards: list or copy WebDataset tar shards.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/cli.h"
#include "../common/util.h"
#include "../common/wds.h"

static int list(int n, char **paths) {
    Err e;
    for (int i = 0; i < n; i++) {
        WdsReader *r = wds_open(paths[i], &e);
        if (!r) die_input("%s", e.msg);
        WdsSample s;
        int rc;
        while ((rc = wds_next(r, &s, &e)) == 1) {
            printf("%s\t%llu\t%s", paths[i], (unsigned long long)s.offset, s.key);
            for (int k = 0; k < s.n; k++) printf("\t%s:%zu", s.m[k].name, s.m[k].size);
            putchar('\n');
            wds_sample_free(&s);
        }
        wds_close(r);
        if (rc < 0) die_input("%s", e.msg);
    }
    return 0;
}

static int copy(const char *in, const char *out) {
    Err e;
    WdsReader *r = wds_open(in, &e);
    if (!r) die_input("%s", e.msg);
    WdsWriter *w = wds_create(out, &e);
    if (!w) die_input("%s", e.msg);
    WdsSample s;
    int rc;
    while ((rc = wds_next(r, &s, &e)) == 1) {
        if (wds_write(w, s.key, s.m, s.n, &e)) { wds_abort(w); die_input("%s", e.msg); }
        wds_sample_free(&s);
    }
    wds_close(r);
    if (rc < 0) { wds_abort(w); die_input("%s", e.msg); }
    int64_t count = wds_count(w);
    if (wds_finish(w, &e)) die_input("%s", e.msg);
    fprintf(stderr, "shards: copied %lld samples to %s (+ %s.idx)\n", (long long)count, out, out);
    return 0;
}

int main(int argc, char **argv) {
    const Cli cli = {
        .name = "shards",
        .summary = "list or copy WebDataset tar shards",
        .synopsis = "shards ls SHARD...  |  shards copy IN.tar[.gz] OUT.tar",
        .description =
            "ls prints one line per sample: shard, byte offset of the sample's first tar header, key, and each "
            "member as part:size. Samples are grouped as Megatron-Energon groups them: the key is the member path "
            "up to the first dot of its base name; __*__ members are skipped; a sample's members must be "
            "consecutive.\n"
            "copy re-writes a shard sample by sample (members in their order, mtime 0) and writes OUT.idx, the "
            "Energon index: little-endian uint64 offsets of every sample plus the end offset.",
        .opts = NULL,
        .nopts = 0,
        .min_pos = 2,
        .max_pos = 1 << 20,
        .examples = "shards ls data/pretrain-000000.tar | head\nshards copy raw.tar.gz clean.tar",
    };
    char **pos;
    int n = cli_parse(&cli, argc, argv, &pos);
    int rc;
    if (!strcmp(pos[0], "ls")) rc = list(n - 1, pos + 1);
    else if (!strcmp(pos[0], "copy") && n == 3) rc = copy(pos[1], pos[2]);
    else die_input("expected 'ls SHARD...' or 'copy IN OUT' (usage: %s)", cli.synopsis);
    free(pos);
    return rc;
}
