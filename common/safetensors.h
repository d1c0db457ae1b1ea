// safetensors.h: reading (mmap, fully validated) and writing (declared layout, sharded, renamed into
// place) of the safetensors format, spec/checkpoints.md §1.2.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "strmap.h"
#include "util.h"

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (100u * 1000u * 1000u)  // the reference implementation's limit

typedef struct {
    char *name;
    DType dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end;   // byte range relative to the data buffer
    const uint8_t *data;   // points into the mapping
    size_t nbytes;
} StTensor;

typedef struct {
    char *path;
    uint8_t *map;
    size_t size;
    int n;
    StTensor *tensors;     // in file (data offset) order
    StrMap index;          // name -> position in tensors
} StFile;

int64_t shape_numel(int ndim, const int64_t *shape);
// "[3072, 1024]" into buf.
const char *shape_str(int ndim, const int64_t *shape, char *buf, size_t len);

// Maps and validates a file: header length within the file and 100 MB, valid JSON object without
// duplicate names, known dtypes, non-negative shapes whose numel × dtype size equals the byte range,
// byte ranges that tile the data buffer exactly (no overlap, no hole, nothing past the end).
int st_open(StFile *f, const char *path, Err *e);
void st_close(StFile *f);
const StTensor *st_find(const StFile *f, const char *name);
// Drops the pages of a tensor from this process's resident set (the page cache keeps them), so a
// conversion that streams through a large file keeps a small footprint.
void st_release(const StTensor *t);

// ---- writing ----------------------------------------------------------------------------------
// Declare every tensor first (name, dtype, shape), then open (lays out shards and writes headers),
// then write each tensor's bytes in any order, then finish (checks all were written, fsyncs, renames
// the temporary files into place and writes the index when there is more than one shard).
// Output names: "<base>.safetensors", or "<base>-00001-of-00003.safetensors"... plus
// "<base>.safetensors.index.json" (spec/checkpoints.md §1.2, huggingface_hub's greedy split).
typedef struct StWriter StWriter;

StWriter *stw_new(const char *dir, const char *base, uint64_t max_shard_bytes /* 0: one file */);
int stw_declare(StWriter *w, const char *name, DType dtype, int ndim, const int64_t *shape, Err *e);
int stw_open(StWriter *w, Err *e);
int stw_write(StWriter *w, const char *name, const void *data, Err *e);
int stw_finish(StWriter *w, Err *e);
void stw_free(StWriter *w);  // also removes temporaries of an unfinished writer
int stw_num_shards(const StWriter *w);
// A one-file writer for PATH, which must end in ".safetensors" (NULL and e set otherwise).
StWriter *stw_new_file(const char *path, Err *e);
