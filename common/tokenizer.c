// tokenizer.c: see tokenizer.h.
//
// encode(text):
//   split text at added tokens (longest match, never split, matched on the raw text)
//   for each piece of text between them:
//     NFC (utf8proc) -> regex split (PCRE2, the pattern of tokenizer.json) -> for each piece:
//       bytes -> one symbol per byte -> repeatedly merge the adjacent pair of lowest rank -> ids
// Pieces are cached, so common words cost one hash lookup.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer.h"

#include <jansson.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "config.h"
#include "strmap.h"

void intvec_push(IntVec *a, int x) {
    if (a->n == a->cap) a->v = xrealloc(a->v, (a->cap = a->cap ? 2 * a->cap : 64) * sizeof(int));
    a->v[a->n++] = x;
}
void intvec_free(IntVec *a) { free(a->v); memset(a, 0, sizeof *a); }

// ---- small hash maps ----------------------------------------------------------------------------

static uint64_t hash_bytes(const void *p, size_t n) {
    const uint8_t *s = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

// (left id, right id) -> (rank, merged id)
typedef struct { uint64_t key; int rank, merged; } MergeSlot;
typedef struct { MergeSlot *s; size_t cap; } MergeMap;

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}
static void merge_put(MergeMap *m, uint64_t key, int rank, int merged) {
    size_t j = mix64(key) & (m->cap - 1);
    while (m->s[j].merged >= 0 && m->s[j].key != key) j = (j + 1) & (m->cap - 1);
    if (m->s[j].merged >= 0) return;  // a repeated merge keeps its first (lowest) rank
    m->s[j] = (MergeSlot){key, rank, merged};
}
static const MergeSlot *merge_get(const MergeMap *m, int a, int b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t j = mix64(key) & (m->cap - 1);
    while (m->s[j].merged >= 0) {
        if (m->s[j].key == key) return &m->s[j];
        j = (j + 1) & (m->cap - 1);
    }
    return NULL;
}

// piece bytes -> ids, in arenas; cleared when full.
typedef struct { uint64_t h; uint32_t koff, klen, voff, vn; int used; } CacheSlot;
typedef struct {
    CacheSlot *s;
    size_t cap, len;
    char *keys; size_t kn, kcap;
    int *vals; size_t vn, vcap;
} PieceCache;

#define CACHE_SLOTS (1u << 18)
#define CACHE_KEY_BYTES (16u << 20)

static void cache_clear(PieceCache *c) {
    memset(c->s, 0, c->cap * sizeof(CacheSlot));
    c->len = c->kn = c->vn = 0;
}
static const CacheSlot *cache_get(const PieceCache *c, const char *k, size_t n, uint64_t h) {
    size_t j = h & (c->cap - 1);
    while (c->s[j].used) {
        const CacheSlot *s = &c->s[j];
        if (s->h == h && s->klen == n && !memcmp(c->keys + s->koff, k, n)) return s;
        j = (j + 1) & (c->cap - 1);
    }
    return NULL;
}
static void cache_put(PieceCache *c, const char *k, size_t n, uint64_t h, const int *ids, size_t m) {
    if (2 * (c->len + 1) > c->cap || c->kn + n > c->kcap || c->vn + m > c->vcap) cache_clear(c);
    if (n > c->kcap || m > c->vcap) return;
    size_t j = h & (c->cap - 1);
    while (c->s[j].used) j = (j + 1) & (c->cap - 1);
    memcpy(c->keys + c->kn, k, n);
    memcpy(c->vals + c->vn, ids, m * sizeof(int));
    c->s[j] = (CacheSlot){h, (uint32_t)c->kn, (uint32_t)n, (uint32_t)c->vn, (uint32_t)m, 1};
    c->kn += n;
    c->vn += m;
    c->len++;
}


// ---- the Qwen2 pre-tokenizer as a scanner -------------------------------------------------------
// The pattern of every Qwen2/2.5/3 tokenizer.json,
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// is matched by hand: the alternatives in order, with character classes from utf8proc (Unicode 15;
// the PCRE2 of Debian 12 knows Unicode 14 only, and the reference tokenizers use 15) and \s as
// JavaScript defines it. Any other pattern goes through PCRE2.
#define QWEN2_PATTERN "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

const char QWEN2_SPLIT_PATTERN[] = QWEN2_PATTERN;

enum { C_L = 1, C_N = 2, C_S = 4, C_NL = 8 };

static int js_space(int32_t c) {
    return c == 9 || c == 10 || c == 11 || c == 12 || c == 13 || c == 32 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000 ||
           c == 0xFEFF;
}

static int char_class(int32_t c) {
    if (c < 128) {
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return C_L;
        if (c >= '0' && c <= '9') return C_N;
        if (c == '\r' || c == '\n') return C_S | C_NL;
        return js_space(c) ? C_S : 0;
    }
    if (js_space(c)) return C_S;
    switch (utf8proc_category(c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT: case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO: return C_L;
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO: return C_N;
    default: return 0;
    }
}

// Class of the character at s[i] (valid UTF-8) and its length.
static int cls_at(const char *s, size_t n, size_t i, size_t *len) {
    utf8proc_int32_t c;
    utf8proc_ssize_t r = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
    if (r <= 0) { *len = 1; return 0; }
    *len = (size_t)r;
    return char_class(c);
}

static size_t letters_from(const char *s, size_t n, size_t i) {  // end of a \p{L}* run
    size_t l;
    while (i < n && cls_at(s, n, i, &l) == C_L) i += l;
    return i;
}

// End of the match at pos (pos < n).
size_t qwen2_match(const char *s, size_t n, size_t pos) {
    size_t l, l2;
    // 1. contractions, ASCII case-insensitive
    if (s[pos] == '\'' && pos + 1 < n) {
        char a = (char)(s[pos + 1] | 0x20), b = pos + 2 < n ? (char)(s[pos + 2] | 0x20) : 0;
        if ((a == 'r' || a == 'v') && b == 'e') return pos + 3;
        if (a == 'l' && b == 'l') return pos + 3;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return pos + 2;
    }
    int c0 = cls_at(s, n, pos, &l);
    // 2. [^\r\n\p{L}\p{N}]?\p{L}+
    if (c0 == C_L) return letters_from(s, n, pos + l);
    if (!(c0 & (C_NL | C_N)) && pos + l < n && cls_at(s, n, pos + l, &l2) == C_L) return letters_from(s, n, pos + l + l2);
    // 3. \p{N}
    if (c0 == C_N) return pos + l;
    // 4. ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    size_t i = pos;
    if (s[i] == ' ' && i + 1 < n && cls_at(s, n, i + 1, &l2) == 0) i++;
    size_t j = i;
    while (j < n && cls_at(s, n, j, &l2) == 0) j += l2;
    if (j > i) {
        while (j < n && (s[j] == '\r' || s[j] == '\n')) j++;
        return j;
    }
    // whitespace run [pos, w)
    size_t w = pos, last_nl = 0;
    int any_nl = 0;
    while (w < n) {
        int c = cls_at(s, n, w, &l2);
        if (!(c & C_S)) break;
        if (c & C_NL) { any_nl = 1; last_nl = w; }
        w += l2;
    }
    // 5. \s*[\r\n]+ : up to the last CR/LF of the run
    if (any_nl) return last_nl + 1;
    // 6. \s+(?!\S): the whole run at the end of the text, else all but its last character
    if (w == n) return w;
    size_t prev = pos, k = pos;
    while (k < w) { prev = k; cls_at(s, n, k, &l2); k += l2; }
    if (prev > pos) return prev;
    // 7. \s+
    return w;
}

// ---- the tokenizer ------------------------------------------------------------------------------

typedef struct { char *content; size_t len; int id, special; } Added;

struct Tokenizer {
    int nids;
    char **bytes;            // id -> raw bytes of the token (byte-level decoded), NULL for unused ids
    uint32_t *nbytes;
    int byte_id[256];        // single-byte symbols
    MergeMap merges;
    StrMap vocab;            // byte-level string -> id (and added token contents)
    Added *added;
    int nadded;
    int first_added[256];    // index into added sorted by first byte, -1 when none
    int *added_next;         // chain of added tokens sharing a first byte (longest first)
    char *is_special;        // per id
    int qwen2;               // the known Qwen2 pattern: matched by qwen2_match
    pcre2_code *re;
    pcre2_match_data *md;
    PieceCache cache;
    SpecialIds sp;
    // scratch for BPE (no per-token allocation)
    int *sym, *prev, *next;
    size_t scap;
    struct HeapItem { int rank, pos, a, b; } *heap;
    size_t hcap;
};

// GPT-2's byte <-> printable code point table (bytes_to_unicode).
void byte_level_table(int byte_to_cp[256], int cp_to_byte[512]) {
    int n = 0;
    for (int i = 0; i < 512; i++) cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        byte_to_cp[b] = printable ? b : 256 + n++;
        cp_to_byte[byte_to_cp[b]] = b;
    }
}

// Byte-level string (UTF-8 of printable stand-ins) -> raw bytes. -1 when a character is not one.
static int unbyte(const char *s, const int cp_to_byte[512], char *out, uint32_t *n) {
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    size_t len = strlen(s);
    uint32_t k = 0;
    while (len) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t r = utf8proc_iterate(p, (utf8proc_ssize_t)len, &cp);
        if (r <= 0 || cp >= 512 || cp_to_byte[cp] < 0) return -1;
        out[k++] = (char)cp_to_byte[cp];
        p += r;
        len -= (size_t)r;
    }
    *n = k;
    return 0;
}

static int cmp_added_len(const void *a, const void *b) {
    const Added *x = a, *y = b;
    return x->len < y->len ? 1 : x->len > y->len ? -1 : 0;
}

static int add_added(Tokenizer *t, const char *content, int id, int special) {
    for (int i = 0; i < t->nadded; i++) if (t->added[i].id == id) return 0;
    t->added = xrealloc(t->added, (size_t)(t->nadded + 1) * sizeof(Added));
    t->added[t->nadded++] = (Added){xstrdup(content), strlen(content), id, special};
    return 0;
}

// Qwen's regex written with \s / \S; JS (the reference tokenizer's engine) and PCRE2 disagree on a
// few code points (U+0085, U+180E, U+FEFF), so \s is spelled out as JavaScript's set.
#define JS_SPACE "\\t\\n\\x{0B}\\f\\r \\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}\\x{FEFF}"
static char *rewrite_space_classes(const char *pat) {
    size_t n = strlen(pat);
    char *out = xmalloc(n * 24 + 1);
    size_t k = 0;
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        if (pat[i] == '\\' && i + 1 < n && (pat[i + 1] == 's' || pat[i + 1] == 'S')) {
            int neg = pat[i + 1] == 'S';
            const char *cls = in_class ? JS_SPACE : neg ? "[^" JS_SPACE "]" : "[" JS_SPACE "]";
            if (in_class && neg) { k += (size_t)sprintf(out + k, "\\S"); i++; continue; }  // never used by Qwen
            k += (size_t)sprintf(out + k, "%s", cls);
            i++;
            continue;
        }
        if (pat[i] == '\\' && i + 1 < n) { out[k++] = pat[i++]; out[k++] = pat[i]; continue; }
        if (pat[i] == '[') in_class = 1;
        else if (pat[i] == ']') in_class = 0;
        out[k++] = pat[i];
    }
    out[k] = 0;
    return out;
}

static const char *find_split_regex(json_t *pre) {
    if (!json_is_object(pre)) return NULL;
    const char *type = json_string_value(json_object_get(pre, "type"));
    if (type && !strcmp(type, "Split")) return json_string_value(json_object_get(json_object_get(pre, "pattern"), "Regex"));
    if (type && !strcmp(type, "Sequence")) {
        size_t i;
        json_t *p;
        json_array_foreach(json_object_get(pre, "pretokenizers"), i, p) {
            const char *r = find_split_regex(p);
            if (r) return r;
        }
    }
    return NULL;
}

#define GPT2_REGEX "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

Tokenizer *tok_load(const char *dir, Err *e) {
    char *path = path_join(dir, "tokenizer.json");
    json_t *j = json_read_file(path, e);
    if (!j) { free(path); return NULL; }
    Tokenizer *t = xcalloc(1, sizeof *t);
    strmap_init(&t->vocab);
    json_t *model = json_object_get(j, "model"), *vocab = json_object_get(model, "vocab"),
           *merges = json_object_get(model, "merges");
    const char *mtype = json_string_value(json_object_get(model, "type"));
    if (!mtype || strcmp(mtype, "BPE") || !json_is_object(vocab) || !json_is_array(merges)) {
        err_set(e, "%s: model: expected a BPE model with a vocab object and a merges list", path);
        goto fail;
    }
    int byte_to_cp[256], cp_to_byte[512];
    byte_level_table(byte_to_cp, cp_to_byte);

    // ids: vocabulary plus added tokens
    int maxid = -1;
    const char *k;
    json_t *v;
    json_object_foreach(vocab, k, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 10000000) {
            err_set(e, "%s: model.vocab['%s']: expected a non-negative id", path, k);
            goto fail;
        }
        if (json_integer_value(v) > maxid) maxid = (int)json_integer_value(v);
    }
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(j, "added_tokens"), i, a) {
        json_t *c = json_object_get(a, "content"), *id = json_object_get(a, "id");
        if (!json_is_string(c) || !json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) > 10000000) {
            err_set(e, "%s: added_tokens[%zu]: expected content and id", path, i);
            goto fail;
        }
        if (json_integer_value(id) > maxid) maxid = (int)json_integer_value(id);
        add_added(t, json_string_value(c), (int)json_integer_value(id), json_is_true(json_object_get(a, "special")));
    }
    // tokenizer_config.json may declare added tokens of its own (added_tokens_decoder).
    char *cfg_path = path_join(dir, "tokenizer_config.json");
    if (path_exists(cfg_path)) {
        json_t *cfg = json_read_file(cfg_path, e);
        if (!cfg) { free(cfg_path); goto fail; }
        json_t *dec = json_object_get(cfg, "added_tokens_decoder");
        json_object_foreach(dec, k, v) {
            char *end;
            long id = strtol(k, &end, 10);
            json_t *c = json_object_get(v, "content");
            if (*end || id < 0 || id > 10000000 || !json_is_string(c)) {
                err_set(e, "%s: added_tokens_decoder['%s']: expected an id and a content", cfg_path, k);
                json_decref(cfg);
                free(cfg_path);
                goto fail;
            }
            if (id > maxid) maxid = (int)id;
            add_added(t, json_string_value(c), (int)id, json_is_true(json_object_get(v, "special")));
        }
        json_decref(cfg);
    }
    free(cfg_path);
    t->nids = maxid + 1;
    t->bytes = xcalloc((size_t)t->nids, sizeof(char *));
    t->nbytes = xcalloc((size_t)t->nids, sizeof(uint32_t));
    t->is_special = xcalloc((size_t)t->nids, 1);
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    char buf[1024];
    json_object_foreach(vocab, k, v) {
        int id = (int)json_integer_value(v);
        uint32_t n;
        if (strlen(k) >= sizeof buf || unbyte(k, cp_to_byte, buf, &n)) {
            err_set(e, "%s: model.vocab: '%s' is not a byte-level token", path, k);
            goto fail;
        }
        t->bytes[id] = xmalloc(n + 1);
        memcpy(t->bytes[id], buf, n);
        t->nbytes[id] = n;
        if (n == 1) t->byte_id[(uint8_t)buf[0]] = id;
        strmap_put(&t->vocab, k, id);
    }
    for (int b = 0; b < 256; b++)
        if (t->byte_id[b] < 0) { err_set(e, "%s: model.vocab lacks the byte-level symbol of byte 0x%02x", path, b); goto fail; }

    // merges: "a b" or ["a", "b"], rank = position
    size_t nm = json_array_size(merges);
    t->merges.cap = 1;
    while (t->merges.cap < 2 * nm + 2) t->merges.cap *= 2;
    t->merges.s = xmalloc(t->merges.cap * sizeof(MergeSlot));
    for (size_t s = 0; s < t->merges.cap; s++) t->merges.s[s].merged = -1;
    json_array_foreach(merges, i, a) {
        char left[512], right[512];
        if (json_is_string(a)) {
            const char *s = json_string_value(a), *sp = strchr(s, ' ');
            if (!sp || (size_t)(sp - s) >= sizeof left || strlen(sp + 1) >= sizeof right) goto bad_merge;
            memcpy(left, s, (size_t)(sp - s));
            left[sp - s] = 0;
            strcpy(right, sp + 1);
        } else if (json_is_array(a) && json_array_size(a) == 2 && json_is_string(json_array_get(a, 0)) &&
                   json_is_string(json_array_get(a, 1)) && strlen(json_string_value(json_array_get(a, 0))) < sizeof left &&
                   strlen(json_string_value(json_array_get(a, 1))) < sizeof right) {
            strcpy(left, json_string_value(json_array_get(a, 0)));
            strcpy(right, json_string_value(json_array_get(a, 1)));
        } else {
            goto bad_merge;
        }
        char both[1024];
        snprintf(both, sizeof both, "%s%s", left, right);
        int l = strmap_get(&t->vocab, left), r = strmap_get(&t->vocab, right), m = strmap_get(&t->vocab, both);
        if (l < 0 || r < 0 || m < 0) {
            err_set(e, "%s: model.merges[%zu]: '%s' + '%s' uses tokens missing from the vocabulary", path, i, left, right);
            goto fail;
        }
        merge_put(&t->merges, ((uint64_t)(uint32_t)l << 32) | (uint32_t)r, (int)i, m);
        continue;
    bad_merge:
        err_set(e, "%s: model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", path, i);
        goto fail;
    }

    // added tokens: longest first within each first byte
    qsort(t->added, (size_t)t->nadded, sizeof(Added), cmp_added_len);
    t->added_next = xmalloc((size_t)(t->nadded + 1) * sizeof(int));
    for (int b = 0; b < 256; b++) t->first_added[b] = -1;
    for (int x = t->nadded - 1; x >= 0; x--) {
        Added *ad = &t->added[x];
        if (!ad->len) continue;
        t->added_next[x] = t->first_added[(uint8_t)ad->content[0]];
        t->first_added[(uint8_t)ad->content[0]] = x;
        if (ad->special) t->is_special[ad->id] = 1;
        if (!t->bytes[ad->id]) {
            t->bytes[ad->id] = xstrdup(ad->content);
            t->nbytes[ad->id] = (uint32_t)ad->len;
        }
        strmap_put(&t->vocab, ad->content, ad->id);
    }

    // pre-tokenizer regex
    const char *pat = find_split_regex(json_object_get(j, "pre_tokenizer"));
    t->qwen2 = pat && !strcmp(pat, QWEN2_PATTERN);
    char *rx = rewrite_space_classes(pat ? pat : GPT2_REGEX);
    int ecode;
    PCRE2_SIZE eoff;
    t->re = pcre2_compile((PCRE2_SPTR)rx, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &ecode, &eoff, NULL);
    free(rx);
    if (!t->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ecode, msg, sizeof msg);
        err_set(e, "%s: pre_tokenizer: regex does not compile (%s at %zu)", path, (char *)msg, (size_t)eoff);
        goto fail;
    }
    pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE);
    t->md = pcre2_match_data_create_from_pattern(t->re, NULL);

    t->cache.cap = CACHE_SLOTS;
    t->cache.s = xcalloc(t->cache.cap, sizeof(CacheSlot));
    t->cache.kcap = CACHE_KEY_BYTES;
    t->cache.keys = xmalloc(t->cache.kcap);
    t->cache.vcap = CACHE_KEY_BYTES / 4;
    t->cache.vals = xmalloc(t->cache.vcap * sizeof(int));

    t->sp = (SpecialIds){tok_token_id(t, "<|endoftext|>"), tok_token_id(t, "<|im_start|>"), tok_token_id(t, "<|im_end|>"),
                         tok_token_id(t, "<|vision_start|>"), tok_token_id(t, "<|vision_end|>"),
                         tok_token_id(t, "<|image_pad|>"), tok_token_id(t, "<|video_pad|>")};
    json_decref(j);
    free(path);
    return t;
fail:
    json_decref(j);
    free(path);
    tok_free(t);
    return NULL;
}

void tok_free(Tokenizer *t) {
    if (!t) return;
    for (int i = 0; i < t->nids; i++) free(t->bytes[i]);
    for (int i = 0; i < t->nadded; i++) free(t->added[i].content);
    free(t->bytes); free(t->nbytes); free(t->is_special); free(t->added); free(t->added_next);
    free(t->merges.s);
    strmap_free(&t->vocab);
    if (t->md) pcre2_match_data_free(t->md);
    if (t->re) pcre2_code_free(t->re);
    free(t->cache.s); free(t->cache.keys); free(t->cache.vals);
    free(t->sym); free(t->prev); free(t->next); free(t->heap);
    free(t);
}

const SpecialIds *tok_special(const Tokenizer *t) { return &t->sp; }
int tok_num_ids(const Tokenizer *t) { return t->nids; }
int tok_token_id(const Tokenizer *t, const char *content) { return strmap_get(&t->vocab, content); }

// ---- BPE on one piece ---------------------------------------------------------------------------

typedef struct HeapItem HeapItem;
static int heap_less(const HeapItem *x, const HeapItem *y) { return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos); }

static void heap_push(Tokenizer *t, size_t *n, HeapItem it) {
    if (*n == t->hcap) t->heap = xrealloc(t->heap, (t->hcap = t->hcap ? 2 * t->hcap : 256) * sizeof(HeapItem));
    size_t i = (*n)++;
    while (i && heap_less(&it, &t->heap[(i - 1) / 2])) { t->heap[i] = t->heap[(i - 1) / 2]; i = (i - 1) / 2; }
    t->heap[i] = it;
}
static HeapItem heap_pop(Tokenizer *t, size_t *n) {
    HeapItem top = t->heap[0], last = t->heap[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && heap_less(&t->heap[c + 1], &t->heap[c])) c++;
        if (!heap_less(&t->heap[c], &last)) break;
        t->heap[i] = t->heap[c];
        i = c;
    }
    if (*n) t->heap[i] = last;
    return top;
}

static void push_pair(Tokenizer *t, size_t *hn, int i) {
    int j = t->next[i];
    if (j < 0) return;
    const MergeSlot *m = merge_get(&t->merges, t->sym[i], t->sym[j]);
    if (m) heap_push(t, hn, (HeapItem){m->rank, i, t->sym[i], t->sym[j]});
}

// Ids of one pre-tokenized piece (raw bytes), appended to ids.
static void bpe_piece(Tokenizer *t, const char *p, size_t n, IntVec *ids) {
    uint64_t h = hash_bytes(p, n);
    const CacheSlot *c = cache_get(&t->cache, p, n, h);
    if (c) {
        for (uint32_t k = 0; k < c->vn; k++) intvec_push(ids, t->cache.vals[c->voff + k]);
        return;
    }
    if (n > t->scap) {
        t->scap = n * 2;
        t->sym = xrealloc(t->sym, t->scap * sizeof(int));
        t->prev = xrealloc(t->prev, t->scap * sizeof(int));
        t->next = xrealloc(t->next, t->scap * sizeof(int));
    }
    for (size_t i = 0; i < n; i++) {
        t->sym[i] = t->byte_id[(uint8_t)p[i]];
        t->prev[i] = (int)i - 1;
        t->next[i] = i + 1 < n ? (int)i + 1 : -1;
    }
    size_t hn = 0;
    for (size_t i = 0; i + 1 < n; i++) push_pair(t, &hn, (int)i);
    // Lowest rank first, leftmost among equal ranks; stale entries are skipped when popped.
    while (hn) {
        HeapItem it = heap_pop(t, &hn);
        int i = it.pos, j = t->next[i];
        if (t->sym[i] != it.a || j < 0 || t->sym[j] != it.b) continue;
        const MergeSlot *m = merge_get(&t->merges, it.a, it.b);
        t->sym[i] = m->merged;
        t->sym[j] = -1;
        t->next[i] = t->next[j];
        if (t->next[j] >= 0) t->prev[t->next[j]] = i;
        if (t->prev[i] >= 0) push_pair(t, &hn, t->prev[i]);
        push_pair(t, &hn, i);
    }
    size_t start = ids->n;
    for (int i = 0; i >= 0; i = t->next[i]) intvec_push(ids, t->sym[i]);
    cache_put(&t->cache, p, n, h, ids->v + start, ids->n - start);
}

// Regex split of an NFC text segment; base = its byte offset in the caller's text.
static void encode_segment(Tokenizer *t, const char *s, size_t n, size_t base, IntVec *ids, IntVec *starts) {
    size_t pos = 0;
    while (pos < n) {
        size_t ms = n, me = n;
        int rc = -1;
        if (t->qwen2) {
            ms = pos;
            me = qwen2_match(s, n, pos);
        } else {
            rc = pcre2_match(t->re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, t->md, NULL);
        }
        if (rc >= 0) {
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
            ms = ov[0];
            me = ov[1];
        }
        // "Isolated": the gap before a match and the match are separate pieces.
        size_t cuts[2][2] = {{pos, ms}, {ms, me}};
        for (int c = 0; c < 2; c++) {
            size_t a = cuts[c][0], b = cuts[c][1];
            if (b <= a) continue;
            size_t before = ids->n;
            bpe_piece(t, s + a, b - a, ids);
            if (starts) {  // every id gets its piece's start plus the bytes of the ids before it
                size_t off = a;
                for (size_t k = before; k < ids->n; k++) {
                    intvec_push(starts, (int)(base + (off < n ? off : n)));
                    off += t->nbytes[ids->v[k]];
                }
            }
        }
        if (me == pos) {  // an empty match cannot advance: step one character
            me = pos + 1;
            while (me < n && ((uint8_t)s[me] & 0xC0) == 0x80) me++;
        }
        pos = me;
    }
}

static int flush_text(Tokenizer *t, const char *s, size_t n, size_t base, IntVec *ids, IntVec *starts, Err *e) {
    if (!n) return 0;
    int ascii = 1;
    for (size_t i = 0; i < n && ascii; i++) ascii = (uint8_t)s[i] < 0x80;
    if (ascii) { encode_segment(t, s, n, base, ids, starts); return 0; }  // NFC of ASCII is itself
    utf8proc_uint8_t *out = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &out, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (r < 0) {
        err_set(e, "invalid UTF-8 at byte %zu: %s", base, utf8proc_errmsg(r));
        return -1;
    }
    encode_segment(t, (const char *)out, (size_t)r, base, ids, starts);
    free(out);
    return 0;
}

int tok_encode(Tokenizer *t, const char *text, size_t len, IntVec *ids, IntVec *starts, Err *e) {
    size_t seg = 0, pos = 0;
    while (pos < len) {
        int hit = -1;
        for (int x = t->first_added[(uint8_t)text[pos]]; x >= 0; x = t->added_next[x]) {
            const Added *ad = &t->added[x];
            if (ad->len <= len - pos && !memcmp(text + pos, ad->content, ad->len)) { hit = x; break; }  // longest first
        }
        if (hit < 0) { pos++; continue; }
        if (flush_text(t, text + seg, pos - seg, seg, ids, starts, e)) return -1;
        intvec_push(ids, t->added[hit].id);
        if (starts) intvec_push(starts, (int)pos);
        pos += t->added[hit].len;
        seg = pos;
    }
    return flush_text(t, text + seg, len - seg, seg, ids, starts, e);
}

// ---- decoding -----------------------------------------------------------------------------------

char *tok_decode(const Tokenizer *t, const int *ids, size_t n, int skip_special, size_t *len) {
    size_t cap = 64, k = 0;
    char *raw = xmalloc(cap);
    for (size_t i = 0; i < n; i++) {
        int id = ids[i];
        if (id < 0 || id >= t->nids || !t->bytes[id]) continue;
        if (skip_special && t->is_special[id]) continue;
        while (k + t->nbytes[id] + 1 > cap) raw = xrealloc(raw, cap *= 2);
        memcpy(raw + k, t->bytes[id], t->nbytes[id]);
        k += t->nbytes[id];
    }
    // Invalid UTF-8 (a character cut between tokens) becomes U+FFFD, one per maximal bad subpart.
    char *out = xmalloc(3 * k + 1);
    size_t o = 0, p = 0;
    while (p < k) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t r = utf8proc_iterate((const utf8proc_uint8_t *)raw + p, (utf8proc_ssize_t)(k - p), &cp);
        if (r > 0) { memcpy(out + o, raw + p, (size_t)r); o += (size_t)r; p += (size_t)r; continue; }
        memcpy(out + o, "\xEF\xBF\xBD", 3);
        o += 3;
        // skip the lead byte and the continuation bytes that could still belong to it
        uint8_t b = (uint8_t)raw[p];
        int need = b >= 0xF0 && b <= 0xF4 ? 3 : b >= 0xE0 && b <= 0xEF ? 2 : b >= 0xC2 && b <= 0xDF ? 1 : 0;
        p++;
        while (need-- > 0 && p < k && ((uint8_t)raw[p] & 0xC0) == 0x80) p++;
    }
    out[o] = 0;
    free(raw);
    *len = o;
    return out;
}
