// imgprep: one image through the Qwen2-VL preprocessing of LLaVA-OV-1.5.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "../common/cli.h"
#include "../common/image.h"
#include "../common/util.h"

int main(int argc, char **argv) {
    int64_t min_pixels = 3136, max_pixels = 2560000;
    char *out = NULL;
    int64_t repeat = 1;
    const Opt opts[] = {
        {"min-pixels", OPT_INT, &min_pixels, "N", "smart_resize lower bound on the resized area H'xW'."},
        {"max-pixels", OPT_INT, &max_pixels, "N", "smart_resize upper bound on the resized area (stage-0 processor: 2560000)."},
        {"out", OPT_STR, &out, "FILE",
         "Also write pixel_values [N, 588] F32 and grid_thw [1, 3] I32 as a safetensors file."},
        {"repeat", OPT_INT, &repeat, "N",
         "Preprocess the image N times (decode, resize, normalise, patchify from the file's bytes) and report "
         "images per second on stderr: the benchmark mode."},
    };
    const Cli cli = {
        .name = "imgprep",
        .summary = "preprocess one image as the LLaVA-OV-1.5 (Qwen2-VL) image processor does",
        .synopsis = "imgprep IMAGE [--min-pixels N] [--max-pixels N] [--out FILE]",
        .description =
            "Decodes IMAGE (JPEG, PNG or WebP) to RGB as PIL does (RGBA composited on white as qwen-vl-utils does; "
            "EXIF orientation not applied), resizes it with smart_resize (multiples of 28, min/max pixels, Python "
            "rounding) and PIL's bicubic filter, rescales by 1/255, normalises with the CLIP mean and std, and "
            "flattens it into rows of 588 values (3 x 14 x 14) in the 2x2-block order the merger expects.\n"
            "Prints one JSON line: the original and resized sizes, grid_thw, the ViT patch count and the number of "
            "LLM tokens (<|image_pad|> count).",
        .opts = opts,
        .nopts = sizeof opts / sizeof opts[0],
        .min_pos = 1,
        .max_pos = 1,
        .examples = "imgprep photo.jpg\nimgprep photo.jpg --max-pixels 200704 --out photo.safetensors",
    };
    char **pos;
    cli_parse(&cli, argc, argv, &pos);
    const char *path = pos[0];
    free(pos);
    if (min_pixels < 1 || max_pixels < min_pixels) die_input("--min-pixels/--max-pixels: expected 1 <= min <= max");
    Err e;
    size_t n;
    uint8_t *data = (uint8_t *)read_text_file(path, &n, &e);
    if (!data) die_input("%s", e.msg);
    int w, h, oh, ow;
    if (image_probe(data, n, path, &w, &h, &e)) die_input("%s", e.msg);
    float *px;
    if (image_preprocess(data, n, path, min_pixels, max_pixels, &px, &oh, &ow, &e)) die_input("%s", e.msg);
    if (repeat > 1) {
        double t0 = now_seconds();
        for (int64_t r = 1; r < repeat; r++) {
            free(px);
            if (image_preprocess(data, n, path, min_pixels, max_pixels, &px, &oh, &ow, &e)) die_input("%s", e.msg);
        }
        fprintf(stderr, "imgprep: %.1f images/s (%lld runs)\n", (double)(repeat - 1) / (now_seconds() - t0), (long long)repeat - 1);
    }
    int gh = oh / IMG_PATCH, gw = ow / IMG_PATCH;
    if (out && image_write_pixels(out, px, gh, gw, &e)) die_input("%s", e.msg);
    json_t *res = json_pack("{s:s, s:i, s:i, s:i, s:i, s:[i,i,i], s:i, s:i}", "image", path, "width", w, "height", h,
                            "resized_width", ow, "resized_height", oh, "grid_thw", 1, gh, gw, "patches", gh * gw,
                            "llm_tokens", image_llm_tokens(oh, ow));
    char *js = json_dumps(res, JSON_PRESERVE_ORDER);  // one line, ", " and ": " separators
    printf("%s\n", js);
    free(js);
    json_decref(res);
    free(px);
    free(data);
    return 0;
}
