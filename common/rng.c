// rng.c: see rng.h.
#include "rng.h"

#include <math.h>

#define CHUNK 4096  // values per independently seeded chunk (even, for Box-Muller pairs)

uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t rng_stream(uint64_t seed, const char *name) {
    uint64_t h = 1469598103934665603ull ^ seed;
    for (; *name; name++) h = (h ^ (uint8_t)*name) * 1099511628211ull;
    return splitmix64(&h);
}

void rng_fill_normal(float *out, size_t n, uint64_t stream, float mean, float std) {
    size_t nchunks = (n + CHUNK - 1) / CHUNK;
    const float two_pi = 6.283185307179586f;
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < nchunks; c++) {
        uint64_t st = stream ^ (0xd1b54a32d192ed03ull * (c + 1));
        size_t lo = c * CHUNK, hi = lo + CHUNK < n ? lo + CHUNK : n;
        for (size_t i = lo; i < hi; i += 2) {
            uint64_t r = splitmix64(&st);
            // two 24-bit uniforms; u1 in (0, 1] keeps log finite
            float u1 = (float)((r >> 40) + 1) * (1.0f / 16777216.0f);
            float u2 = (float)((r >> 16) & 0xffffff) * (1.0f / 16777216.0f);
            float rad = sqrtf(-2.0f * logf(u1)), s, co;
            sincosf(two_pi * u2, &s, &co);
            out[i] = mean + std * rad * co;
            if (i + 1 < hi) out[i + 1] = mean + std * rad * s;
        }
    }
}
