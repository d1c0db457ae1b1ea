// tune_file.c: see tune_file.h.
#include "tune_file.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static struct {
    int read;          // the file was read (or there is none)
    char **key, **value;
    int n, cap;
    int write_failed;  // (reported once)
} tf;

static void keep(const char *key, const char *value) {
    if (tf.n == tf.cap) {
        tf.cap = tf.cap ? 2 * tf.cap : 64;
        tf.key = xrealloc(tf.key, (size_t)tf.cap * sizeof *tf.key);
        tf.value = xrealloc(tf.value, (size_t)tf.cap * sizeof *tf.value);
    }
    tf.key[tf.n] = xstrdup(key);
    tf.value[tf.n++] = xstrdup(value);
}

// the file's lines into memory, once (a missing file is an empty one: the first pick creates it)
static void load(void) {
    if (tf.read) return;
    tf.read = 1;
    const char *path = getenv("LLAVA_TUNE_FILE");
    FILE *f = path && *path ? fopen(path, "r") : NULL;
    if (!f) return;
    char line[1024];
    for (int no = 1; fgets(line, sizeof line, f); no++) {
        line[strcspn(line, "\r\n")] = 0;
        char *eq = strstr(line, " = ");
        if (!eq || eq == line || !eq[3]) {
            fprintf(stderr, "%s: line %d: expected \"KEY = VALUE\", skipped (that shape is tuned again)\n", path, no);
            continue;
        }
        *eq = 0;
        keep(line, eq + 3);
    }
    fclose(f);
}

const char *tune_file_get(const char *key) {
    load();
    for (int i = tf.n - 1; i >= 0; i--)  // the last line of a key (a pick tuned again is appended after the one refused)
        if (!strcmp(tf.key[i], key)) return tf.value[i];
    return NULL;
}

void tune_file_put(const char *key, const char *value) {
    load();
    keep(key, value);
    const char *path = getenv("LLAVA_TUNE_FILE");
    if (!path || !*path) return;
    FILE *f = fopen(path, "a");
    if (!f || fprintf(f, "%s = %s\n", key, value) < 0 || fclose(f)) {
        if (!tf.write_failed) fprintf(stderr, "%s: cannot append the tuners' picks (they are kept for this run only)\n", path);
        tf.write_failed = 1;
    }
}

void tune_file_reset(void) {
    for (int i = 0; i < tf.n; i++) free(tf.key[i]), free(tf.value[i]);
    free(tf.key);
    free(tf.value);
    memset(&tf, 0, sizeof tf);
}
