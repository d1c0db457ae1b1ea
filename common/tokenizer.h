// tokenizer.h: the Qwen2/Qwen3 byte-level BPE tokenizer, loaded from a Hugging Face tokenizer.json
// (+ tokenizer_config.json): added tokens matched first and never split, NFC normalisation,
// the Split pre-tokenizer regex from the file, byte-level mapping, BPE by merge rank (spec/data.md §3).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "util.h"

typedef struct {
    int *v;
    size_t n, cap;
} IntVec;
void intvec_push(IntVec *a, int x);
void intvec_free(IntVec *a);

// Ids of the tokens the chat template and the model need, read from the files (-1 when absent).
typedef struct {
    int endoftext, im_start, im_end, vision_start, vision_end, image_pad, video_pad;
} SpecialIds;

typedef struct Tokenizer Tokenizer;

// Loads DIR/tokenizer.json (required) and DIR/tokenizer_config.json (optional).
Tokenizer *tok_load(const char *dir, Err *e);
void tok_free(Tokenizer *t);
const SpecialIds *tok_special(const Tokenizer *t);
// Id of an added token or vocabulary entry given as text, -1 when absent.
int tok_token_id(const Tokenizer *t, const char *content);
int tok_num_ids(const Tokenizer *t);  // one past the largest id

// Appends the ids of text[0..len) to ids. When starts is given, appends for every id the byte
// offset in text where its piece starts (exact when text is already NFC). Returns -1 (with e set)
// on invalid UTF-8.
int tok_encode(Tokenizer *t, const char *text, size_t len, IntVec *ids, IntVec *starts, Err *e);
// Bytes of the ids as UTF-8 (invalid sequences become U+FFFD); special added tokens are left out
// when skip_special. Caller frees; *len receives the length.
char *tok_decode(const Tokenizer *t, const int *ids, size_t n, int skip_special, size_t *len);

// The Qwen2 pre-tokenizer: end of the piece that starts at pos (pos < n) in NFC text s[0..n).
size_t qwen2_match(const char *s, size_t n, size_t pos);
// The Qwen2 split pattern as tokenizer.json writes it.
extern const char QWEN2_SPLIT_PATTERN[];
// GPT-2's bytes_to_unicode: byte -> printable code point, and back (-1 for other code points < 512).
void byte_level_table(int byte_to_cp[256], int cp_to_byte[512]);
