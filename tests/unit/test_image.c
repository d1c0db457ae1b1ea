// Unit tests: smart_resize against the worked values of spec/data.md §5.2 (Python semantics,
// including the round-half-to-even cases where C's round() differs).
#include "../../common/image.h"
#include "check.h"

static void smart_resize_worked_values(void) {
    static const struct { int h, w; int64_t mn, mx; int oh, ow; } cases[] = {
        {400, 600, 3136, 200704, 364, 532},        {750, 1000, 3136, 2560000, 756, 1008},
        {70, 70, 3136, 2560000, 56, 56},           {126, 350, 3136, 2560000, 112, 336},
        {20, 20, 3136, 2560000, 56, 56},           {28, 5600, 3136, 2560000, 28, 5600},
        {2000, 3000, 3136, 2560000, 1288, 1932},   {3000, 2000, 3136, 12845056, 2996, 1988},
        {1080, 1920, 200704, 1605632, 924, 1680},  {1080, 1920, 3136, 3240000, 1092, 1932},
        {224, 224, 200704, 1605632, 448, 448},
    };
    Err e;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int oh = 0, ow = 0;
        CHECK(smart_resize(cases[i].h, cases[i].w, cases[i].mn, cases[i].mx, &oh, &ow, "x", &e) == 0);
        if (oh != cases[i].oh || ow != cases[i].ow)
            printf("#   %dx%d -> %dx%d, spec says %dx%d\n", cases[i].h, cases[i].w, oh, ow, cases[i].oh, cases[i].ow);
        CHECK(oh == cases[i].oh && ow == cases[i].ow);
    }
    CHECK_EQ_INT(image_llm_tokens(364, 532), 247);
    CHECK_EQ_INT(image_llm_tokens(1092, 1932), 2691);
}

static void smart_resize_rejects(void) {
    Err e;
    int oh, ow;
    CHECK(smart_resize(14, 2801, 3136, 2560000, &oh, &ow, "wide.png", &e) == -1);  // ratio > 200
    CHECK_STR_CONTAINS(e.msg, "wide.png: aspect ratio");
    CHECK(smart_resize(14, 2800, 3136, 2560000, &oh, &ow, "ok.png", &e) == 0);     // ratio exactly 200
    CHECK(smart_resize(1, 1, 3136, 2560000, &oh, &ow, "dot.png", &e) == -1);
    CHECK_STR_CONTAINS(e.msg, "dot.png");
}

int main(void) {
    RUN(smart_resize_worked_values);
    RUN(smart_resize_rejects);
    return CHECK_DONE();
}
