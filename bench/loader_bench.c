// loader_bench: reads N packed sequences through the training loader and prints sequences/s,
// images/s and tokens/s.   usage: loader_bench WORKERS N SHARD...
#include <stdio.h>
#include <stdlib.h>

#include "../common/loader.h"

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: loader_bench WORKERS N SHARD...\n"); return 2; }
    LoaderOptions o = {.shards = argv + 3, .nshards = argc - 3, .rank = 0, .world = 1, .seed = 1,
                       .workers = atoi(argv[1]), .prefetch = 8, .start = 0};
    int n = atoi(argv[2]);
    Err e;
    Loader *l = loader_open(&o, &e);
    if (!l) { fprintf(stderr, "%s\n", e.msg); return 2; }
    double t0 = now_seconds();
    int64_t images = 0, tokens = 0;
    for (int i = 0; i < n; i++) {
        Batch b;
        if (loader_next(l, &b, &e)) { fprintf(stderr, "%s\n", e.msg); return 2; }
        images += b.nimg;
        tokens += b.n;
        batch_free(&b);
    }
    double s = now_seconds() - t0;
    printf("%.1f %.1f %.0f\n", n / s, images / s, tokens / s);
    loader_close(l);
    return 0;
}
