// bpe_train.h: learning a small byte-level BPE tokenizer (Qwen2 layout) from text.
#pragma once
#include <stddef.h>

#include "util.h"

// Learns up to regular_vocab − 256 merges from text (pre-tokenized with the Qwen2 pattern) and
// writes DIR/tokenizer.json and DIR/tokenizer_config.json: ids 0..255 the bytes, then the merges,
// and the 14 Qwen special tokens (<|endoftext|>, <|im_start|>, <|im_end|>, ..., <|vision_start|>,
// <|vision_end|>, <|vision_pad|>, <|image_pad|>, <|video_pad|>) from special_base on, in Qwen's order.
int bpe_train_write(const char *text, size_t len, int regular_vocab, int special_base, const char *dir, Err *e);
