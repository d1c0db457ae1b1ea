// profile.cu: LLAVA_PROFILE=FILE times every op of the CUDA Backend table on the device (CUDA events
// recorded on the stream around each call, so the ops still run back to back) and writes, at exit, one
// line per op label (the op and its shape) with its calls, total and mean device time, largest first,
// and their sum (the gaps between ops are the step time less the sum over the steps). Without
// LLAVA_PROFILE each op pays one branch. A profiling tool, not a timer of record: benchmarks time whole steps (bench/).
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common_cuda.cuh"
#include "ops_cuda.h"

enum { PROF_LABELS = 512, PROF_PAIRS = 8192, PROF_LABEL_LEN = 96 };

typedef struct {
    char name[PROF_LABEL_LEN];
    long calls;
    double ms, min_ms, max_ms;
} Label;
static Label labels[PROF_LABELS];
static int nlabels;
static struct { int label; cudaEvent_t start, stop; } pairs[PROF_PAIRS];
static int npairs;
static int enabled = -1;  // -1: LLAVA_PROFILE not read yet
static const char *out_path;

static void drain(void) {  // adds the recorded pairs' times to their labels
    if (!npairs) return;
    CUDA_CHECK(cudaEventSynchronize(pairs[npairs - 1].stop));
    for (int i = 0; i < npairs; i++) {
        float ms = 0;
        CUDA_CHECK(cudaEventElapsedTime(&ms, pairs[i].start, pairs[i].stop));
        Label *l = &labels[pairs[i].label];
        if (!l->calls || ms < l->min_ms) l->min_ms = ms;
        if (!l->calls || ms > l->max_ms) l->max_ms = ms;
        l->ms += ms;
        l->calls++;
    }
    npairs = 0;
}

static int by_time(const void *a, const void *b) {
    double x = ((const Label *)a)->ms, y = ((const Label *)b)->ms;
    return x < y ? 1 : x > y ? -1 : 0;
}

static void report(void) {
    cuda_set_errors_fatal(0);  // (at exit: an error here is the profile's, not the run's, and exit is not to be called again)
    drain();
    double sum = 0;
    FILE *f = fopen(out_path, "w");
    if (!f) { fprintf(stderr, "LLAVA_PROFILE: cannot write %s\n", out_path); return; }
    qsort(labels, (size_t)nlabels, sizeof labels[0], by_time);
    for (int i = 0; i < nlabels; i++) sum += labels[i].ms;
    fprintf(f, "%-64s %7s %11s %9s %9s %9s %6s\n", "op (shape)", "calls", "total ms", "mean ms", "min ms", "max ms", "share");
    for (int i = 0; i < nlabels; i++)
        if (labels[i].calls)
            fprintf(f, "%-64s %7ld %11.3f %9.4f %9.4f %9.4f %5.1f%%\n", labels[i].name, labels[i].calls, labels[i].ms,
                    labels[i].ms / labels[i].calls, labels[i].min_ms, labels[i].max_ms, 100 * labels[i].ms / (sum > 0 ? sum : 1));
    fprintf(f, "device time in ops: %.3f ms\n", sum);
    fclose(f);
}

int prof_begin(const char *fmt, ...) {
    if (enabled < 0) {
        out_path = getenv("LLAVA_PROFILE");
        enabled = out_path && out_path[0];
        if (enabled) {
            for (int i = 0; i < PROF_PAIRS; i++) {
                CUDA_CHECK(cudaEventCreate(&pairs[i].start));
                CUDA_CHECK(cudaEventCreate(&pairs[i].stop));
            }
            atexit(report);
        }
    }
    if (!enabled) return -1;
    char name[PROF_LABEL_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    int l = 0;
    while (l < nlabels && strcmp(labels[l].name, name)) l++;
    if (l == nlabels) {
        if (nlabels == PROF_LABELS) l = PROF_LABELS - 1;  // the last label gathers the overflow
        else snprintf(labels[nlabels++].name, PROF_LABEL_LEN, "%s", name);
    }
    if (npairs == PROF_PAIRS) drain();
    pairs[npairs].label = l;
    CUDA_CHECK(cudaEventRecord(pairs[npairs].start, g_stream));
    return npairs++;
}

// Forget what was timed so far (a program's warm-up: first calls load kernels and pick algorithms).
extern "C" void cuda_profile_reset(void) {
    if (enabled <= 0) return;
    drain();
    for (int i = 0; i < nlabels; i++) labels[i].calls = 0, labels[i].ms = 0;
}

void prof_end(int pair) {
    if (pair >= 0) CUDA_CHECK(cudaEventRecord(pairs[pair].stop, g_stream));
}
