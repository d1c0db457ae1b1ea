// convert.h: streaming checkpoint conversion between the HF layout and the mcore layout, one
// tensor group at a time, so that peak memory stays near the largest group (the embedding).
#pragma once
#include "hfdir.h"
#include "mcore.h"

// A checkpoint to read from: an HF directory or one iteration of an mcore checkpoint.
typedef struct {
    int is_mcore;
    char *label;            // directory named in errors
    HfDir hf;               // HF source
    Parallel par;           // mcore source
    StFile *ranks;          // [pp][tp], index pp·tp_size + tp
    DType *dtype;           // per group, established by source_validate
} Source;

// Opens and validates against the model map: every expected tensor present with the shape the
// config implies and a float dtype shared by its group; nothing unexpected. Errors name the file.
int source_open_hf(Source *s, const ModelMap *mm, const char *dir, Err *e);
// iter_name: "release", "iter_0000100", or NULL for the tracker's choice.
int source_open_mcore(Source *s, const ModelMap *mm, const char *root, const char *iter_name, Err *e);
void source_close(Source *s);

// Writes an mcore iteration directory (iter_dir must exist) at the asked TP × PP.
int write_mcore_iter(const ModelMap *mm, Source *src, const char *iter_dir, Parallel par, Err *e);
// Writes HF safetensors (sharded at max_shard bytes, 0 = one file) into dir.
int write_hf_weights(const ModelMap *mm, Source *src, const char *dir, uint64_t max_shard, Err *e);

// Reads the model config kept with a checkpoint: DIR/config.json for HF, ROOT/hf/config.json for mcore.
int read_checkpoint_config(const char *dir, int is_mcore, ModelConfig *m, Err *e);
int dir_is_mcore(const char *dir);

// The programs: HF or mcore -> mcore release at TP × PP; mcore -> HF. iter: NULL (the tracker's),
// "release" or an iteration number. Both die with exit 2 on bad input, leaving no output.
void run_hf2mcore(const char *in, const char *out, Parallel par, const char *iter, int force);
void run_mcore2hf(const char *in, const char *out, const char *iter, uint64_t max_shard, int force);

// One group's mcore tensor at TP = PP = 1 (vocabulary padded, as a release checkpoint holds it) from
// fp32 HF tensors t[i] (indexed like mm->ps). Returns a malloc'd fp32 buffer and fills name/shape;
// NULL when none of the group's tensors is given (t[i] == NULL), and NULL with an error when only
// some are (a fused tensor cannot be half present).
float *mcore_group_fp32(const ModelMap *mm, int gi, float *const *t, char *name, size_t name_len, int *ndim,
                        int64_t shape[4], Err *e);

// Every tensor of the source as fp32, into w[i] (indexed like mm->ps, each param_numel floats).
// *dtype receives the dtype the source stores (that of its first group).
int source_read_fp32(const ModelMap *mm, Source *s, float *const *w, DType *dtype, Err *e);
// One model-parallel rank file at TP = PP = 1 (mp_rank_00/model.safetensors of an iteration) from fp32
// tensors w[i], stored as dt; written to a temporary name and renamed into place.
int mcore_write_rank_file(const ModelMap *mm, float *const *w, DType dt, const char *path, Err *e);
