// util.h: errors, memory, files and the write-to-temp-then-rename protocol shared by every program.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

// Exit codes (DESIGN.md): 2 = bad input (the user can fix it), 1 = internal failure.
enum { EXIT_BAD_INPUT = 2, EXIT_INTERNAL = 1 };

// Error buffer that library functions fill instead of exiting, so tests can check failures.
typedef struct { char msg[768]; } Err;
void err_set(Err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// Program name used as the prefix of every diagnostic ("merge: ...").
void util_set_prog(const char *argv0);
const char *util_prog(void);

// One line on stderr, then cleanup of registered temporaries, then exit 2 / 1.
_Noreturn void die_input(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
_Noreturn void die_internal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void warnf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

int str_ends_with(const char *s, const char *suffix);

// Paths and files.
int path_exists(const char *path);
int is_dir(const char *path);
int mkdir_p(const char *path);                      // 0 on success
int rm_rf(const char *path);                        // 0 on success; missing path is success
int copy_file(const char *src, const char *dst, Err *e);
int write_text_file(const char *path, const char *text, Err *e); // temp + fsync + rename
char *read_text_file(const char *path, size_t *len, Err *e);     // NUL-terminated, caller frees
void fsync_dir(const char *dir);
char *path_join(const char *a, const char *b);     // caller frees

// Output directories are built under a temporary sibling and renamed into place when complete.
// While a temporary exists it is registered, and die_*() or a fatal signal removes it, so a failed
// program never leaves a partial output behind.
typedef struct {
    char *final;  // the path the user asked for
    char *tmp;    // sibling being written: "<final>.tmp.<pid>"
} OutDir;
// Fails (die_input) when `final` exists and force is 0.
void outdir_begin(OutDir *o, const char *final, int force);
void outdir_commit(OutDir *o);     // fsync + rename over final; unregisters
void cleanup_register(const char *path);
void cleanup_unregister(const char *path);

// Parse a size like "5GB", "500MB", "1000" (decimal units, as huggingface_hub). Returns -1 on error.
int64_t parse_size(const char *s);

// Wall clock seconds.
double now_seconds(void);
// Peak resident set size of this process in bytes (from /proc/self/status VmHWM).
int64_t peak_rss_bytes(void);
