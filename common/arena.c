// arena.c: see arena.h.
#include "arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

enum { ALIGN = 64 };

static void *host_alloc(size_t bytes) {
    void *p = aligned_alloc(ALIGN, (bytes + ALIGN - 1) / ALIGN * ALIGN);
    if (!p) die_internal("out of memory (%zu bytes of activations)", bytes);
    memset(p, 0, bytes);
    return p;
}
static void host_zero(void *p, size_t bytes) { memset(p, 0, bytes); }
static void host_poison(void *p, size_t bytes) { memset(p, 0xFF, bytes); }

void arena_init(Arena *a) { arena_init_with(a, host_alloc, free, host_zero, host_poison); }

void arena_init_with(Arena *a, void *(*alloc)(size_t), void (*release)(void *), void (*zero)(void *, size_t),
                     void (*poison)(void *, size_t)) {
    memset(a, 0, sizeof *a);
    a->alloc = alloc;
    a->release = release;
    a->zero = zero;
    a->poison = poison;
    const char *env = getenv("LLAVA_POISON");
    a->poisoning = env && env[0] && strcmp(env, "0");
}

// n bytes (rounded up to the alignment), *fresh set when they come zeroed from the allocator
static void *take(Arena *a, size_t n, int *fresh) {
    a->high += n;
    *fresh = 0;
    if (a->base && a->used + n <= a->cap) {
        void *p = a->base + a->used;
        a->used += n;
        return p;
    }
    // overflow: its own allocation (aligned by the allocator), returned at the next reset
    if (a->noverflow == a->overflow_cap)
        a->overflow = xrealloc(a->overflow, (size_t)(a->overflow_cap = a->overflow_cap ? 2 * a->overflow_cap : 64) * sizeof(void *));
    *fresh = 1;
    return a->overflow[a->noverflow++] = a->alloc(n);
}

static size_t rounded(size_t n) { return n ? (n + ALIGN - 1) / ALIGN * ALIGN : ALIGN; }

void *arena_bytes(Arena *a, size_t n) {
    n = rounded(n);
    int fresh;
    void *p = take(a, n, &fresh);
    if (!fresh) a->zero(p, n);
    return p;
}

void *arena_uninit(Arena *a, size_t n) {
    n = rounded(n);
    int fresh;
    void *p = take(a, n, &fresh);
    if (a->poisoning) a->poison(p, n);
    return p;
}

float *arena_floats(Arena *a, size_t n) { return arena_bytes(a, n * sizeof(float)); }

void arena_reset(Arena *a) {
    int overflowed = a->noverflow > 0;
    for (int i = 0; i < a->noverflow; i++) a->release(a->overflow[i]);
    a->noverflow = 0;
    if (overflowed && a->high > a->cap) {  // one block for the largest step seen
        if (a->base) a->release(a->base);
        a->base = a->alloc(a->high);
        a->cap = a->high;
        a->grows++;
    }
    a->used = 0;
    a->high = 0;
}

void arena_free(Arena *a) {
    arena_reset(a);
    if (a->base) a->release(a->base);
    free(a->overflow);
    memset(a, 0, sizeof *a);
}
