// Unit tests: the activation arena (common/arena.h) grows once to the largest step of a shape bucket
// and then serves every step from that one block; allocations are zeroed and 64-byte aligned.
#include <stdint.h>
#include <string.h>

#include "../../common/arena.h"
#include "check.h"

static void step(Arena *a, size_t n_tensors, size_t each) {  // one "step": n tensors, dirtied like real use
    arena_reset(a);
    for (size_t i = 0; i < n_tensors; i++) {
        float *p = arena_floats(a, each);
        CHECK((uintptr_t)p % 64 == 0);
        int zero = 1;
        for (size_t j = 0; j < each; j++) zero &= p[j] == 0.0f;
        CHECK(zero);
        memset(p, 0xAB, each * sizeof(float));
    }
}

static void grows_once_per_bucket(void) {
    Arena a;
    arena_init(&a);
    step(&a, 10, 1000);                 // first step: served by overflow allocations
    CHECK_EQ_INT(a.grows, 0);
    step(&a, 10, 1000);                 // the reset before it sized the block
    CHECK_EQ_INT(a.grows, 1);
    char *base = a.base;
    for (int i = 0; i < 5; i++) step(&a, 10, 1000);
    CHECK_EQ_INT(a.grows, 1);           // same bucket: no new block
    CHECK(a.base == base);
    step(&a, 5, 999);                   // a smaller step fits
    step(&a, 5, 999);
    CHECK_EQ_INT(a.grows, 1);
    step(&a, 20, 1000);                 // a larger bucket: one more block, then stable
    step(&a, 20, 1000);
    step(&a, 20, 1000);
    CHECK_EQ_INT(a.grows, 2);
    CHECK(a.cap >= 20 * 4000);
    arena_free(&a);
}

static void odd_sizes_stay_aligned(void) {
    Arena a;
    arena_init(&a);
    for (int s = 0; s < 3; s++) {
        arena_reset(&a);
        for (size_t n = 0; n < 50; n++) {
            char *p = arena_bytes(&a, n * 7 + 1);
            CHECK((uintptr_t)p % 64 == 0);
            memset(p, 1, n * 7 + 1);
        }
    }
    arena_free(&a);
}

// arena_uninit skips the zero fill; with poisoning on it fills NaNs instead, both from the block and
// from overflow allocations (which come zeroed from the allocator), so a read-before-write shows
static void uninit_is_poisoned_when_asked(void) {
    Arena a;
    arena_init(&a);
    a.poisoning = 1;
    for (int s = 0; s < 3; s++) {  // step 0 from overflow allocations, then from the block
        arena_reset(&a);
        float *p = arena_uninit(&a, 1000 * sizeof(float));
        CHECK((uintptr_t)p % 64 == 0);
        int nan = 1;
        for (int j = 0; j < 1000; j++) nan &= p[j] != p[j];
        CHECK(nan);
        memset(p, 0xAB, 1000 * sizeof(float));
        float *z = arena_floats(&a, 1000);  // the zeroed kind stays zeroed
        int zero = 1;
        for (int j = 0; j < 1000; j++) zero &= z[j] == 0.0f;
        CHECK(zero);
        memset(z, 0xAB, 1000 * sizeof(float));
    }
    CHECK_EQ_INT(a.grows, 1);
    arena_free(&a);
}

int main(void) {
    RUN(uninit_is_poisoned_when_asked);
    RUN(grows_once_per_bucket);
    RUN(odd_sizes_stay_aligned);
    return CHECK_DONE();
}
