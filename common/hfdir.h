// hfdir.h: a Hugging Face style checkpoint directory: model.safetensors, or shards listed by
// model.safetensors.index.json (always read through the index, never by guessing shard names).
#pragma once
#include "safetensors.h"
#include "strmap.h"

typedef struct {
    char *dir;
    int nfiles;
    StFile *files;
    int n;                  // tensors over all shards
    const StTensor **t;     // in index order (or file order for a single file)
    StrMap map;             // name -> position in t
} HfDir;

// Opens every shard and checks the index against them: each listed tensor is in its shard, each
// tensor of a shard is listed, no name is in two shards.
int hfdir_open(HfDir *h, const char *dir, Err *e);
void hfdir_close(HfDir *h);
const StTensor *hfdir_find(const HfDir *h, const char *name);

// The file holding t (the directory when t is NULL), for error messages.
const char *hfdir_path_of(const HfDir *h, const StTensor *t);
// Checks a weight tensor: present, the expected shape, a float dtype (F32/BF16/F16), and the same
// dtype as *group_dtype when that is set (tensors fused together); sets *group_dtype.
int check_weight(const StTensor *t, const char *file, const char *want_name, int ndim, const int64_t *shape,
                 DType *group_dtype, Err *e);

// True for the files a checkpoint directory keeps besides its weights (config, tokenizer,
// processor, generation config, remote code): everything but *.safetensors and their index.
int is_aux_file(const char *name);
// Copies every aux regular file of src into dst, except those named in `skip` (NULL-terminated).
// Returns the number of files copied, or -1.
int copy_aux_files(const char *src, const char *dst, const char *const *skip, Err *e);
