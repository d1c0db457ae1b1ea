// Unit tests: fp32 <-> bf16 round to nearest even (spec/checkpoints.md §1.2) and f16 -> f32.
// Expected bit patterns are worked out by hand from IEEE-754, not by the code under test.
#include <math.h>
#include <stdint.h>

#include "../../common/dtype.h"
#include "check.h"

static float from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static void bf16_round_to_nearest_even(void) {
    CHECK_EQ_INT(f32_to_bf16(1.0f), 0x3F80);
    CHECK_EQ_INT(f32_to_bf16(-2.0f), 0xC000);
    CHECK_EQ_INT(f32_to_bf16(from_bits(0x3F808000)), 0x3F80);  // exact tie, even below
    CHECK_EQ_INT(f32_to_bf16(from_bits(0x3F818000)), 0x3F82);  // exact tie, odd below: up
    CHECK_EQ_INT(f32_to_bf16(from_bits(0x3F808001)), 0x3F81);  // just above the tie
    CHECK_EQ_INT(f32_to_bf16(from_bits(0x3F807FFF)), 0x3F80);  // just below the tie
    CHECK_EQ_INT(f32_to_bf16(from_bits(0x7F7FFFFF)), 0x7F80);  // FLT_MAX rounds to +inf
    CHECK_EQ_INT(f32_to_bf16(INFINITY), 0x7F80);
    CHECK_EQ_INT(f32_to_bf16(-INFINITY), 0xFF80);
    CHECK_EQ_INT(f32_to_bf16(NAN), 0x7FC0);
    CHECK_EQ_INT(f32_to_bf16(from_bits(0xFFC00001)), 0x7FC0);   // any NaN -> canonical quiet NaN
    CHECK_EQ_INT(f32_to_bf16(from_bits(0x00008000)), 0x0000);   // subnormal tie to even zero
    CHECK_EQ_INT(f32_to_bf16(from_bits(0x00018000)), 0x0002);   // subnormal tie, odd below: up
    CHECK_EQ_INT(f32_to_bf16(-0.0f), 0x8000);
}

static void bf16_widening_is_exact(void) {
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = bf16_to_f32((uint16_t)h);
        if (bits(f) != h << 16) { CHECK(bits(f) == h << 16); return; }
        if (!isnan(f) && f32_to_bf16(f) != h) { CHECK(f32_to_bf16(f) == h); return; }  // round trip
    }
}

static void f16_to_f32_known_values(void) {
    CHECK(f16_to_f32(0x3C00) == 1.0f);
    CHECK(f16_to_f32(0xC000) == -2.0f);
    CHECK(f16_to_f32(0x7BFF) == 65504.0f);
    CHECK(f16_to_f32(0x0001) == ldexpf(1.0f, -24));  // smallest subnormal
    CHECK(f16_to_f32(0x03FF) == ldexpf(1023.0f, -24));  // largest subnormal
    CHECK(f16_to_f32(0x3555) == 0.333251953125f);
    CHECK(isinf(f16_to_f32(0x7C00)) && f16_to_f32(0x7C00) > 0);
    CHECK(isnan(f16_to_f32(0x7E00)));
    CHECK(bits(f16_to_f32(0x8000)) == 0x80000000u);
}

static void convert_floats_pairs(void) {
    float src[3] = {1.0f, from_bits(0x3F818000), -3.5f};
    uint16_t b[3];
    float back[3];
    CHECK(convert_floats(b, DT_BF16, src, DT_F32, 3) == 0);
    CHECK_EQ_INT(b[1], 0x3F82);
    CHECK(convert_floats(back, DT_F32, b, DT_BF16, 3) == 0);
    CHECK(back[0] == 1.0f && back[2] == -3.5f);
    uint16_t h[2] = {0x3C00, 0x3555};
    CHECK(convert_floats(b, DT_BF16, h, DT_F16, 2) == 0);
    CHECK_EQ_INT(b[0], 0x3F80);
    CHECK_EQ_INT(b[1], f32_to_bf16(0.333251953125f));
    CHECK(convert_floats(b, DT_I32, src, DT_F32, 1) == -1);
}

static void dtype_names(void) {
    CHECK(dtype_from_name("BF16") == DT_BF16 && dtype_size(DT_BF16) == 2);
    CHECK(dtype_from_name("F8_E4M3") == DT_F8_E4M3 && dtype_size(DT_F8_E4M3) == 1);
    CHECK(dtype_from_name("I64") == DT_I64 && dtype_size(DT_I64) == 8);
    CHECK(dtype_from_name("bf16") == DT_INVALID);
    CHECK(dtype_from_name("F99") == DT_INVALID);
}

int main(void) {
    RUN(bf16_round_to_nearest_even);
    RUN(bf16_widening_is_exact);
    RUN(f16_to_f32_known_values);
    RUN(convert_floats_pairs);
    RUN(dtype_names);
    return CHECK_DONE();
}
