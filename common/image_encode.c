// image_encode.c: RGB -> JPEG (libjpeg-turbo) or PNG (libpng) bytes in memory, for synthetic data.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <png.h>

#include "image.h"

uint8_t *image_encode_jpeg(const Image *img, int quality, size_t *n) {
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr err;
    c.err = jpeg_std_error(&err);  // encoding our own pixels cannot fail short of memory
    jpeg_create_compress(&c);
    unsigned char *buf = NULL;
    unsigned long len = 0;
    jpeg_mem_dest(&c, &buf, &len);
    c.image_width = (JDIMENSION)img->w;
    c.image_height = (JDIMENSION)img->h;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, quality, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(img->rgb + (size_t)c.next_scanline * (size_t)img->w * 3);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    uint8_t *out = xmalloc(len);
    memcpy(out, buf, len);
    free(buf);
    *n = len;
    return out;
}

typedef struct { uint8_t *d; size_t n, cap; } MemOut;

static void png_write_mem(png_structp p, png_bytep data, png_size_t len) {
    MemOut *m = png_get_io_ptr(p);
    if (m->n + len > m->cap) m->d = xrealloc(m->d, m->cap = 2 * (m->n + len));
    memcpy(m->d + m->n, data, len);
    m->n += len;
}
static void png_flush_mem(png_structp p) { (void)p; }

uint8_t *image_encode_png(const Image *img, size_t *n) {
    png_structp p = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(p);
    MemOut m = {NULL, 0, 0};
    if (setjmp(png_jmpbuf(p))) die_internal("PNG encoding failed");
    png_set_write_fn(p, &m, png_write_mem, png_flush_mem);
    png_set_IHDR(p, info, (png_uint_32)img->w, (png_uint_32)img->h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(p, info);
    for (int y = 0; y < img->h; y++) png_write_row(p, img->rgb + (size_t)y * (size_t)img->w * 3);
    png_write_end(p, NULL);
    png_destroy_write_struct(&p, &info);
    *n = m.n;
    return m.d;
}
