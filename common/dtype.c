// dtype.c: see dtype.h.
#include "dtype.h"

static const struct { const char *name; size_t size; } dtypes[DT_COUNT] = {
    [DT_BOOL] = {"BOOL", 1}, [DT_U8] = {"U8", 1},   [DT_I8] = {"I8", 1},     [DT_U16] = {"U16", 2},
    [DT_I16] = {"I16", 2},   [DT_F16] = {"F16", 2}, [DT_BF16] = {"BF16", 2}, [DT_U32] = {"U32", 4},
    [DT_I32] = {"I32", 4},   [DT_F32] = {"F32", 4}, [DT_F64] = {"F64", 8},   [DT_U64] = {"U64", 8},
    [DT_I64] = {"I64", 8},   [DT_F8_E4M3] = {"F8_E4M3", 1}, [DT_F8_E5M2] = {"F8_E5M2", 1},
};

DType dtype_from_name(const char *name) {
    for (int t = 1; t < DT_COUNT; t++)
        if (strcmp(dtypes[t].name, name) == 0) return (DType)t;
    return DT_INVALID;
}

const char *dtype_name(DType t) { return (t > 0 && t < DT_COUNT) ? dtypes[t].name : "INVALID"; }
size_t dtype_size(DType t) { return (t > 0 && t < DT_COUNT) ? dtypes[t].size : 0; }

// IEEE half -> single, exact (subnormals, infinities and NaN payloads preserved).
float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        u = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        u = sign;
    } else {  // subnormal: normalise the mantissa
        exp = 113;
        while (!(man & 0x400u)) { man <<= 1; exp--; }
        u = sign | (exp << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float load_float(const void *src, DType t, size_t i) {
    switch (t) {
    case DT_F32: { float f; memcpy(&f, (const char *)src + 4 * i, 4); return f; }
    case DT_BF16: { uint16_t h; memcpy(&h, (const char *)src + 2 * i, 2); return bf16_to_f32(h); }
    default: { uint16_t h; memcpy(&h, (const char *)src + 2 * i, 2); return f16_to_f32(h); }
    }
}

int convert_floats(void *dst, DType dst_t, const void *src, DType src_t, size_t n) {
    if (src_t != DT_F32 && src_t != DT_BF16 && src_t != DT_F16) return -1;
    if (dst_t != DT_F32 && dst_t != DT_BF16) return -1;
    if (dst_t == src_t) { memcpy(dst, src, n * dtype_size(src_t)); return 0; }
    if (dst_t == DT_F32) {
        float *d = dst;
        for (size_t i = 0; i < n; i++) d[i] = load_float(src, src_t, i);
    } else {  // BF16 from F32 or F16: F16 -> F32 is exact, so a single rounding happens
        uint16_t *d = dst;
        for (size_t i = 0; i < n; i++) d[i] = f32_to_bf16(load_float(src, src_t, i));
    }
    return 0;
}
