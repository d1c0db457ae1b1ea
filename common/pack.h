// pack.h: offline padding-free packing (spec/data.md §6-§7). Raw samples are rendered with the
// chat template, measured exactly (image tokens from header-only sizes), and bin-packed into
// sequences of at most max_len tokens, written as WebDataset shards:
//   ps_00000000.ids.i32         token ids, little-endian int32
//   ps_00000000.labels.i32      labels aligned with the ids (−100: no loss)
//   ps_00000000.cu_seqlens.i32  [0, len0, len0+len1, ...] sub-sample boundaries
//   ps_00000000.json            {"samples": [keys], "images": [{"member", "height", "width"}], ...}
//   ps_00000000.img{k}.{ext}    the original bytes of every image, in order
#pragma once
#include <stdint.h>

typedef struct {
    const char *tokenizer, *out;
    int64_t max_len, min_pixels, max_pixels, per_shard;
    int shard_index, num_shards, threads;
    const char *policy;     // "auto": caption pairs -> caption, LLaVA conversations -> vqa, messages -> multiturn
    char **inputs;
    int ninputs;
} PackOptions;

// Returns the exit code: 0, or 2 when an input shard was damaged (what came before is packed).
int pack_run(const PackOptions *o);
