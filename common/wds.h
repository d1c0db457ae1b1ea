// wds.h: WebDataset tar shards as Megatron-Energon reads them (spec/data.md §1): members grouped
// into samples by the key rule (path + basename up to its FIRST dot), __*__ members skipped, a
// sample's members consecutive; writing also writes <shard>.tar.idx (uint64 offsets of each
// sample's first header, plus the end offset) and a dataset directory gets .nv-meta/.
// Tar I/O is libtar's, over plain files or gzip streams (zlib).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "util.h"

typedef struct {
    char *name;       // part after the key's dot: "jpg", "img0.jpg", "json"
    uint8_t *data;
    size_t size;
} WdsMember;

typedef struct {
    char *key;        // "ps_00000001", "dir/sample_5"
    WdsMember *m;
    int n;
    uint64_t offset;  // byte offset of the sample's first tar header (uncompressed stream)
} WdsSample;

void wds_sample_free(WdsSample *s);
// The member called `part` ("json"), or NULL.
const WdsMember *wds_member(const WdsSample *s, const char *part);

// Splits a member path into key and part by Energon's rule; returns -1 when the basename has no dot.
int wds_split_name(const char *path, char **key, char **part);

typedef struct WdsReader WdsReader;
// Opens a .tar or .tar.gz (gzip detected by its magic bytes).
WdsReader *wds_open(const char *path, Err *e);
// 1: *s holds the next sample; 0: end of shard; -1: damage (e names the shard and the byte offset;
// the samples returned before stay valid).
int wds_next(WdsReader *r, WdsSample *s, Err *e);
// Starts reading at a sample's offset (from .tar.idx) in an uncompressed shard.
WdsReader *wds_open_at(const char *path, uint64_t offset, Err *e);
// Offsets of every sample and the end offset (count + 1 entries) from PATH.idx, or by scanning the
// shard when there is no index. Returns the sample count or -1. Caller frees *offsets.
int64_t wds_index(const char *path, uint64_t **offsets, Err *e);
void wds_close(WdsReader *r);

typedef struct WdsWriter WdsWriter;
// Writes PATH (a .tar) through "PATH.tmp"; wds_finish renames it into place and writes PATH.idx.
// Members are written with mtime 0, uid/gid 0 and mode 0644, so the bytes depend on the content only.
WdsWriter *wds_create(const char *path, Err *e);
int wds_write(WdsWriter *w, const char *key, const WdsMember *m, int n, Err *e);
int64_t wds_count(const WdsWriter *w);
int wds_finish(WdsWriter *w, Err *e);   // frees w
void wds_abort(WdsWriter *w);           // removes the temporary, frees w

// DIR/.nv-meta/{dataset.yaml, split.yaml, .info.json} for shards (paths relative to DIR) with their
// sample counts. sample_type: an Energon class name ("CrudeWebdataset", ...).
int wds_write_meta(const char *dir, char *const *shards, const int64_t *counts, int n, const char *sample_type, Err *e);
