// Unit tests: LLAVA_TUNE_FILE (common/tune_file.c), where the CUDA tuners keep their picks from run to run.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../common/tune_file.h"
#include "check.h"

static char path[64];

static void write_text(const char *text) {
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}
static char *read_text(void) {
    static char buf[4096];
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f) fclose(f);
    buf[n] = 0;
    return buf;
}

// no file: nothing found; the first pick creates it, and a later run (reset) finds it
static void picks_survive_the_run(void) {
    unlink(path);
    tune_file_reset();
    CHECK(tune_file_get("flash H100 forward T8192 32q/8kv d128 causal") == NULL);
    tune_file_put("flash H100 forward T8192 32q/8kv d128 causal", "7 1 0");
    tune_file_put("gemm H100 cublasLt130000 TN m4096 n8192 k2560", "0a1b");
    CHECK(!strcmp(read_text(), "flash H100 forward T8192 32q/8kv d128 causal = 7 1 0\ngemm H100 cublasLt130000 TN m4096 n8192 k2560 = 0a1b\n"));
    tune_file_reset();  // the next run
    const char *v = tune_file_get("flash H100 forward T8192 32q/8kv d128 causal");
    CHECK(v && !strcmp(v, "7 1 0"));
    v = tune_file_get("gemm H100 cublasLt130000 TN m4096 n8192 k2560");
    CHECK(v && !strcmp(v, "0a1b"));
    CHECK(tune_file_get("flash H200 forward T8192 32q/8kv d128 causal") == NULL);  // another card's key
}

// the last line of a key wins (a pick tuned again after the kept one was refused is appended); a line without
// " = " is skipped (reported on stderr), the rest still read; CRLF line ends are read as LF
static void last_line_wins_and_bad_lines_are_skipped(void) {
    write_text("a = 1\nnot a pick\nb = 2\r\na = 3\n = 4\nc = \n");
    tune_file_reset();
    const char *a = tune_file_get("a"), *b = tune_file_get("b");
    CHECK(a && !strcmp(a, "3"));
    CHECK(b && !strcmp(b, "2"));
    CHECK(tune_file_get("not a pick") == NULL && tune_file_get("") == NULL && tune_file_get("c") == NULL);
    tune_file_put("a", "5");  // tuned again: from now on, and in the next run
    a = tune_file_get("a");
    CHECK(a && !strcmp(a, "5"));
    tune_file_reset();
    a = tune_file_get("a");
    CHECK(a && !strcmp(a, "5"));
}

// without LLAVA_TUNE_FILE the picks live in memory only
static void without_a_file_picks_stay_in_memory(void) {
    unsetenv("LLAVA_TUNE_FILE");
    tune_file_reset();
    tune_file_put("k", "v");
    const char *v = tune_file_get("k");
    CHECK(v && !strcmp(v, "v"));
    tune_file_reset();
    CHECK(tune_file_get("k") == NULL);
    setenv("LLAVA_TUNE_FILE", path, 1);
}

int main(void) {
    snprintf(path, sizeof path, "/tmp/test_tune_file.%d", (int)getpid());
    setenv("LLAVA_TUNE_FILE", path, 1);
    RUN(picks_survive_the_run);
    RUN(last_line_wins_and_bad_lines_are_skipped);
    RUN(without_a_file_picks_stay_in_memory);
    unlink(path);
    return CHECK_DONE();
}
