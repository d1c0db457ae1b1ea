// arena.c: see arena.h.
#include "arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

struct ArenaChunk {
    ArenaChunk *next;
    char data[];
};

enum { ALIGN = 64 };

void arena_init(Arena *a) { memset(a, 0, sizeof *a); }

void *arena_bytes(Arena *a, size_t n) {
    n = (n + ALIGN - 1) / ALIGN * ALIGN;
    if (n == 0) n = ALIGN;
    a->high += n;
    if (a->base && a->used + n <= a->cap) {
        void *p = a->base + a->used;
        a->used += n;
        memset(p, 0, n);
        return p;
    }
    // overflow: its own allocation, returned at the next reset (offset to keep the alignment)
    ArenaChunk *c = xmalloc(sizeof(ArenaChunk) + ALIGN + n);
    c->next = a->overflow;
    a->overflow = c;
    char *p = c->data + (ALIGN - (uintptr_t)c->data % ALIGN) % ALIGN;
    memset(p, 0, n);
    return p;
}

float *arena_floats(Arena *a, size_t n) { return arena_bytes(a, n * sizeof(float)); }

void arena_reset(Arena *a) {
    int overflowed = a->overflow != NULL;
    while (a->overflow) {
        ArenaChunk *n = a->overflow->next;
        free(a->overflow);
        a->overflow = n;
    }
    if (overflowed && a->high > a->cap) {  // one block for the largest step seen
        free(a->base);
        a->base = aligned_alloc(ALIGN, a->high);
        if (!a->base) die_internal("out of memory (%zu bytes of activations)", a->high);
        a->cap = a->high;
        a->grows++;
    }
    a->used = 0;
    a->high = 0;
}

void arena_free(Arena *a) {
    arena_reset(a);
    free(a->base);
    memset(a, 0, sizeof *a);
}
