// dtype.h: tensor element types as safetensors names them, and the float conversions between them.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum {
    DT_INVALID = 0,
    DT_BOOL, DT_U8, DT_I8, DT_U16, DT_I16, DT_F16, DT_BF16, DT_U32, DT_I32, DT_F32,
    DT_F64, DT_U64, DT_I64, DT_F8_E4M3, DT_F8_E5M2,
    DT_COUNT
} DType;

// "BF16" -> DT_BF16; DT_INVALID for a name safetensors does not define.
DType dtype_from_name(const char *name);
const char *dtype_name(DType t);
size_t dtype_size(DType t);
static inline int dtype_is_float(DType t) { return t == DT_F16 || t == DT_BF16 || t == DT_F32 || t == DT_F64; }

// fp32 -> bf16, round to nearest even on the top 16 bits; every NaN becomes the quiet NaN 0x7FC0
// (PyTorch semantics, spec/checkpoints.md §1.2).
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float f16_to_f32(uint16_t h);

// Convert n elements between float types (F32, BF16, F16 as source; F32 or BF16 as destination).
// Returns 0, or -1 when the pair is not supported.
int convert_floats(void *dst, DType dst_t, const void *src, DType src_t, size_t n);
