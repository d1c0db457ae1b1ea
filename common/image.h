// image.h: image decoding and the Qwen2-VL preprocessing of LLaVA-OV-1.5 (spec/data.md §5):
// decode to 8-bit RGB as PIL does, smart_resize, PIL's bicubic resize, CLIP normalisation, and
// patch rows of 588 values in the 2×2-block order.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define IMG_FACTOR 28      // patch 14 × merge 2
#define IMG_PATCH 14
#define IMG_PATCH_DIM 588  // 3 × 14 × 14
#define IMG_MAX_RATIO 200
#define IMG_MIN_SIDE 14    // smaller than one patch: rejected (a 1×1 image carries nothing)

typedef struct {
    int w, h;
    uint8_t *rgb;  // h × w × 3, row-major
} Image;

void image_free(Image *img);

// Decodes JPEG (incl. grey and Adobe CMYK), PNG (grey, palette, 16-bit, alpha) or WebP to RGB.
// RGBA is composited on white as qwen-vl-utils' to_rgb does; other alpha is dropped as PIL's
// convert("RGB") does; 16-bit grey is clipped to 255 as PIL's I -> RGB conversion does.
// `name` labels errors ("photo.jpg: truncated JPEG ...").
int image_decode(const uint8_t *data, size_t n, const char *name, Image *img, Err *e);
int image_decode_file(const char *path, Image *img, Err *e);
// Width and height from the header alone, without decoding.
int image_probe(const uint8_t *data, size_t n, const char *name, int *w, int *h, Err *e);
int image_probe_file(const char *path, int *w, int *h, Err *e);

// qwen-vl-utils smart_resize with Python's round-half-to-even and float evaluation order.
// Fails (with e naming `name`) for an aspect ratio over 200 or a side under IMG_MIN_SIDE.
int smart_resize(int h, int w, int64_t min_pixels, int64_t max_pixels, int *oh, int *ow, const char *name, Err *e);
// LLM tokens of an image of resized size oh × ow: (oh/28)·(ow/28).
static inline int image_llm_tokens(int oh, int ow) { return (oh / IMG_FACTOR) * (ow / IMG_FACTOR); }

// PIL's Image.resize((ow, oh), BICUBIC) on an 8-bit RGB image (Pillow Resample.c semantics).
void image_resize_bicubic(const Image *in, int ow, int oh, Image *out);

// Rescale 1/255, CLIP mean/std, and flatten into (h/14)·(w/14) rows of 588 floats in the 2×2-block
// order. img's sides must be multiples of 28.
void image_to_patches(const Image *img, float *out);

// All of it: decode, smart_resize, resize, normalise, patchify. *rows = (oh/14)·(ow/14); the caller
// frees *pixels.
int image_preprocess(const uint8_t *data, size_t n, const char *name, int64_t min_pixels, int64_t max_pixels,
                     float **pixels, int *oh, int *ow, Err *e);

// Writes pixel_values [gh·gw, 588] F32 and grid_thw [1, 3] I32 to PATH (a name ending in
// ".safetensors"; written to a temporary name and renamed into place).
int image_write_pixels(const char *path, const float *pixels, int gh, int gw, Err *e);

// Encoders for synthetic data (image_encode.c). Caller frees the bytes.
uint8_t *image_encode_jpeg(const Image *img, int quality, size_t *n);
uint8_t *image_encode_png(const Image *img, size_t *n);
