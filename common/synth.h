// synth.h: deterministic synthetic datasets for the tiny pipeline and the tests. Under DIR:
//   captions/   LLaVA-558K style samples (jpg|png + json with "conversations"), stages 1 and 1.5
//   instruct/   MultiMixQA style multi-turn samples (image_N.0_*.jpg + json {texts, media, name}):
//               colour, shape, count, position, yes/no and multiple-choice questions, stage 2
//   eval/{mme,mmbench,ai2d,docvqa,chartqa}/  held-out sets in those benchmarks' field layouts
//   tokenizer/  a byte-level BPE learnt from all of the text above (Qwen2 layout, special ids
//               from SYNTH_SPECIAL_BASE: <|image_pad|> = 1012, as data-specs/models/tiny.json says)
// Each dataset directory holds WebDataset shards of 1000 samples with .tar.idx and .nv-meta.
#pragma once
#include <stdint.h>

#include "util.h"

#define SYNTH_REGULAR_VOCAB 1000
#define SYNTH_SPECIAL_BASE 1000

// scale multiplies the sample counts (3000 captions, 2000 conversations, 200 images per eval set).
int synth_run(const char *dir, uint64_t seed, int scale, Err *e);
