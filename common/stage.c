// stage.c: see stage.h.
#include "stage.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

int stage_read(StagePreset *s, const char *path, Err *e) {
    memset(s, 0, sizeof *s);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) { err_set(e, "%s: line %d: %s", path, je.line, je.text); return -1; }
    int rc = 0;
    struct { const char *key; char *dst; size_t len; } strs[] = {
        {"stage", s->stage, sizeof s->stage}, {"trainable", s->trainable, sizeof s->trainable}, {"frozen", s->frozen, sizeof s->frozen}};
    for (size_t i = 0; i < sizeof strs / sizeof strs[0] && !rc; i++) {
        json_t *v = json_object_get(j, strs[i].key);
        if (!json_is_string(v) || strlen(json_string_value(v)) >= strs[i].len) {
            err_set(e, "%s: field '%s': expected a string (shorter than %zu)", path, strs[i].key, strs[i].len);
            rc = -1;
        } else {
            snprintf(strs[i].dst, strs[i].len, "%s", json_string_value(v));
        }
    }
    struct { const char *key; double *dst; } nums[] = {
        {"lr", &s->lr}, {"min_lr", &s->min_lr}, {"warmup_fraction", &s->warmup_fraction}, {"beta1", &s->beta1},
        {"beta2", &s->beta2}, {"eps", &s->eps}, {"weight_decay", &s->weight_decay}, {"clip_grad", &s->clip_grad}};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0] && !rc; i++) {
        json_t *v = json_object_get(j, nums[i].key);
        if (!json_is_number(v)) { err_set(e, "%s: field '%s': expected a number", path, nums[i].key); rc = -1; }
        else *nums[i].dst = json_number_value(v);
    }
    struct { const char *key; int64_t *dst; } ints[] = {
        {"global_batch", &s->global_batch}, {"micro_batch", &s->micro_batch}, {"iterations", &s->iterations},
        {"max_len", &s->max_len}, {"save_interval", &s->save_interval}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0] && !rc; i++) {
        json_t *v = json_object_get(j, ints[i].key);
        if (!json_is_integer(v)) { err_set(e, "%s: field '%s': expected an integer", path, ints[i].key); rc = -1; }
        else *ints[i].dst = json_integer_value(v);
    }
    json_decref(j);
    return rc;
}

double stage_lr(const StagePreset *s, int64_t n) {
    double decay = (double)s->iterations * (double)s->global_batch, warmup = s->warmup_fraction * decay;
    if (warmup > 0 && (double)n <= warmup) return s->lr * (double)n / warmup;
    if ((double)n > decay) return s->min_lr;
    double r = ((double)n - warmup) / (decay - warmup);
    return s->min_lr + 0.5 * (cos(M_PI * r) + 1.0) * (s->lr - s->min_lr);
}
