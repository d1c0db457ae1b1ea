// chat.c: see chat.h.
//
// Training text of a conversation (OV chat_templete.py, "qwen2-vl"):
//   <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>
// and "\n<|im_start|>{role}\n{content}<|im_end|>" for every further message. Special tokens are
// emitted as ids; the text between two of them is tokenized as one run, exactly as tokenizing the
// whole string would split it, and a token is supervised when its first byte lies in a supervised
// span of the run (labels from character spans, never from separately tokenized answers).
#include "chat.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "image.h"

ChatPolicy chat_policy_from_name(const char *name) {
    if (!strcmp(name, "auto")) return CHAT_AUTO;
    if (!strcmp(name, "caption")) return CHAT_CAPTION;
    if (!strcmp(name, "vqa")) return CHAT_VQA;
    if (!strcmp(name, "multiturn")) return CHAT_MULTITURN;
    return CHAT_INVALID;
}

static char *nfc(const char *s, Err *e) {
    utf8proc_uint8_t *out = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, 0, &out, UTF8PROC_NULLTERM | UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (r < 0) { err_set(e, "invalid UTF-8 in a message: %s", utf8proc_errmsg(r)); return NULL; }
    return (char *)out;
}

int chat_parse(json_t *j, ChatSample *s, Err *e) {
    memset(s, 0, sizeof *s);
    s->policy = CHAT_AUTO;
    json_t *pol = json_object_get(j, "policy");
    if (pol) {
        if (!json_is_string(pol) || (s->policy = chat_policy_from_name(json_string_value(pol))) == CHAT_INVALID) {
            err_set(e, "policy: expected \"caption\", \"vqa\" or \"multiturn\"");
            return -1;
        }
    }
    json_t *msgs = json_object_get(j, "conversations");
    int llava = msgs != NULL;
    if (!msgs) msgs = json_object_get(j, "messages");
    if (!json_is_array(msgs)) { err_set(e, "expected a \"conversations\" or \"messages\" list"); return -1; }
    json_t *sys = json_object_get(j, "system");
    if (sys && !json_is_string(sys)) { err_set(e, "system: expected a string"); return -1; }
    if (sys && !(s->system = nfc(json_string_value(sys), e))) return -1;
    s->turns = xcalloc(json_array_size(msgs) + 1, sizeof(ChatTurn));
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        json_t *r = json_object_get(m, llava ? "from" : "role"), *c = json_object_get(m, llava ? "value" : "content");
        if (!json_is_string(r) || !json_is_string(c)) {
            err_set(e, "%s[%zu]: expected string \"%s\" and \"%s\"", llava ? "conversations" : "messages", i,
                    llava ? "from" : "role", llava ? "value" : "content");
            chat_free(s);
            return -1;
        }
        const char *role = json_string_value(r);
        char kind = !strcmp(role, "human") || !strcmp(role, "user") ? 'u'
                    : !strcmp(role, "gpt") || !strcmp(role, "assistant") ? 'a'
                    : !strcmp(role, "system") ? 's' : 0;
        if (!kind) { err_set(e, "message %zu: unknown role \"%s\"", i, role); chat_free(s); return -1; }
        char *text = nfc(json_string_value(c), e);
        if (!text) { chat_free(s); return -1; }
        if (kind == 's') {  // a system message becomes the system prompt
            free(s->system);
            s->system = text;
            continue;
        }
        s->turns[s->n++] = (ChatTurn){kind, text};
    }
    if (s->n == 0) { err_set(e, "empty conversation"); chat_free(s); return -1; }
    int has_answer = 0;
    for (int k = 0; k < s->n; k++) has_answer |= s->turns[k].role == 'a';
    if (!has_answer) { err_set(e, "conversation has no assistant turn"); chat_free(s); return -1; }
    return 0;
}

void chat_free(ChatSample *s) {
    for (int i = 0; i < s->n; i++) free(s->turns[i].content);
    free(s->turns);
    free(s->system);
    memset(s, 0, sizeof *s);
}

static int count_placeholders(const char *s) {
    int n = 0;
    for (const char *p = strstr(s, CHAT_IMAGE_PLACEHOLDER); p; p = strstr(p + 1, CHAT_IMAGE_PLACEHOLDER)) n++;
    return n;
}

int chat_count_images(const ChatSample *s) {
    int n = 0;
    for (int i = 0; i < s->n; i++) n += count_placeholders(s->turns[i].content);
    return n;
}

// ---- rendering ----------------------------------------------------------------------------------

typedef struct {
    Tokenizer *t;
    IntVec *ids, *labels;
    char *run;              // pending text run
    size_t rn, rcap;
    int *spans;             // supervised byte ranges of the run: [start, end) pairs
    int ns, scap;
    Err *e;
    int failed;
} Render;

static void run_text(Render *r, const char *s, size_t n, int supervised) {
    if (r->rn + n + 1 > r->rcap) r->run = xrealloc(r->run, r->rcap = 2 * (r->rn + n + 1));
    if (supervised && n) {
        if (r->ns + 2 > r->scap) r->spans = xrealloc(r->spans, (size_t)(r->scap = 2 * r->scap + 8) * sizeof(int));
        r->spans[r->ns++] = (int)r->rn;
        r->spans[r->ns++] = (int)(r->rn + n);
    }
    memcpy(r->run + r->rn, s, n);
    r->rn += n;
}

static void flush_run(Render *r) {
    if (!r->rn || r->failed) { r->rn = 0; r->ns = 0; return; }
    IntVec starts = {0};
    size_t before = r->ids->n;
    if (tok_encode(r->t, r->run, r->rn, r->ids, &starts, r->e)) r->failed = 1;
    for (size_t k = before; k < r->ids->n && !r->failed; k++) {
        int st = starts.v[k - before], sup = 0;
        for (int q = 0; q < r->ns; q += 2) sup |= st >= r->spans[q] && st < r->spans[q + 1];
        intvec_push(r->labels, sup ? r->ids->v[k] : LABEL_IGNORE);
    }
    intvec_free(&starts);
    r->rn = 0;
    r->ns = 0;
}

static void token(Render *r, int id, int supervised, int count) {
    flush_run(r);
    for (int k = 0; k < count; k++) {
        intvec_push(r->ids, id);
        intvec_push(r->labels, supervised ? id : LABEL_IGNORE);
    }
}

// Content with its <image> placeholders expanded; text parts supervised or not.
static void content(Render *r, const char *s, int supervised, const int *image_tokens, int *next_image) {
    const SpecialIds *sp = tok_special(r->t);
    for (;;) {
        const char *p = strstr(s, CHAT_IMAGE_PLACEHOLDER);
        run_text(r, s, p ? (size_t)(p - s) : strlen(s), supervised);
        if (!p) return;
        token(r, sp->vision_start, 0, 1);
        token(r, sp->image_pad, 0, image_tokens[(*next_image)++]);
        token(r, sp->vision_end, 0, 1);
        s = p + strlen(CHAT_IMAGE_PLACEHOLDER);
    }
}

int chat_encode(Tokenizer *t, const ChatSample *s, const ChatOptions *o, const int *image_tokens, int n_images,
                IntVec *ids, IntVec *labels, Err *e) {
    const SpecialIds *sp = tok_special(t);
    if (sp->im_start < 0 || sp->im_end < 0 || sp->vision_start < 0 || sp->vision_end < 0 || sp->image_pad < 0) {
        err_set(e, "the tokenizer lacks one of <|im_start|>, <|im_end|>, <|vision_start|>, <|vision_end|>, <|image_pad|>");
        return -1;
    }
    int placeholders = chat_count_images(s);
    if (placeholders != n_images) {
        err_set(e, "%d <image> placeholder%s but %d image%s", placeholders, placeholders == 1 ? "" : "s", n_images,
                n_images == 1 ? "" : "s");
        return -1;
    }
    ChatPolicy pol = o->policy != CHAT_AUTO ? o->policy : s->policy != CHAT_AUTO ? s->policy : CHAT_MULTITURN;
    int last_answer = -1;
    for (int k = 0; k < s->n; k++) if (s->turns[k].role == 'a') last_answer = k;
    Render r = {.t = t, .ids = ids, .labels = labels, .e = e};
    int next_image = 0;
    if (pol == CHAT_CAPTION) {
        // <|vision_start|><|image_pad|>×N<|vision_end|>{caption}<|im_end|>: user text unsupervised, no wrapping
        for (int k = 0; k < s->n; k++) content(&r, s->turns[k].content, s->turns[k].role == 'a', image_tokens, &next_image);
        token(&r, sp->im_end, 1, 1);
    } else {
        token(&r, sp->im_start, 0, 1);
        run_text(&r, "system\n", 7, 0);
        run_text(&r, s->system ? s->system : CHAT_DEFAULT_SYSTEM, strlen(s->system ? s->system : CHAT_DEFAULT_SYSTEM), 0);
        token(&r, sp->im_end, 0, 1);
        for (int k = 0; k < s->n; k++) {
            const ChatTurn *tu = &s->turns[k];
            int sup = tu->role == 'a' && (pol == CHAT_MULTITURN || k == last_answer);
            run_text(&r, "\n", 1, 0);
            token(&r, sp->im_start, 0, 1);
            run_text(&r, tu->role == 'a' ? "assistant\n" : "user\n", tu->role == 'a' ? 10 : 5, 0);
            content(&r, tu->content, sup, image_tokens, &next_image);
            token(&r, sp->im_end, sup, 1);
        }
    }
    flush_run(&r);
    free(r.run);
    free(r.spans);
    return r.failed ? -1 : 0;
}

// ---- the tokenize program's stream ---------------------------------------------------------------

static void print_ids(FILE *out, const char *key, const IntVec *v) {
    fprintf(out, "\"%s\": [", key);
    for (size_t i = 0; i < v->n; i++) fprintf(out, i ? ", %d" : "%d", v->v[i]);
    fputc(']', out);
}

// Image sizes "image_sizes": [[h, w], ...] or [{"height": h, "width": w}, ...] -> token counts.
static int image_token_counts(json_t *j, const ChatOptions *o, int **counts, int *n, Err *e) {
    json_t *sz = json_object_get(j, "image_sizes");
    *n = 0;
    *counts = NULL;
    if (!sz) return 0;
    if (!json_is_array(sz)) { err_set(e, "image_sizes: expected a list of [height, width]"); return -1; }
    *counts = xcalloc(json_array_size(sz) + 1, sizeof(int));
    size_t i;
    json_t *x;
    json_array_foreach(sz, i, x) {
        json_t *h = json_is_array(x) ? json_array_get(x, 0) : json_object_get(x, "height");
        json_t *w = json_is_array(x) ? json_array_get(x, 1) : json_object_get(x, "width");
        if (!json_is_integer(h) || !json_is_integer(w) || json_integer_value(h) <= 0 || json_integer_value(w) <= 0 ||
            json_integer_value(h) > 1000000 || json_integer_value(w) > 1000000) {
            err_set(e, "image_sizes[%zu]: expected [height, width] in pixels", i);
            return -1;
        }
        int oh, ow;
        char name[48];  // "image_sizes[" + up to 20 digits + "]"
        snprintf(name, sizeof name, "image_sizes[%zu]", i);
        if (smart_resize((int)json_integer_value(h), (int)json_integer_value(w), o->min_pixels, o->max_pixels, &oh, &ow,
                         name, e))
            return -1;
        (*counts)[(*n)++] = image_llm_tokens(oh, ow);
    }
    return 0;
}

int tokenize_stream(Tokenizer *t, FILE *in, FILE *out, TokenizeMode mode, int skip_special, const ChatOptions *o) {
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0;
    Err e;
    IntVec ids = {0}, labels = {0};
    while ((len = getline(&line, &cap, in)) >= 0) {
        lineno++;
        if (len && line[len - 1] == '\n') line[--len] = 0;
        ids.n = labels.n = 0;
        json_t *j = NULL;
        if (mode != TS_ENCODE || (len && line[0] == '{')) {
            json_error_t je;
            j = json_loadb(line, (size_t)len, JSON_ALLOW_NUL, &je);
            if (!json_is_object(j)) die_input("stdin:%ld: expected a JSON object (%s)", lineno, j ? "not an object" : je.text);
        }
        if (mode == TS_ENCODE) {
            const char *text = line;
            size_t n = (size_t)len;
            if (j) {
                json_t *tx = json_object_get(j, "text");
                if (!json_is_string(tx)) die_input("stdin:%ld: expected {\"text\": \"...\"}", lineno);
                text = json_string_value(tx);
                n = json_string_length(tx);
            }
            if (tok_encode(t, text, n, &ids, NULL, &e)) die_input("stdin:%ld: %s", lineno, e.msg);
            fputc('{', out);
            print_ids(out, "ids", &ids);
            fputs("}\n", out);
        } else if (mode == TS_DECODE) {
            json_t *a = json_object_get(j, "ids");
            if (!json_is_array(a)) die_input("stdin:%ld: expected {\"ids\": [...]}", lineno);
            size_t i;
            json_t *x;
            json_array_foreach(a, i, x) {
                if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) >= tok_num_ids(t))
                    die_input("stdin:%ld: ids[%zu]: expected an id below %d", lineno, i, tok_num_ids(t));
                intvec_push(&ids, (int)json_integer_value(x));
            }
            size_t n;
            char *text = tok_decode(t, ids.v, ids.n, skip_special, &n);
            json_t *res = json_stringn(text, n);
            char *s = json_dumps(res, JSON_ENCODE_ANY | JSON_ENSURE_ASCII);
            fprintf(out, "{\"text\": %s}\n", s);
            free(s);
            json_decref(res);
            free(text);
        } else {
            ChatSample cs;
            int *counts, nimg;
            if (image_token_counts(j, o, &counts, &nimg, &e)) die_input("stdin:%ld: %s", lineno, e.msg);
            if (chat_parse(j, &cs, &e)) die_input("stdin:%ld: %s", lineno, e.msg);
            if (chat_encode(t, &cs, o, counts, nimg, &ids, &labels, &e)) die_input("stdin:%ld: %s", lineno, e.msg);
            fputc('{', out);
            print_ids(out, "ids", &ids);
            fputs(", ", out);
            print_ids(out, "labels", &labels);
            fputs("}\n", out);
            chat_free(&cs);
            free(counts);
        }
        json_decref(j);
    }
    free(line);
    intvec_free(&ids);
    intvec_free(&labels);
    return fflush(out) == 0 ? 0 : 1;
}
