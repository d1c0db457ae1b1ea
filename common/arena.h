// arena.h: one block of memory for the activations of a step. Allocation bumps a pointer and
// arena_reset() takes everything back at once. The block is sized by the largest step seen: when a
// step needs more than the block holds, the overflow is served by separate allocations for that step
// and, at the next reset, the block is replaced by one of the high-water size. So a run of steps of one
// shape bucket allocates once, and the step loop itself allocates nothing.
// The memory comes from host malloc, or from a backend's allocator (device memory for CUDA).
#pragma once
#include <stddef.h>

typedef struct {
    void *(*alloc)(size_t bytes);     // NULL: host memory
    void (*release)(void *p);
    void (*zero)(void *p, size_t bytes);
    void (*poison)(void *p, size_t bytes);  // 0xFF bytes: NaN as fp32 and bf16
    int poisoning;           // arena_uninit poisons (LLAVA_POISON=1 in the environment at init)
    char *base;
    size_t cap, used;        // bytes
    size_t high;             // high-water mark of the current step, overflow included
    void **overflow;         // this step's allocations beyond the block
    int noverflow, overflow_cap;
    int grows;               // how many times the block was (re)allocated: for tests
} Arena;

void arena_init(Arena *a);
// An arena over another allocator (alloc returns zeroed memory; zero clears a range; poison fills it
// with 0xFF bytes).
void arena_init_with(Arena *a, void *(*alloc)(size_t), void (*release)(void *), void (*zero)(void *, size_t),
                     void (*poison)(void *, size_t));
// Zero-filled, 64-byte aligned; never NULL (dies when memory is exhausted).
float *arena_floats(Arena *a, size_t n);
void *arena_bytes(Arena *a, size_t n);
// The same without the zero fill (one pass over the memory less), for an output that the next op
// writes whole. With LLAVA_POISON=1 (`make asan` sets it for every test) it is filled with NaNs
// instead, so that any read before that write shows in the results.
void *arena_uninit(Arena *a, size_t n);
void arena_reset(Arena *a);
void arena_free(Arena *a);
