// check.h: a minimal TAP-producing test harness for the C unit tests. Each TEST prints
// "ok N - name" or "not ok N - name" with the failed checks as "#" lines; main() returns non-zero
// when any test failed, so tests/run.sh and CI see every failure.
#pragma once
#include <stdio.h>
#include <string.h>

static int check_failed_, check_tests_, check_bad_tests_;

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            printf("#   %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);          \
            check_failed_ = 1;                                                           \
        }                                                                                \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                          \
    do {                                                                                            \
        long long a_ = (long long)(a), b_ = (long long)(b);                                         \
        if (a_ != b_) {                                                                             \
            printf("#   %s:%d: %s == %lld, expected %s == %lld\n", __FILE__, __LINE__, #a, a_, #b, b_); \
            check_failed_ = 1;                                                                      \
        }                                                                                           \
    } while (0)

#define CHECK_STR_CONTAINS(s, frag)                                                               \
    do {                                                                                          \
        if (!strstr((s), (frag))) {                                                               \
            printf("#   %s:%d: \"%s\" lacks \"%s\"\n", __FILE__, __LINE__, (s), (frag));           \
            check_failed_ = 1;                                                                    \
        }                                                                                         \
    } while (0)

static void run_test_(const char *name, void (*fn)(void)) {
    check_failed_ = 0;
    fn();
    check_tests_++;
    if (check_failed_) check_bad_tests_++;
    printf("%s %d - %s\n", check_failed_ ? "not ok" : "ok", check_tests_, name);
    fflush(stdout);
}

#define RUN(fn) run_test_(#fn, fn)
#define CHECK_DONE() (printf("1..%d\n", check_tests_), check_bad_tests_ ? 1 : 0)
