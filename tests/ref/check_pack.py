#!/usr/bin/python3
"""usage: check_pack.py TOKENIZER_DIR PACKED_DIR MAX_LEN RAW_SHARD... — reads packed shards with Python's
tarfile and checks: every packed sequence is at most MAX_LEN tokens; ids, labels and cu_seqlens agree;
every sub-sample starts with an unsupervised token; labels are ids or -100; the <|image_pad|> count of
each sequence equals the sum over its images of (height/28)·(width/28); image members match the json;
each input sample appears at most once, and the report's numbers add up: samples_in equals the raw sample
count (or its slice), samples_packed the number of packed keys, plus the dropped counts."""
import glob
import json
import os
import re
import sys
import tarfile

import numpy as np

tok_dir, out, max_len, raws = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
tok = json.load(open(os.path.join(tok_dir, "tokenizer.json")))
image_pad = next(t["id"] for t in tok["added_tokens"] if t["content"] == "<|image_pad|>")
KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def fail(m):
    sys.exit("check_pack: " + m)


raw_keys = []
for r in raws:
    with tarfile.open(r) as t:
        prev = None
        for m in t.getmembers():
            k = KEY.match(m.name).group(1)
            if k != prev:
                raw_keys.append(k)
                prev = k
packed_keys, seqs, tokens = [], 0, 0
for path in sorted(glob.glob(os.path.join(out, "packed-*.tar"))):
    with tarfile.open(path) as t:
        groups = {}
        for m in t.getmembers():
            k, part = KEY.match(m.name).groups()
            groups.setdefault(k, {})[part] = t.extractfile(m).read()
        for k, g in groups.items():
            ids = np.frombuffer(g["ids.i32"], "<i4")
            labels = np.frombuffer(g["labels.i32"], "<i4")
            cu = np.frombuffer(g["cu_seqlens.i32"], "<i4")
            meta = json.loads(g["json"])
            if len(ids) > max_len or len(ids) != len(labels) or cu[0] != 0 or cu[-1] != len(ids) or np.any(np.diff(cu) <= 0):
                fail(f"{path}:{k}: lengths {len(ids)} {len(labels)} cu {cu[:3]}..{cu[-1]}")
            if len(cu) - 1 != len(meta["samples"]):
                fail(f"{path}:{k}: {len(cu) - 1} sub-samples but {len(meta['samples'])} keys")
            if np.any(labels[cu[:-1]] != -100):
                fail(f"{path}:{k}: a sub-sample starts with a supervised token")
            if np.any((labels != -100) & (labels != ids)):
                fail(f"{path}:{k}: labels that are neither -100 nor the id")
            want = sum((im["height"] // 28) * (im["width"] // 28) for im in meta["images"])
            if int(np.sum(ids == image_pad)) != want:
                fail(f"{path}:{k}: {int(np.sum(ids == image_pad))} image pads, images need {want}")
            for im in meta["images"]:
                if im["member"] not in g:
                    fail(f"{path}:{k}: missing image member {im['member']}")
            packed_keys += meta["samples"]
            seqs += 1
            tokens += len(ids)
if len(set(packed_keys)) != len(packed_keys):
    fail("a sample was packed twice")
if not set(packed_keys) <= set(raw_keys):
    fail("packed keys that are not in the input")
reports = glob.glob(os.path.join(out, "report*.json"))
rep = json.load(open(reports[0]))
k, i = rep["num_shards"], rep["shard_index"]
expect_in = len([x for n, x in enumerate(raw_keys) if n % k == i])
if rep["samples_in"] != expect_in or rep["samples_packed"] != len(packed_keys) or \
        rep["samples_packed"] + sum(rep["dropped"].values()) != rep["samples_in"] or rep["sequences"] != seqs or rep["tokens"] != tokens:
    fail(f"report does not add up: {rep} vs {expect_in} in, {len(packed_keys)} packed, {seqs} sequences, {tokens} tokens")
print(f"check_pack: {seqs} sequences, {len(packed_keys)} samples, {tokens} tokens, fill {rep['fill_ratio']:.3f}")
