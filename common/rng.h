// rng.h: deterministic random numbers for initialisation. Values are a pure function of
// (stream, index), computed in fixed-size chunks, so results do not depend on the thread count.
#pragma once
#include <stddef.h>
#include <stdint.h>

uint64_t splitmix64(uint64_t *state);
// A stream id from a seed and a name (e.g. the tensor name), so every tensor has its own stream.
uint64_t rng_stream(uint64_t seed, const char *name);
// out[i] ~ N(mean, std²), Box-Muller over a counter-based generator; OpenMP-parallel.
void rng_fill_normal(float *out, size_t n, uint64_t stream, float mean, float std);
