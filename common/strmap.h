// strmap.h: string -> int map (open addressing, FNV-1a), for looking tensors up by name.
#pragma once
#include <stddef.h>

typedef struct {
    char **keys;   // owned copies; NULL = empty slot
    int *vals;
    size_t cap, len;
} StrMap;

void strmap_init(StrMap *m);
void strmap_free(StrMap *m);
// Returns 0 when inserted, -1 when the key was already present (the old value is kept).
int strmap_put(StrMap *m, const char *key, int val);
// Returns the value, or -1 when absent.
int strmap_get(const StrMap *m, const char *key);
