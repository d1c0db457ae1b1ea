// synth.c: the synthetic datasets of the tiny pipeline (see synth.h). Every image is a scene of one
// to three coloured shapes on a 3×3 grid of cells over a plain background; every text is derived
// from the scene, so captions, answers and benchmark targets are all true of the picture.
#include "synth.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpe_train.h"
#include "image.h"
#include "rng.h"
#include "wds.h"

static const struct { const char *name; uint8_t rgb[3]; } COLORS[] = {
    {"red", {220, 30, 30}},    {"green", {30, 170, 60}},  {"blue", {40, 70, 220}},   {"yellow", {240, 210, 30}},
    {"purple", {140, 50, 170}}, {"orange", {245, 140, 20}}, {"black", {20, 20, 20}}, {"pink", {240, 120, 180}},
};
static const struct { const char *name; uint8_t rgb[3]; } BACKGROUNDS[] = {
    {"white", {250, 250, 250}}, {"gray", {170, 170, 170}}, {"light blue", {200, 225, 250}}, {"beige", {240, 230, 200}},
};
static const char *SHAPES[] = {"circle", "square", "triangle", "diamond"};
static const char *CELLS[9] = {"top left", "top middle", "top right", "middle left", "center", "middle right",
                               "bottom left", "bottom middle", "bottom right"};
#define NCOL 8
#define NBG 4
#define NSHAPE 4

typedef struct { int shape, color, cell; } Obj;
typedef struct { int w, h, bg, n; Obj o[3]; } Scene;

typedef struct { uint64_t s; } Rng;
static uint64_t next(Rng *r) { return splitmix64(&r->s); }
static int below(Rng *r, int n) { return (int)(next(r) % (uint64_t)n); }

static void make_scene(Rng *r, Scene *sc) {
    static const int sizes[][2] = {{224, 224}, {336, 224}, {224, 336}, {448, 336}, {280, 420}, {168, 392}, {392, 168}, {308, 308}};
    int k = below(r, 8);
    sc->w = sizes[k][0];
    sc->h = sizes[k][1];
    sc->bg = below(r, NBG);
    sc->n = 1 + below(r, 3);
    int used = 0;
    for (int i = 0; i < sc->n; i++) {
        Obj *o = &sc->o[i];
        do o->cell = below(r, 9); while (used & (1 << o->cell));
        used |= 1 << o->cell;
        o->shape = below(r, NSHAPE);
        o->color = below(r, NCOL);
        for (int j = 0; j < i; j++)  // distinct (shape, colour) pairs keep every question unambiguous
            if (sc->o[j].shape == o->shape && sc->o[j].color == o->color) { o->color = (o->color + 1 + j) % NCOL; j = -1; }
    }
}

static int inside(int shape, double x, double y) {  // x, y in [-1, 1] around the cell centre
    switch (shape) {
    case 0: return x * x + y * y <= 1.0;
    case 1: return fabs(x) <= 0.85 && fabs(y) <= 0.85;
    case 2: return y <= 0.9 && y >= -0.9 && fabs(x) <= (y + 0.9) / 1.8;
    default: return fabs(x) + fabs(y) <= 1.0;
    }
}

static void render(const Scene *sc, Image *img) {
    img->w = sc->w;
    img->h = sc->h;
    img->rgb = xmalloc((size_t)sc->w * sc->h * 3);
    for (int y = 0; y < sc->h; y++)
        for (int x = 0; x < sc->w; x++) {
            const uint8_t *c = BACKGROUNDS[sc->bg].rgb;
            for (int i = 0; i < sc->n; i++) {
                const Obj *o = &sc->o[i];
                double cw = sc->w / 3.0, ch = sc->h / 3.0, rad = 0.38 * (cw < ch ? cw : ch);
                double cx = (o->cell % 3 + 0.5) * cw, cy = (o->cell / 3 + 0.5) * ch;
                if (inside(o->shape, (x + 0.5 - cx) / rad, (y + 0.5 - cy) / rad)) c = COLORS[o->color].rgb;
            }
            memcpy(img->rgb + ((size_t)y * sc->w + x) * 3, c, 3);
        }
}

// ---- text ---------------------------------------------------------------------------------------

typedef struct { char *s; size_t n, cap; } Str;
static void sput(Str *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sput(Str *b, const char *fmt, ...) {
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int k = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (b->n + (size_t)k + 1 > b->cap) b->s = xrealloc(b->s, b->cap = 2 * (b->n + (size_t)k + 1));
    vsnprintf(b->s + b->n, (size_t)k + 1, fmt, ap2);
    va_end(ap2);
    b->n += (size_t)k;
}

static const char *article(const char *word) { return strchr("aeiou", word[0]) ? "an" : "a"; }

static char *caption(Rng *r, const Scene *sc) {
    Str b = {0};
    const char *lead[] = {"", "The image shows ", "This picture contains ", "We can see "};
    int l = below(r, 4);
    sput(&b, "%s", lead[l]);
    for (int i = 0; i < sc->n; i++) {
        const Obj *o = &sc->o[i];
        const char *c = COLORS[o->color].name;
        sput(&b, "%s%s %s %s in the %s", i == 0 ? "" : i == sc->n - 1 ? " and " : ", ", i == 0 && l == 0 ? (article(c)[1] ? "An" : "A") : article(c),
             c, SHAPES[o->shape], CELLS[o->cell]);
    }
    sput(&b, ", on a %s background.", BACKGROUNDS[sc->bg].name);
    return b.s;
}

static const char *CAPTION_PROMPTS[] = {"Describe the image.", "What is in this picture?", "Give a short caption.",
                                        "Describe the image briefly."};

// One question about the scene with its answer; kind picks the family. Writes into q and a.
static void question(Rng *r, const Scene *sc, int kind, Str *q, Str *a) {
    const Obj *o = &sc->o[below(r, sc->n)];
    switch (kind) {
    case 0:  // colour
        sput(q, "What color is the %s in the %s?", SHAPES[o->shape], CELLS[o->cell]);
        sput(a, "%c%s.", COLORS[o->color].name[0] - 32, COLORS[o->color].name + 1);
        break;
    case 1:  // shape
        sput(q, "What shape is in the %s?", CELLS[o->cell]);
        sput(a, "A %s.", SHAPES[o->shape]);
        break;
    case 2:  // count
        sput(q, "How many shapes are there?");
        sput(a, "%d", sc->n);
        break;
    case 3:  // position
        sput(q, "Where is the %s %s?", COLORS[o->color].name, SHAPES[o->shape]);
        sput(a, "In the %s.", CELLS[o->cell]);
        break;
    case 4: {  // yes / no
        int yes = below(r, 2), c = o->color;
        if (!yes) c = (c + 1 + below(r, NCOL - 1)) % NCOL;
        int present = 0;
        for (int i = 0; i < sc->n; i++) present |= sc->o[i].shape == o->shape && sc->o[i].color == c;
        sput(q, "Is there %s %s %s?", article(COLORS[c].name), COLORS[c].name, SHAPES[o->shape]);
        sput(a, "%s", present ? "Yes" : "No");
        break;
    }
    default: {  // multiple choice over colours
        int right = below(r, 4), opts[4], used = 1 << o->color;
        for (int i = 0; i < 4; i++) {
            if (i == right) { opts[i] = o->color; continue; }
            int c;
            do c = below(r, NCOL); while (used & (1 << c));
            used |= 1 << c;
            opts[i] = c;
        }
        sput(q, "What color is the %s in the %s?", SHAPES[o->shape], CELLS[o->cell]);
        for (int i = 0; i < 4; i++) sput(q, "\n%c. %s", 'A' + i, COLORS[opts[i]].name);
        sput(q, "\nAnswer with the option's letter from the given choices directly.");
        sput(a, "%c", 'A' + right);
    }
    }
}

// ---- datasets -----------------------------------------------------------------------------------

typedef struct {
    const char *root;
    const char *name;       // sub-directory
    int per_shard;
    WdsWriter *w;
    int shard;
    char **names;
    int64_t *counts;
    int nshards;
    Str *corpus;            // text for the tokenizer
} Out;

static void out_sample(Out *o, const char *key, WdsMember *m, int n) {
    Err e;
    if (!o->w) {
        char *dir = xasprintf("%s/%s", o->root, o->name);
        mkdir_p(dir);
        const char *base = strrchr(o->name, '/') ? strrchr(o->name, '/') + 1 : o->name;
        char *rel = xasprintf("%s-%06d.tar", base, o->shard);
        char *path = xasprintf("%s/%s", dir, rel);
        o->w = wds_create(path, &e);
        if (!o->w) die_internal("%s", e.msg);
        o->names = xrealloc(o->names, (size_t)(o->nshards + 1) * sizeof(char *));
        o->counts = xrealloc(o->counts, (size_t)(o->nshards + 1) * sizeof(int64_t));
        o->names[o->nshards] = rel;
        o->counts[o->nshards] = 0;
        o->nshards++;
        free(path);
        free(dir);
    }
    if (wds_write(o->w, key, m, n, &e)) die_internal("%s", e.msg);
    o->counts[o->nshards - 1]++;
    if (wds_count(o->w) == o->per_shard) {
        if (wds_finish(o->w, &e)) die_internal("%s", e.msg);
        o->w = NULL;
        o->shard++;
    }
}

static void out_close(Out *o, const char *sample_type) {
    Err e;
    if (o->w && wds_finish(o->w, &e)) die_internal("%s", e.msg);
    char *dir = xasprintf("%s/%s", o->root, o->name);
    if (wds_write_meta(dir, o->names, o->counts, o->nshards, sample_type, &e)) die_internal("%s", e.msg);
    for (int i = 0; i < o->nshards; i++) free(o->names[i]);
    free(o->names);
    free(o->counts);
    free(dir);
}

static uint8_t *encode(Rng *r, const Scene *sc, size_t *n, const char **ext) {
    Image img;
    render(sc, &img);
    uint8_t *d;
    if (below(r, 5) == 0) { d = image_encode_png(&img, n); *ext = "png"; }
    else { d = image_encode_jpeg(&img, 90, n); *ext = "jpg"; }
    image_free(&img);
    return d;
}

static char *dumps(json_t *j) {
    if (!j) die_internal("synth: a sample's JSON could not be built");
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    return s;
}

static void captions(Out *o, uint64_t seed, int n) {
    Rng r = {seed ^ 0xca9710ull};
    for (int i = 0; i < n; i++) {
        Scene sc;
        make_scene(&r, &sc);
        char key[32], img_name[48];
        snprintf(key, sizeof key, "%09d", i);
        const char *ext;
        size_t isz;
        uint8_t *img = encode(&r, &sc, &isz, &ext);
        snprintf(img_name, sizeof img_name, "%s.%s", key, ext);
        char *cap = caption(&r, &sc);
        const char *prompt = CAPTION_PROMPTS[below(&r, 4)];
        char *human = xasprintf(below(&r, 2) ? "<image>\n%s" : "%s\n<image>", prompt);
        char *js = dumps(json_pack("{s:s, s:s, s:[{s:s, s:s}, {s:s, s:s}]}", "id", key, "image", img_name, "conversations",
                                   "from", "human", "value", human, "from", "gpt", "value", cap));
        WdsMember m[2] = {{(char *)ext, img, isz}, {"json", (uint8_t *)js, strlen(js)}};
        out_sample(o, key, m, 2);
        sput(o->corpus, "%s\n%s\n", prompt, cap);
        free(img); free(cap); free(human); free(js);
    }
}

static void instruct(Out *o, uint64_t seed, int n) {
    Rng r = {seed ^ 0x1257ull};
    for (int i = 0; i < n; i++) {
        Scene sc;
        make_scene(&r, &sc);
        char key[32], member[48], name[40];
        snprintf(key, sizeof key, "image_%d", i);
        const char *ext;
        size_t isz;
        uint8_t *img = encode(&r, &sc, &isz, &ext);
        snprintf(name, sizeof name, "0_%08d.%s", i, ext);
        snprintf(member, sizeof member, "%s", name);
        json_t *texts = json_array();
        int turns = 1 + below(&r, 3);
        for (int t = 0; t < turns; t++) {
            Str q = {0}, a = {0};
            question(&r, &sc, below(&r, 6), &q, &a);
            char *user = t == 0 ? xasprintf("<image>\n%s", q.s) : xstrdup(q.s);
            json_array_append_new(texts, json_pack("{s:s, s:s}", "role", "user", "content", user));
            json_array_append_new(texts, json_pack("{s:s, s:s}", "role", "assistant", "content", a.s));
            sput(o->corpus, "%s\n%s\n", q.s, a.s);
            free(user); free(q.s); free(a.s);
        }
        char *js = dumps(json_pack("{s:o, s:s, s:[s]}", "texts", texts, "media", "image", "name", name));
        WdsMember m[2] = {{member, img, isz}, {"json", (uint8_t *)js, strlen(js)}};
        out_sample(o, key, m, 2);
        free(img); free(js);
    }
}

// Held-out sets in the field layouts of real benchmarks (spec/eval.md §4), seeded apart from training.
static void eval_sets(const char *root, uint64_t seed, int n, Str *corpus) {
    static const char *kinds[] = {"mme", "mmbench", "ai2d", "docvqa", "chartqa"};
    for (int k = 0; k < 5; k++) {
        Out o = {.root = root, .name = NULL, .per_shard = 1000, .corpus = corpus};
        char *name = xasprintf("eval/%s", kinds[k]);
        o.name = name;
        Rng r = {seed ^ (0xe7a1ull + (uint64_t)k * 7919)};
        for (int i = 0; i < n; i++) {
            Scene sc;
            make_scene(&r, &sc);
            const char *ext;
            size_t isz;
            uint8_t *img = encode(&r, &sc, &isz, &ext);
            char key[32];
            snprintf(key, sizeof key, "%06d", i);
            Str q = {0}, a = {0};
            json_t *j;
            if (k == 0) {  // MME: two questions per image, one true and one false
                const Obj *ob = &sc.o[below(&r, sc.n)];
                int other = (ob->color + 1 + below(&r, NCOL - 1)) % NCOL;
                int present = 0;
                for (int t = 0; t < sc.n; t++) present |= sc.o[t].shape == ob->shape && sc.o[t].color == other;
                char *q1 = xasprintf("Is there a %s %s in the image? Please answer yes or no.", COLORS[ob->color].name,
                                     SHAPES[ob->shape]);
                char *q2 = xasprintf("Is there a %s %s in the image? Please answer yes or no.", COLORS[other].name,
                                     SHAPES[ob->shape]);
                j = json_pack("{s:s, s:s, s:[{s:s, s:s}, {s:s, s:s}]}", "question_id", key, "category", "color", "questions",
                              "question", q1, "answer", "Yes", "question", q2, "answer", present ? "Yes" : "No");
                sput(corpus, "%s\n%s\n", q1, q2);
                free(q1);
                free(q2);
            } else if (k == 1 || k == 2) {  // MMBench (A..D columns, letter answer) / AI2D (options, index answer)
                question(&r, &sc, 5, &q, &a);
                char *nl = strchr(q.s, '\n');
                char *stem = xasprintf("%.*s", (int)(nl - q.s), q.s);
                char opt[4][32];
                for (int t = 0; t < 4; t++) {
                    char *line = strstr(q.s, (char[]){'\n', (char)('A' + t), '.', 0}) + 4;
                    snprintf(opt[t], sizeof opt[t], "%.*s", (int)strcspn(line, "\n"), line);
                }
                if (k == 1)
                    j = json_pack("{s:i, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "index", i, "question", stem,
                                  "hint", "nan", "A", opt[0], "B", opt[1], "C", opt[2], "D", opt[3], "answer", a.s,
                                  "category", "attribute_recognition", "split", "dev");
                else
                    j = json_pack("{s:s, s:[s,s,s,s], s:s}", "question", stem, "options", opt[0], opt[1], opt[2], opt[3],
                                  "answer", (char[]){(char)('0' + (a.s[0] - 'A')), 0});
                free(stem);
            } else if (k == 3) {  // DocVQA-style short answers, scored by ANLS
                const Obj *ob = &sc.o[below(&r, sc.n)];
                sput(&q, "What shape is in the %s?", CELLS[ob->cell]);
                char *alt = xasprintf("%s %s", article(SHAPES[ob->shape]), SHAPES[ob->shape]);
                j = json_pack("{s:s, s:s, s:[s, s]}", "questionId", key, "question", q.s, "answers", SHAPES[ob->shape], alt);
                free(alt);
            } else {  // ChartQA-style numbers
                int c = below(&r, NSHAPE + 1), cnt = 0;
                for (int t = 0; t < sc.n; t++) cnt += c == NSHAPE || sc.o[t].shape == c;
                if (c == NSHAPE) sput(&q, "How many shapes are in the image?");
                else sput(&q, "How many %ss are in the image?", SHAPES[c]);
                sput(&a, "%d", cnt);
                j = json_pack("{s:s, s:s, s:s}", "question", q.s, "answer", a.s, "type", "human_test");
            }
            char *js = dumps(j);
            WdsMember m[2] = {{(char *)ext, img, isz}, {"json", (uint8_t *)js, strlen(js)}};
            out_sample(&o, key, m, 2);
            free(img); free(js); free(q.s); free(a.s);
        }
        out_close(&o, "CrudeWebdataset");
        free(name);
    }
}

int synth_run(const char *dir, uint64_t seed, int scale, Err *e) {
    Str corpus = {0};
    sput(&corpus, "system\nYou are a helpful assistant.\nuser\nassistant\n");
    Out cap = {.root = dir, .name = "captions", .per_shard = 1000, .corpus = &corpus};
    captions(&cap, seed, 3000 * scale);
    out_close(&cap, "CrudeWebdataset");
    Out ins = {.root = dir, .name = "instruct", .per_shard = 1000, .corpus = &corpus};
    instruct(&ins, seed, 2000 * scale);
    out_close(&ins, "CrudeWebdataset");
    eval_sets(dir, seed, 200 * scale, &corpus);
    char *tok = path_join(dir, "tokenizer");
    mkdir_p(tok);
    int rc = bpe_train_write(corpus.s, corpus.n, SYNTH_REGULAR_VOCAB, SYNTH_SPECIAL_BASE, tok, e);
    free(tok);
    free(corpus.s);
    return rc;
}
