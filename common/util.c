// util.c: see util.h.
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char prog_name[64] = "llava";

void util_set_prog(const char *argv0) {
    const char *base = strrchr(argv0, '/');
    base = base ? base + 1 : argv0;
    snprintf(prog_name, sizeof prog_name, "%s", base);
}
const char *util_prog(void) { return prog_name; }

void err_set(Err *e, const char *fmt, ...) {
    if (!e) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
}

// ---- temporaries removed on failure ----------------------------------------------------------

#define MAX_CLEANUP 16
static char *cleanup_paths[MAX_CLEANUP];

void cleanup_register(const char *path) {
    for (int i = 0; i < MAX_CLEANUP; i++)
        if (!cleanup_paths[i]) { cleanup_paths[i] = xstrdup(path); return; }
    die_internal("too many temporary outputs registered");
}

void cleanup_unregister(const char *path) {
    for (int i = 0; i < MAX_CLEANUP; i++)
        if (cleanup_paths[i] && strcmp(cleanup_paths[i], path) == 0) {
            free(cleanup_paths[i]);
            cleanup_paths[i] = NULL;
        }
}

static void run_cleanup(void) {
    for (int i = 0; i < MAX_CLEANUP; i++)
        if (cleanup_paths[i]) { rm_rf(cleanup_paths[i]); free(cleanup_paths[i]); cleanup_paths[i] = NULL; }
}

static void on_fatal_signal(int sig) {
    // rm_rf is not async-signal-safe in general, but the process is about to die and nothing
    // else runs; leaving a partial output behind is the worse outcome.
    run_cleanup();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void install_signal_cleanup(void) {
    static int done;
    if (done) return;
    done = 1;
    signal(SIGINT, on_fatal_signal);
    signal(SIGTERM, on_fatal_signal);
    signal(SIGHUP, on_fatal_signal);
}

static _Noreturn void vdie(int code, const char *fmt, va_list ap) {
    fflush(stdout);
    fprintf(stderr, "%s: ", prog_name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    run_cleanup();
    exit(code);
}

void die_input(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vdie(EXIT_BAD_INPUT, fmt, ap);
}

void die_internal(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vdie(EXIT_INTERNAL, fmt, ap);
}

void warnf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog_name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

// ---- memory -----------------------------------------------------------------------------------

void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) die_internal("out of memory allocating %zu bytes", n);
    return p;
}
void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) die_internal("out of memory allocating %zu x %zu bytes", n, size);
    return p;
}
void *xrealloc(void *p, size_t n) {
    p = realloc(p, n ? n : 1);
    if (!p) die_internal("out of memory allocating %zu bytes", n);
    return p;
}
char *xstrdup(const char *s) {
    char *p = strdup(s);
    if (!p) die_internal("out of memory");
    return p;
}
char *xasprintf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) die_internal("out of memory");
    va_end(ap);
    return s;
}

int str_ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

// ---- files ------------------------------------------------------------------------------------

int path_exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}
int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

char *path_join(const char *a, const char *b) {
    size_t la = strlen(a);
    if (la && a[la - 1] == '/') return xasprintf("%s%s", a, b);
    return xasprintf("%s/%s", a, b);
}

int mkdir_p(const char *path) {
    char *p = xstrdup(path);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0777) != 0 && errno != EEXIST) { free(p); return -1; }
        *s = '/';
    }
    int rc = (mkdir(p, 0777) != 0 && errno != EEXIST) ? -1 : 0;
    free(p);
    return rc;
}

int rm_rf(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(st.st_mode)) return unlink(path);
    DIR *d = opendir(path);
    if (!d) return -1;
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        char *sub = path_join(path, de->d_name);
        if (rm_rf(sub) != 0) rc = -1;
        free(sub);
    }
    closedir(d);
    if (rmdir(path) != 0) rc = -1;
    return rc;
}

void fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) { fsync(fd); close(fd); }
}

int copy_file(const char *src, const char *dst, Err *e) {
    int in = open(src, O_RDONLY);
    if (in < 0) { err_set(e, "%s: cannot open: %s", src, strerror(errno)); return -1; }
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out < 0) { err_set(e, "%s: cannot create: %s", dst, strerror(errno)); close(in); return -1; }
    char buf[1 << 16];
    ssize_t n;
    int rc = 0;
    while ((n = read(in, buf, sizeof buf)) > 0) {
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(out, buf + off, (size_t)(n - off));
            if (w < 0) { err_set(e, "%s: write failed: %s", dst, strerror(errno)); rc = -1; goto done; }
            off += w;
        }
    }
    if (n < 0) { err_set(e, "%s: read failed: %s", src, strerror(errno)); rc = -1; }
done:
    if (rc == 0 && fsync(out) != 0) { err_set(e, "%s: fsync failed: %s", dst, strerror(errno)); rc = -1; }
    close(in);
    if (close(out) != 0 && rc == 0) { err_set(e, "%s: close failed: %s", dst, strerror(errno)); rc = -1; }
    return rc;
}

int write_text_file(const char *path, const char *text, Err *e) {
    char *tmp = xasprintf("%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) { err_set(e, "%s: cannot create: %s", tmp, strerror(errno)); free(tmp); return -1; }
    size_t n = strlen(text);
    int ok = fwrite(text, 1, n, f) == n && fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        err_set(e, "%s: write failed: %s", path, strerror(errno));
        unlink(tmp);
        free(tmp);
        return -1;
    }
    free(tmp);
    return 0;
}

char *read_text_file(const char *path, size_t *len, Err *e) {
    FILE *f = fopen(path, "rb");
    if (!f) { err_set(e, "%s: cannot open: %s", path, strerror(errno)); return NULL; }
    size_t cap = 4096, n = 0;
    char *buf = xmalloc(cap);
    size_t r;
    while ((r = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += r;
        if (cap - n - 1 == 0) buf = xrealloc(buf, cap *= 2);
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) { err_set(e, "%s: read failed", path); free(buf); return NULL; }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

// ---- output directories -----------------------------------------------------------------------

void outdir_begin(OutDir *o, const char *final, int force) {
    install_signal_cleanup();
    size_t n = strlen(final);
    while (n > 1 && final[n - 1] == '/') n--;  // "out/" and "out" name the same directory
    o->final = xasprintf("%.*s", (int)n, final);
    if (path_exists(o->final) && !force)
        die_input("%s: output already exists (remove it or pass --force)", o->final);
    o->tmp = xasprintf("%s.tmp.%d", o->final, (int)getpid());
    rm_rf(o->tmp);
    cleanup_register(o->tmp);
    if (mkdir_p(o->tmp) != 0) die_input("%s: cannot create directory: %s", o->tmp, strerror(errno));
}

void outdir_commit(OutDir *o) {
    fsync_dir(o->tmp);
    char *old = NULL;
    if (path_exists(o->final)) {  // --force: move the old output aside, then drop it
        old = xasprintf("%s.old.%d", o->final, (int)getpid());
        if (rename(o->final, old) != 0) die_internal("%s: cannot replace: %s", o->final, strerror(errno));
    }
    if (rename(o->tmp, o->final) != 0) die_internal("%s: cannot rename into place: %s", o->final, strerror(errno));
    cleanup_unregister(o->tmp);
    char *parent = xstrdup(o->final);
    char *slash = strrchr(parent, '/');
    if (slash) { if (slash == parent) slash[1] = 0; else *slash = 0; } else strcpy(parent, ".");
    fsync_dir(parent);
    free(parent);
    if (old) { rm_rf(old); free(old); }
    free(o->tmp);
    free(o->final);
    o->tmp = o->final = NULL;
}

// ---- misc -------------------------------------------------------------------------------------

int64_t parse_size(const char *s) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || v < 0) return -1;
    double mul = 1;
    if (!*end || !strcmp(end, "B")) mul = 1;
    else if (!strcasecmp(end, "KB")) mul = 1e3;
    else if (!strcasecmp(end, "MB")) mul = 1e6;
    else if (!strcasecmp(end, "GB")) mul = 1e9;
    else if (!strcasecmp(end, "TB")) mul = 1e12;
    else if (!strcasecmp(end, "KiB")) mul = 1024.0;
    else if (!strcasecmp(end, "MiB")) mul = 1024.0 * 1024;
    else if (!strcasecmp(end, "GiB")) mul = 1024.0 * 1024 * 1024;
    else return -1;
    return (int64_t)(v * mul);
}

double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int64_t peak_rss_bytes(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    int64_t kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %ld kB", &kb) == 1) break;
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}
