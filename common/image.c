// image.c: see image.h.
#include "image.h"

#include <jpeglib.h>
#include <jerror.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <webp/decode.h>

#include "safetensors.h"

void image_free(Image *img) {
    free(img->rgb);
    img->rgb = NULL;
    img->w = img->h = 0;
}

static int is_jpeg(const uint8_t *d, size_t n) { return n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF; }
static int is_png(const uint8_t *d, size_t n) { return n >= 8 && !memcmp(d, "\x89PNG\r\n\x1a\n", 8); }
static int is_webp(const uint8_t *d, size_t n) { return n >= 12 && !memcmp(d, "RIFF", 4) && !memcmp(d + 8, "WEBP", 4); }

static int not_an_image(const char *name, size_t n, Err *e) {
    if (n == 0) err_set(e, "%s: empty file, expected a JPEG, PNG or WebP image", name);
    else err_set(e, "%s: not a JPEG, PNG or WebP image (unknown signature)", name);
    return -1;
}

// Pillow's rounding division by 255 (DIV255 / MULDIV255).
static inline int div255(int a) { int t = a + 128; return ((t >> 8) + t) >> 8; }

// ---- JPEG (libjpeg-turbo; defaults = PIL's: ISLOW DCT, fancy upsampling) ----------------------

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
    int truncated;
} JpegErr;

static void jpeg_fail(j_common_ptr c) {
    JpegErr *je = (JpegErr *)c->err;
    c->err->format_message(c, je->msg);
    longjmp(je->jb, 1);
}
static void jpeg_note(j_common_ptr c, int level) {
    JpegErr *je = (JpegErr *)c->err;
    if (level < 0 && c->err->msg_code == JWRN_JPEG_EOF) je->truncated = 1;  // PIL: "image file is truncated"
}

static int jpeg_run(const uint8_t *d, size_t n, const char *name, Image *img, int probe_only, int *pw, int *ph, Err *e) {
    struct jpeg_decompress_struct c;
    JpegErr je;
    memset(&je, 0, sizeof je);
    c.err = jpeg_std_error(&je.pub);
    je.pub.error_exit = jpeg_fail;
    je.pub.emit_message = jpeg_note;
    uint8_t *volatile rgb = NULL;
    uint8_t *volatile row = NULL;
    if (setjmp(je.jb)) {
        err_set(e, "%s: corrupt JPEG (%s)", name, je.msg);
        jpeg_destroy_decompress(&c);
        free(rgb);
        free(row);
        return -1;
    }
    jpeg_create_decompress(&c);
    jpeg_mem_src(&c, d, (unsigned long)n);
    jpeg_read_header(&c, TRUE);
    if (probe_only) {
        *pw = (int)c.image_width;
        *ph = (int)c.image_height;
        jpeg_destroy_decompress(&c);
        return 0;
    }
    int cmyk = c.jpeg_color_space == JCS_CMYK || c.jpeg_color_space == JCS_YCCK;
    c.out_color_space = cmyk ? JCS_CMYK : c.num_components == 1 ? JCS_GRAYSCALE : JCS_RGB;
    int adobe_inverted = cmyk && c.saw_Adobe_marker;  // Photoshop stores CMYK inverted; PIL reads "CMYK;I"
    jpeg_start_decompress(&c);
    int w = (int)c.output_width, h = (int)c.output_height, nc = c.output_components;
    rgb = xmalloc((size_t)w * (size_t)h * 3);
    row = xmalloc((size_t)w * (size_t)nc);
    while (c.output_scanline < c.output_height) {
        int y = (int)c.output_scanline;
        JSAMPROW rows[1] = {row};
        jpeg_read_scanlines(&c, rows, 1);
        uint8_t *o = rgb + (size_t)y * (size_t)w * 3;
        for (int x = 0; x < w; x++) {
            if (nc == 1) {
                o[3 * x] = o[3 * x + 1] = o[3 * x + 2] = row[x];
            } else if (nc == 3) {
                memcpy(o + 3 * x, row + 3 * x, 3);
            } else {  // Pillow cmyk2rgb: channel = nk - nk·c/255, nk = 255 - k
                int v[4];
                for (int k = 0; k < 4; k++) v[k] = adobe_inverted ? 255 - row[4 * x + k] : row[4 * x + k];
                int nk = 255 - v[3];
                for (int k = 0; k < 3; k++) {
                    int r = nk - div255(v[k] * nk);
                    o[3 * x + k] = (uint8_t)(r < 0 ? 0 : r > 255 ? 255 : r);
                }
            }
        }
    }
    if (je.truncated) {
        snprintf(je.msg, sizeof je.msg, "premature end of data: the file is truncated");
        longjmp(je.jb, 1);
    }
    jpeg_finish_decompress(&c);
    jpeg_destroy_decompress(&c);
    free(row);
    img->w = w;
    img->h = h;
    img->rgb = rgb;
    return 0;
}

// ---- PNG (libpng) -------------------------------------------------------------------------------

typedef struct { const uint8_t *d; size_t n, pos; char msg[256]; } PngSrc;

static void png_read_mem(png_structp p, png_bytep out, png_size_t len) {
    PngSrc *s = png_get_io_ptr(p);
    if (len > s->n - s->pos) png_error(p, "unexpected end of file (truncated)");
    memcpy(out, s->d + s->pos, len);
    s->pos += len;
}
static void png_fail(png_structp p, png_const_charp msg) {
    PngSrc *s = png_get_error_ptr(p);
    snprintf(s->msg, sizeof s->msg, "%s", msg);
    png_longjmp(p, 1);
}
static void png_quiet(png_structp p, png_const_charp msg) { (void)p; (void)msg; }

static int png_run(const uint8_t *d, size_t n, const char *name, Image *img, int probe_only, int *pw, int *ph, Err *e) {
    PngSrc src = {d, n, 0, ""};
    png_structp p = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_fail, png_quiet);
    png_infop info = png_create_info_struct(p);
    uint8_t *volatile rgb = NULL;
    png_bytep *volatile rows = NULL;
    uint8_t *volatile buf = NULL;
    if (setjmp(png_jmpbuf(p))) {
        err_set(e, "%s: corrupt PNG (%s)", name, src.msg);
        png_destroy_read_struct(&p, &info, NULL);
        free(rgb);
        free(rows);
        free(buf);
        return -1;
    }
    png_set_read_fn(p, &src, png_read_mem);
    png_read_info(p, info);
    int w = (int)png_get_image_width(p, info), h = (int)png_get_image_height(p, info);
    if (probe_only) {
        *pw = w;
        *ph = h;
        png_destroy_read_struct(&p, &info, NULL);
        return 0;
    }
    int ct = png_get_color_type(p, info), depth = png_get_bit_depth(p, info);
    int grey16 = depth == 16 && (ct == PNG_COLOR_TYPE_GRAY || ct == PNG_COLOR_TYPE_GRAY_ALPHA);
    // PIL keeps palette transparency and grey alpha out of convert("RGB"); only RGBA is composited.
    if (ct == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(p);
    if ((ct == PNG_COLOR_TYPE_GRAY || ct == PNG_COLOR_TYPE_GRAY_ALPHA) && depth < 8) png_set_expand_gray_1_2_4_to_8(p);
    if (ct == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_strip_alpha(p);
    if (depth == 16 && !grey16) png_set_strip_16(p);  // PIL's RGB;16B / RGBA;16B keep the high byte
    if (depth == 16 && grey16) png_set_swap(p);      // read native-endian uint16 to clip like PIL's I -> RGB
    png_set_interlace_handling(p);
    png_read_update_info(p, info);
    int channels = png_get_channels(p, info);
    size_t rb = png_get_rowbytes(p, info);
    buf = xmalloc(rb * (size_t)h);
    rows = xmalloc((size_t)h * sizeof(png_bytep));
    for (int y = 0; y < h; y++) rows[y] = buf + (size_t)y * rb;
    png_read_image(p, rows);
    png_read_end(p, NULL);
    rgb = xmalloc((size_t)w * (size_t)h * 3);
    for (int y = 0; y < h; y++) {
        const uint8_t *r = rows[y];
        uint8_t *o = rgb + (size_t)y * (size_t)w * 3;
        for (int x = 0; x < w; x++) {
            if (grey16) {
                uint16_t v;
                memcpy(&v, r + 2 * x, 2);
                o[3 * x] = o[3 * x + 1] = o[3 * x + 2] = (uint8_t)(v > 255 ? 255 : v);
            } else if (channels == 1) {
                o[3 * x] = o[3 * x + 1] = o[3 * x + 2] = r[x];
            } else if (channels == 3) {
                memcpy(o + 3 * x, r + 3 * x, 3);
            } else {  // RGBA over white: Pillow paste with mask, DIV255(bg·(255−a) + fg·a)
                int a = r[4 * x + 3];
                for (int k = 0; k < 3; k++) o[3 * x + k] = (uint8_t)div255(255 * (255 - a) + r[4 * x + k] * a);
            }
        }
    }
    png_destroy_read_struct(&p, &info, NULL);
    free(rows);
    free(buf);
    img->w = w;
    img->h = h;
    img->rgb = rgb;
    return 0;
}

// ---- WebP ---------------------------------------------------------------------------------------

static int webp_run(const uint8_t *d, size_t n, const char *name, Image *img, int probe_only, int *pw, int *ph, Err *e) {
    WebPBitstreamFeatures f;
    if (WebPGetFeatures(d, n, &f) != VP8_STATUS_OK) { err_set(e, "%s: corrupt WebP header", name); return -1; }
    if (probe_only) { *pw = f.width; *ph = f.height; return 0; }
    int w, h;
    uint8_t *px = f.has_alpha ? WebPDecodeRGBA(d, n, &w, &h) : WebPDecodeRGB(d, n, &w, &h);
    if (!px) { err_set(e, "%s: corrupt or truncated WebP data", name); return -1; }
    uint8_t *rgb = xmalloc((size_t)w * (size_t)h * 3);
    size_t np = (size_t)w * (size_t)h;
    if (!f.has_alpha) memcpy(rgb, px, np * 3);
    else
        for (size_t i = 0; i < np; i++) {
            int a = px[4 * i + 3];
            for (int k = 0; k < 3; k++) rgb[3 * i + k] = (uint8_t)div255(255 * (255 - a) + px[4 * i + k] * a);
        }
    WebPFree(px);
    img->w = w;
    img->h = h;
    img->rgb = rgb;
    return 0;
}

// ---- dispatch -----------------------------------------------------------------------------------

static int run(const uint8_t *d, size_t n, const char *name, Image *img, int probe, int *w, int *h, Err *e) {
    int rc;
    if (is_jpeg(d, n)) rc = jpeg_run(d, n, name, img, probe, w, h, e);
    else if (is_png(d, n)) rc = png_run(d, n, name, img, probe, w, h, e);
    else if (is_webp(d, n)) rc = webp_run(d, n, name, img, probe, w, h, e);
    else return not_an_image(name, n, e);
    int ww = probe ? *w : img->w, hh = probe ? *h : img->h;
    if (rc == 0 && (ww <= 0 || hh <= 0 || (int64_t)ww * hh > (int64_t)1 << 30)) {
        err_set(e, "%s: image size %dx%d is empty or too large", name, ww, hh);
        if (!probe) image_free(img);
        return -1;
    }
    return rc;
}

int image_decode(const uint8_t *data, size_t n, const char *name, Image *img, Err *e) {
    memset(img, 0, sizeof *img);
    return run(data, n, name, img, 0, NULL, NULL, e);
}
int image_probe(const uint8_t *data, size_t n, const char *name, int *w, int *h, Err *e) {
    return run(data, n, name, NULL, 1, w, h, e);
}

static uint8_t *slurp(const char *path, size_t *n, Err *e) {
    size_t len;
    char *s = read_text_file(path, &len, e);
    *n = len;
    return (uint8_t *)s;
}
int image_decode_file(const char *path, Image *img, Err *e) {
    size_t n;
    uint8_t *d = slurp(path, &n, e);
    if (!d) return -1;
    int rc = image_decode(d, n, path, img, e);
    free(d);
    return rc;
}
int image_probe_file(const char *path, int *w, int *h, Err *e) {
    size_t n;
    uint8_t *d = slurp(path, &n, e);
    if (!d) return -1;
    int rc = image_probe(d, n, path, w, h, e);
    free(d);
    return rc;
}

// ---- smart_resize -------------------------------------------------------------------------------

int smart_resize(int h, int w, int64_t min_pixels, int64_t max_pixels, int *oh, int *ow, const char *name, Err *e) {
    if (h < IMG_MIN_SIDE || w < IMG_MIN_SIDE) {
        err_set(e, "%s: image %dx%d (w x h) is smaller than one %d-pixel patch", name, w, h, IMG_MIN_SIDE);
        return -1;
    }
    if ((double)(h > w ? h : w) / (double)(h > w ? w : h) > IMG_MAX_RATIO) {
        err_set(e, "%s: aspect ratio of %dx%d exceeds %d", name, w, h, IMG_MAX_RATIO);
        return -1;
    }
    const double f = IMG_FACTOR;
    // Python round() is half-to-even: rint() in the default rounding mode (pitfalls.md #41).
    double hb = fmax(f, rint((double)h / f) * f), wb = fmax(f, rint((double)w / f) * f);
    if (hb * wb > (double)max_pixels) {
        double beta = sqrt((double)((int64_t)h * w) / (double)max_pixels);
        hb = fmax(f, floor((double)h / beta / f) * f);  // h / β / 28: two divisions, as Python evaluates it
        wb = fmax(f, floor((double)w / beta / f) * f);
    } else if (hb * wb < (double)min_pixels) {
        double beta = sqrt((double)min_pixels / (double)((int64_t)h * w));
        hb = ceil((double)h * beta / f) * f;
        wb = ceil((double)w * beta / f) * f;
    }
    *oh = (int)hb;
    *ow = (int)wb;
    return 0;
}

// ---- Pillow's bicubic resampling ----------------------------------------------------------------

#define PRECISION_BITS (32 - 8 - 2)

static double bicubic(double x) {  // Keys kernel, a = -0.5
    const double a = -0.5;
    x = fabs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

// Fixed-point weights for every output index: bounds (first input, count) and ksize weights each.
static int precompute(int in_size, int out_size, int **bounds, int32_t **kk) {
    double scale = (double)in_size / out_size, fs = scale < 1.0 ? 1.0 : scale;  // antialias when shrinking
    double support = 2.0 * fs;
    int ksize = (int)ceil(support) * 2 + 1;
    double *w = xmalloc((size_t)ksize * sizeof(double));
    *bounds = xmalloc((size_t)out_size * 2 * sizeof(int));
    *kk = xcalloc((size_t)out_size * (size_t)ksize, sizeof(int32_t));
    for (int i = 0; i < out_size; i++) {
        double center = (i + 0.5) * scale, ww = 0.0, ss = 1.0 / fs;
        int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
        if (xmin < 0) xmin = 0;
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (int x = 0; x < xmax; x++) { w[x] = bicubic((x + xmin - center + 0.5) * ss); ww += w[x]; }
        for (int x = 0; x < xmax; x++) {
            double v = ww != 0.0 ? w[x] / ww : w[x];
            (*kk)[(size_t)i * ksize + x] = (int32_t)(v < 0 ? -0.5 + v * (1 << PRECISION_BITS) : 0.5 + v * (1 << PRECISION_BITS));
        }
        (*bounds)[2 * i] = xmin;
        (*bounds)[2 * i + 1] = xmax;
    }
    free(w);
    return ksize;
}

static inline uint8_t clip8(int32_t v) {
    if (v >= (1 << PRECISION_BITS << 8)) return 255;
    if (v <= 0) return 0;
    return (uint8_t)(v >> PRECISION_BITS);
}

void image_resize_bicubic(const Image *in, int ow, int oh, Image *out) {
    int *bh, *bv;
    int32_t *kh, *kv;
    int ksh = precompute(in->w, ow, &bh, &kh), ksv = precompute(in->h, oh, &bv, &kv);
    // Horizontal pass first, only over the source rows the vertical pass reads (Pillow's order).
    int y0 = bv[0], y1 = bv[2 * (oh - 1)] + bv[2 * (oh - 1) + 1];
    int need_h = ow != in->w, need_v = oh != in->h;
    const uint8_t *src = in->rgb;
    int src_w = in->w, src_y0 = 0;
    uint8_t *tmp = NULL;
    if (need_h) {
        int th = need_v ? y1 - y0 : in->h, ty0 = need_v ? y0 : 0;
        tmp = xmalloc((size_t)ow * (size_t)th * 3);
#pragma omp parallel for schedule(static)
        for (int y = 0; y < th; y++) {
            const uint8_t *r = in->rgb + (size_t)(y + ty0) * in->w * 3;
            uint8_t *o = tmp + (size_t)y * ow * 3;
            for (int x = 0; x < ow; x++) {
                const int32_t *k = kh + (size_t)x * ksh;
                int xmin = bh[2 * x], xn = bh[2 * x + 1];
                for (int c = 0; c < 3; c++) {
                    int32_t ss = 1 << (PRECISION_BITS - 1);
                    for (int j = 0; j < xn; j++) ss += r[(xmin + j) * 3 + c] * k[j];
                    o[x * 3 + c] = clip8(ss);
                }
            }
        }
        src = tmp;
        src_w = ow;
        src_y0 = ty0;
    }
    out->w = ow;
    out->h = oh;
    out->rgb = xmalloc((size_t)ow * (size_t)oh * 3);
    if (!need_v) {
        memcpy(out->rgb, src, (size_t)ow * oh * 3);
    } else {
#pragma omp parallel for schedule(static)
        for (int y = 0; y < oh; y++) {
            const int32_t *k = kv + (size_t)y * ksv;
            int ymin = bv[2 * y] - src_y0, yn = bv[2 * y + 1];
            uint8_t *o = out->rgb + (size_t)y * ow * 3;
            for (int x = 0; x < ow * 3; x++) {
                int32_t ss = 1 << (PRECISION_BITS - 1);
                for (int j = 0; j < yn; j++) ss += src[(size_t)(ymin + j) * src_w * 3 + x] * k[j];
                o[x] = clip8(ss);
            }
        }
    }
    free(tmp);
    free(bh); free(bv); free(kh); free(kv);
}

// ---- normalise + patchify -----------------------------------------------------------------------

static const double CLIP_MEAN[3] = {0.48145466, 0.4578275, 0.40821073};
static const double CLIP_STD[3] = {0.26862954, 0.26130258, 0.27577711};

void image_to_patches(const Image *img, float *out) {
    // value of an 8-bit level v in channel c: (v/255 − mean_c)/std_c
    float lut[3][256];
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++) lut[c][v] = (float)(((double)(float)(v * (1.0 / 255.0)) - CLIP_MEAN[c]) / CLIP_STD[c]);
    int gh = img->h / IMG_PATCH, gw = img->w / IMG_PATCH;
    // row r = ((bh·gw/2 + bw)·2 + dy)·2 + dx; column c·196 + ky·14 + kx
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < gh / 2; bh++)
        for (int bw = 0; bw < gw / 2; bw++)
            for (int dy = 0; dy < 2; dy++)
                for (int dx = 0; dx < 2; dx++) {
                    size_t r = ((size_t)(bh * (gw / 2) + bw) * 2 + dy) * 2 + dx;
                    int py = 2 * bh + dy, px = 2 * bw + dx;
                    float *o = out + r * IMG_PATCH_DIM;
                    for (int c = 0; c < 3; c++)
                        for (int ky = 0; ky < IMG_PATCH; ky++) {
                            const uint8_t *s = img->rgb + ((size_t)(IMG_PATCH * py + ky) * img->w + IMG_PATCH * px) * 3 + c;
                            for (int kx = 0; kx < IMG_PATCH; kx++) o[c * 196 + ky * 14 + kx] = lut[c][s[3 * kx]];
                        }
                }
}

int image_preprocess(const uint8_t *data, size_t n, const char *name, int64_t min_pixels, int64_t max_pixels,
                     float **pixels, int *oh, int *ow, Err *e) {
    Image img, rs;
    if (image_decode(data, n, name, &img, e)) return -1;
    if (smart_resize(img.h, img.w, min_pixels, max_pixels, oh, ow, name, e)) { image_free(&img); return -1; }
    if (*oh == img.h && *ow == img.w) rs = img;  // PIL returns a copy when the size is unchanged
    else { image_resize_bicubic(&img, *ow, *oh, &rs); image_free(&img); }
    size_t rows = (size_t)(*oh / IMG_PATCH) * (size_t)(*ow / IMG_PATCH);
    *pixels = xmalloc(rows * IMG_PATCH_DIM * sizeof(float));
    image_to_patches(&rs, *pixels);
    image_free(&rs);
    return 0;
}

int image_write_pixels(const char *path, const float *pixels, int gh, int gw, Err *e) {
    StWriter *w = stw_new_file(path, e);
    if (!w) return -1;
    int64_t ps[2] = {(int64_t)gh * gw, IMG_PATCH_DIM}, gs[2] = {1, 3};
    int32_t grid[3] = {1, gh, gw};
    int rc = stw_declare(w, "pixel_values", DT_F32, 2, ps, e) || stw_declare(w, "grid_thw", DT_I32, 2, gs, e) ||
             stw_open(w, e) || stw_write(w, "pixel_values", pixels, e) || stw_write(w, "grid_thw", grid, e) ||
             stw_finish(w, e) ? -1 : 0;
    stw_free(w);
    return rc;
}
