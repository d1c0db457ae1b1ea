// strmap.c: see strmap.h.
#include "strmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static uint64_t fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

void strmap_init(StrMap *m) { memset(m, 0, sizeof *m); }

void strmap_free(StrMap *m) {
    for (size_t i = 0; i < m->cap; i++) free(m->keys[i]);
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

static void grow(StrMap *m) {
    size_t old_cap = m->cap;
    char **old_keys = m->keys;
    int *old_vals = m->vals;
    m->cap = old_cap ? old_cap * 2 : 64;
    m->keys = xcalloc(m->cap, sizeof *m->keys);
    m->vals = xcalloc(m->cap, sizeof *m->vals);
    m->len = 0;
    for (size_t i = 0; i < old_cap; i++) {
        if (!old_keys[i]) continue;
        size_t j = fnv1a(old_keys[i]) & (m->cap - 1);
        while (m->keys[j]) j = (j + 1) & (m->cap - 1);
        m->keys[j] = old_keys[i];
        m->vals[j] = old_vals[i];
        m->len++;
    }
    free(old_keys);
    free(old_vals);
}

int strmap_put(StrMap *m, const char *key, int val) {
    if (2 * (m->len + 1) > m->cap) grow(m);
    size_t j = fnv1a(key) & (m->cap - 1);
    while (m->keys[j]) {
        if (strcmp(m->keys[j], key) == 0) return -1;
        j = (j + 1) & (m->cap - 1);
    }
    m->keys[j] = xstrdup(key);
    m->vals[j] = val;
    m->len++;
    return 0;
}

int strmap_get(const StrMap *m, const char *key) {
    if (!m->cap) return -1;
    size_t j = fnv1a(key) & (m->cap - 1);
    while (m->keys[j]) {
        if (strcmp(m->keys[j], key) == 0) return m->vals[j];
        j = (j + 1) & (m->cap - 1);
    }
    return -1;
}
