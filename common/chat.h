// chat.h: conversations -> token ids and labels with the LLaVA-OV-1.5 training template
// (spec/data.md §4, §6): ChatML with the default system prompt, <image> -> vision tokens, and the
// caption / VQA / multi-turn label policies.
#pragma once
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

#include "tokenizer.h"

#define CHAT_DEFAULT_SYSTEM "You are a helpful assistant."
#define CHAT_IMAGE_PLACEHOLDER "<image>"
#define LABEL_IGNORE (-100)

typedef enum { CHAT_INVALID = -1, CHAT_AUTO, CHAT_CAPTION, CHAT_VQA, CHAT_MULTITURN } ChatPolicy;
ChatPolicy chat_policy_from_name(const char *name);

typedef struct {
    ChatPolicy policy;          // CHAT_AUTO: the sample's "policy" field, else multi-turn
    int64_t min_pixels, max_pixels;
} ChatOptions;

typedef struct {
    char role;                  // 'u' user, 'a' assistant
    char *content;              // NFC
} ChatTurn;

typedef struct {
    char *system;               // NULL: the default system prompt
    ChatTurn *turns;
    int n;
    ChatPolicy policy;          // from the sample, CHAT_AUTO when absent
} ChatSample;

// Reads LLaVA "conversations" (from: human/gpt/system, value) or "messages" (role, content).
int chat_parse(json_t *j, ChatSample *s, Err *e);
void chat_free(ChatSample *s);
int chat_count_images(const ChatSample *s);

// Renders and tokenizes; image_tokens[i] = <|image_pad|> count of image i (in placeholder order).
// labels[t] = ids[t] where supervised, LABEL_IGNORE elsewhere (aligned with ids, HF convention).
int chat_encode(Tokenizer *t, const ChatSample *s, const ChatOptions *o, const int *image_tokens, int n_images,
                IntVec *ids, IntVec *labels, Err *e);

// The `tokenize` program's loop over stdin lines.
typedef enum { TS_ENCODE, TS_DECODE, TS_CHAT } TokenizeMode;
int tokenize_stream(Tokenizer *t, FILE *in, FILE *out, TokenizeMode mode, int skip_special, const ChatOptions *o);
