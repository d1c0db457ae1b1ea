// bpe_train.c: learns a small byte-level BPE tokenizer from a text corpus and writes it as a
// Hugging Face tokenizer.json + tokenizer_config.json in the Qwen2 layout (same pre-tokenizer,
// byte-level alphabet, ChatML and vision special tokens), so the tiny pipeline needs no download.
#include "bpe_train.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "strmap.h"
#include "tokenizer.h"

static const char *const SPECIALS[] = {
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
};
#define NSPECIAL ((int)(sizeof SPECIALS / sizeof SPECIALS[0]))

// Qwen2-VL's chat template (processor/tokenizer side; training renders in C, chat.c).
static const char CHAT_TEMPLATE[] =
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content "
    "or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' "
    "or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}";

typedef struct {
    int *sym;   // symbols of the word
    int n;
    int64_t count;
} Word;

// Byte-level string of raw bytes (each byte as its printable stand-in, UTF-8 encoded).
static char *byte_level(const char *b, size_t n, const int b2c[256]) {
    char *out = xmalloc(2 * n + 1), *o = out;
    for (size_t i = 0; i < n; i++) {
        int c = b2c[(uint8_t)b[i]];
        if (c < 0x80) *o++ = (char)c;
        else { *o++ = (char)(0xC0 | (c >> 6)); *o++ = (char)(0x80 | (c & 0x3F)); }
    }
    *o = 0;
    return out;
}

int bpe_train_write(const char *text, size_t len, int regular_vocab, int special_base, const char *dir, Err *e) {
    if (special_base < regular_vocab) { err_set(e, "special tokens at %d overlap the %d regular ids", special_base, regular_vocab); return -1; }
    int b2c[256], c2b[512];
    byte_level_table(b2c, c2b);
    // 1. words: pre-tokenized pieces with their counts
    StrMap index;
    strmap_init(&index);
    Word *w = NULL;
    int nw = 0, cap = 0;
    for (size_t pos = 0; pos < len;) {
        size_t end = qwen2_match(text, len, pos);
        char *piece = xasprintf("%.*s", (int)(end - pos), text + pos);
        int k = strmap_get(&index, piece);
        if (k < 0) {
            if (nw == cap) w = xrealloc(w, (size_t)(cap = cap ? 2 * cap : 1024) * sizeof(Word));
            w[nw] = (Word){xmalloc((end - pos) * sizeof(int)), (int)(end - pos), 0};
            for (size_t i = pos; i < end; i++) w[nw].sym[i - pos] = (uint8_t)text[i];  // ids 0..255 = bytes
            strmap_put(&index, piece, nw);
            k = nw++;
        }
        w[k].count++;
        free(piece);
        pos = end;
    }
    strmap_free(&index);
    // token id -> raw bytes; ids 0..255 are the bytes in GPT-2's table order
    char **tok = xcalloc((size_t)regular_vocab, sizeof(char *));
    size_t *tlen = xcalloc((size_t)regular_vocab, sizeof(size_t));
    int order[256], no = 0;  // byte ids ordered by their stand-in code point (as in GPT-2 style vocabularies)
    for (int cp = 0; cp < 512; cp++) if (c2b[cp] >= 0) order[no++] = c2b[cp];
    int byte_id[256];
    for (int i = 0; i < 256; i++) {
        byte_id[order[i]] = i;
        tok[i] = xmalloc(1);
        tok[i][0] = (char)order[i];
        tlen[i] = 1;
    }
    for (int k = 0; k < nw; k++)
        for (int i = 0; i < w[k].n; i++) w[k].sym[i] = byte_id[w[k].sym[i]];
    // 2. merges: the most frequent adjacent pair, ties to the smallest (left, right)
    int nmerge = 0, (*merges)[2] = xmalloc((size_t)(regular_vocab + 1) * sizeof *merges);
    int64_t *pc = xmalloc((size_t)regular_vocab * (size_t)regular_vocab * sizeof(int64_t));
    int next_id = 256;
    while (next_id < regular_vocab) {
        int id = next_id;  // symbols in use are all < id
        memset(pc, 0, (size_t)id * (size_t)id * sizeof(int64_t));
        for (int k = 0; k < nw; k++)
            for (int i = 0; i + 1 < w[k].n; i++) pc[(size_t)w[k].sym[i] * (size_t)id + (size_t)w[k].sym[i + 1]] += w[k].count;
        int64_t best = 1;
        int ba = -1, bb = -1;
        for (int a = 0; a < id; a++)
            for (int b = 0; b < id; b++)
                if (pc[(size_t)a * id + b] > best) { best = pc[(size_t)a * id + b]; ba = a; bb = b; }
        if (ba < 0) break;  // no pair occurs twice: the vocabulary stays smaller
        size_t n = tlen[ba] + tlen[bb];
        char *str = xmalloc(n);
        memcpy(str, tok[ba], tlen[ba]);
        memcpy(str + tlen[ba], tok[bb], tlen[bb]);
        // The same string can come from two different merges ("ab"+"c", "a"+"bc"): it keeps one id.
        int target = -1;
        for (int t = 256; t < next_id && target < 0; t++) if (tlen[t] == n && !memcmp(tok[t], str, n)) target = t;
        if (target < 0) { target = next_id++; tok[target] = str; tlen[target] = n; }
        else free(str);
        merges[nmerge][0] = ba;
        merges[nmerge][1] = bb;
        nmerge++;
        for (int k = 0; k < nw; k++) {
            int o = 0;
            for (int i = 0; i < w[k].n; i++) {
                if (i + 1 < w[k].n && w[k].sym[i] == ba && w[k].sym[i + 1] == bb) { w[k].sym[o++] = target; i++; }
                else w[k].sym[o++] = w[k].sym[i];
            }
            w[k].n = o;
        }
        if (nmerge >= regular_vocab) break;
    }
    free(pc);
    int ntok = next_id;
    // 3. tokenizer.json
    json_t *vocab = json_object(), *mlist = json_array(), *added = json_array(), *dec = json_object();
    char **bl = xcalloc((size_t)ntok, sizeof(char *));
    int rc = 0;
    for (int id = 0; id < ntok && !rc; id++) {
        bl[id] = byte_level(tok[id], tlen[id], b2c);
        if (json_object_get(vocab, bl[id])) { err_set(e, "duplicate token learnt: '%s'", bl[id]); rc = -1; }
        json_object_set_new(vocab, bl[id], json_integer(id));
    }
    for (int m = 0; m < nmerge; m++) json_array_append_new(mlist, json_pack("[s,s]", bl[merges[m][0]], bl[merges[m][1]]));
    for (int s = 0; s < NSPECIAL; s++) {
        json_t *t = json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", special_base + s, "content", SPECIALS[s],
                              "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0, "special", 1);
        json_t *d = json_deep_copy(t);  // tokenizer_config.json's entry: the same without the id
        json_object_del(d, "id");
        json_array_append_new(added, t);
        char key[16];
        snprintf(key, sizeof key, "%d", special_base + s);
        json_object_set_new(dec, key, d);
    }
    json_t *bytelevel = json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 0,
                                  "use_regex", 0);
    json_t *tj = json_pack(
        "{s:s, s:n, s:n, s:o, s:{s:s}, s:{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, O]}, s:O, s:O, "
        "s:{s:s, s:n, s:n, s:s, s:s, s:b, s:b, s:b, s:o, s:o}}",
        "version", "1.0", "truncation", "padding", "added_tokens", added, "normalizer", "type", "NFC", "pre_tokenizer",
        "type", "Sequence", "pretokenizers", "type", "Split", "pattern", "Regex", QWEN2_SPLIT_PATTERN, "behavior",
        "Isolated", "invert", 0, bytelevel, "post_processor", bytelevel, "decoder", bytelevel, "model", "type", "BPE",
        "dropout", "unk_token", "continuing_subword_prefix", "", "end_of_word_suffix", "", "fuse_unk", 0,
        "byte_fallback", 0, "ignore_merges", 0, "vocab", vocab, "merges", mlist);
    json_decref(bytelevel);
    json_t *cj = json_pack("{s:b, s:b, s:o, s:n, s:s, s:s, s:s, s:b, s:s, s:i, s:s, s:b, s:n}", "add_bos_token", 0,
                           "add_prefix_space", 0, "added_tokens_decoder", dec, "bos_token", "chat_template",
                           CHAT_TEMPLATE, "eos_token", "<|im_end|>", "pad_token", "<|endoftext|>",
                           "clean_up_tokenization_spaces", 0, "errors", "replace", "model_max_length", 32768,
                           "tokenizer_class", "Qwen2Tokenizer", "split_special_tokens", 0, "unk_token");
    char *p1 = path_join(dir, "tokenizer.json"), *p2 = path_join(dir, "tokenizer_config.json");
    if (!rc) rc = json_write_file(p1, tj, e) || json_write_file(p2, cj, e) ? -1 : 0;
    free(p1);
    free(p2);
    json_decref(tj);
    json_decref(cj);
    for (int id = 0; id < ntok; id++) { free(bl[id]); free(tok[id]); }
    for (int id = ntok; id < regular_vocab; id++) free(tok[id]);
    free(bl); free(tok); free(tlen); free(merges);
    for (int k = 0; k < nw; k++) free(w[k].sym);
    free(w);
    return rc;
}
