#!/usr/bin/env bats
# pack: synth -> pack, checked by tests/ref/check_pack.py (Python tarfile + numpy).
load helpers

setup_file() { "$BIN/synth" --out "$BATS_FILE_TMPDIR/d" --seed 9 2>/dev/null; }
setup() { T=$BATS_TEST_TMPDIR; D=$BATS_FILE_TMPDIR/d; TOK=$BATS_FILE_TMPDIR/d/tokenizer; }

@test "pack --help reads like a man page" {
    expect_help pack
    [[ "$output" == *"SLURM_ARRAY_TASK_ID"* ]]
}

@test "captions at max-len 2048: every sample packed or counted, fill ratio >= 0.95" {
    run --separate-stderr "$BIN/pack" --tokenizer "$TOK" --out "$T/p" --max-len 2048 "$D"/captions/*.tar
    [ "$status" -eq 0 ]
    run $PY "$REF/check_pack.py" "$TOK" "$T/p" 2048 "$D"/captions/*.tar
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(jq .samples_in "$T/p/report.json")" = 3000 ]
    [ "$(jq .samples_packed "$T/p/report.json")" = 3000 ]
    jq -e '.fill_ratio >= 0.95' "$T/p/report.json"
    [ -f "$T/p/.nv-meta/.info.json" ]
    [ -f "$T/p/packed-000000.tar.idx" ]
}

@test "a packed sub-sample is exactly what tokenize --chat renders for it" {
    "$BIN/pack" --tokenizer "$TOK" --out "$T/p" --max-len 2048 "$D"/captions/captions-000000.tar 2>/dev/null
    run $PY - "$T/p/packed-000000.tar" "$D/captions/captions-000000.tar" "$T/in.jsonl" <<'PY'
import io, json, sys, tarfile
import numpy as np
from PIL import Image
with tarfile.open(sys.argv[1]) as t:
    g = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.name.startswith("ps_00000000.")}
ids = np.frombuffer(g["ps_00000000.ids.i32"], "<i4"); labels = np.frombuffer(g["ps_00000000.labels.i32"], "<i4")
cu = np.frombuffer(g["ps_00000000.cu_seqlens.i32"], "<i4"); key = json.loads(g["ps_00000000.json"])["samples"][1]
with tarfile.open(sys.argv[2]) as t:
    j = json.load(t.extractfile(key + ".json"))
    img = next(m for m in t.getmembers() if m.name.startswith(key + ".") and not m.name.endswith(".json"))
    w, h = Image.open(io.BytesIO(t.extractfile(img).read())).size
j["image_sizes"] = [[h, w]]; j["policy"] = "vqa"
open(sys.argv[3], "w").write(json.dumps(j) + "\n")
print(json.dumps({"ids": ids[cu[1]:cu[2]].tolist(), "labels": labels[cu[1]:cu[2]].tolist()}))
PY
    [ "$status" -eq 0 ]
    want=$(echo "$output" | tail -1)
    got=$("$BIN/tokenize" --tokenizer "$TOK" --chat < "$T/in.jsonl" | $PY -c "import json,sys; print(json.dumps(json.load(sys.stdin)))")
    [ "$got" = "$want" ]
}

@test "the output is byte-identical whatever the thread count" {
    "$BIN/pack" --tokenizer "$TOK" --out "$T/a" --max-len 2048 --threads 1 "$D"/captions/*.tar "$D"/instruct/*.tar 2>/dev/null
    "$BIN/pack" --tokenizer "$TOK" --out "$T/b" --max-len 2048 --threads 2 "$D"/captions/*.tar "$D"/instruct/*.tar 2>/dev/null
    for f in "$T"/a/packed-*.tar; do cmp "$f" "$T/b/$(basename "$f")"; done
    cmp "$T/a/packed-000000.tar.idx" "$T/b/packed-000000.tar.idx"
}

@test "K slices (job array) are disjoint and together hold a single run's samples" {
    "$BIN/pack" --tokenizer "$TOK" --out "$T/one" --max-len 2048 "$D"/instruct/*.tar 2>/dev/null
    for i in 0 1 2; do
        SLURM_ARRAY_TASK_ID=$i SLURM_ARRAY_TASK_COUNT=3 "$BIN/pack" --tokenizer "$TOK" --out "$T/k" --max-len 2048 "$D"/instruct/*.tar 2>/dev/null
    done
    [ -f "$T/k/report.s00002of00003.json" ]
    run $PY - "$T/one" "$T/k" <<'PY'
import glob, json, re, sys, tarfile
def keys(pat):
    out = []
    for p in sorted(glob.glob(pat)):
        with tarfile.open(p) as t:
            out += [k for m in t.getmembers() if m.name.endswith(".json") for k in json.load(t.extractfile(m))["samples"]]
    return out
one = keys(sys.argv[1] + "/packed-*.tar")
parts = [keys(sys.argv[2] + f"/packed-s0000{i}of00003-*.tar") for i in range(3)]
assert sum(map(len, parts)) == len(one) == len(set(one)) == 2000, (len(one), list(map(len, parts)))
assert set().union(*map(set, parts)) == set(one)
assert all(not (set(a) & set(b)) for i, a in enumerate(parts) for b in parts[i + 1:])
print("ok")
PY
    echo "$output"
    [ "$output" = ok ]
}

@test "bad samples are skipped and counted by reason" {
    $PY - "$T/bad.tar" "$D/captions/captions-000000.tar" <<'PY'
import io, json, sys, tarfile
src = tarfile.open(sys.argv[2])
jpg = src.extractfile(next(m for m in src.getmembers() if m.name.endswith(".jpg"))).read()
good = {"conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "A red circle."}]}
def add(t, name, data):
    ti = tarfile.TarInfo(name); ti.size = len(data); t.addfile(ti, io.BytesIO(data))
with tarfile.open(sys.argv[1], "w") as t:
    add(t, "ok1.jpg", jpg); add(t, "ok1.json", json.dumps(good).encode())
    add(t, "noimg.json", json.dumps(dict(good, image="noimg.jpg")).encode())                      # missing_image
    add(t, "badimg.jpg", b"\xff\xd8\xff\xe0 not really a jpeg"); add(t, "badimg.json", json.dumps(good).encode())
    add(t, "badjson.jpg", jpg); add(t, "badjson.json", b"{\"conversations\": [")                 # malformed_json
    add(t, "empty.jpg", jpg); add(t, "empty.json", json.dumps({"conversations": []}).encode())  # empty_conversation
    two = {"conversations": [{"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "x"}]}
    add(t, "mismatch.jpg", jpg); add(t, "mismatch.json", json.dumps(two).encode())
    long = {"conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "red " * 3000}]}
    add(t, "long.jpg", jpg); add(t, "long.json", json.dumps(long).encode())                     # over_length
    add(t, "notext.jpg", jpg)                                                                    # no_text_member
    add(t, "ok2.jpg", jpg); add(t, "ok2.txt", b"A red circle in the center.")                   # caption pair
PY
    run --separate-stderr "$BIN/pack" --tokenizer "$TOK" --out "$T/p" --max-len 2048 "$T/bad.tar"
    [ "$status" -eq 0 ]
    run jq -c '[.samples_in, .samples_packed, .dropped]' "$T/p/report.json"
    [ "$output" = '[9,2,{"missing_image":1,"bad_image_header":1,"malformed_json":1,"empty_conversation":1,"image_placeholder_mismatch":1,"over_length":1,"no_text_member":1}]' ]
    run $PY "$REF/check_pack.py" "$TOK" "$T/p" 2048 "$T/bad.tar"
    [ "$status" -eq 0 ]
}

@test "a corrupt tar stops at the damage, names shard and offset, and keeps what was packed before" {
    head -c 200000 "$D/captions/captions-000001.tar" > "$T/cut.tar"
    run --separate-stderr "$BIN/pack" --tokenizer "$TOK" --out "$T/p" --max-len 2048 "$D/captions/captions-000000.tar" "$T/cut.tar" "$D/captions/captions-000002.tar"
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"$T/cut.tar"*"byte "* ]]
    n=$(jq .samples_in "$T/p/report.json")
    [ "$n" -gt 1000 ]
    [ "$n" -lt 2000 ]
    jq -e '.error | contains("cut.tar")' "$T/p/report.json"
    [ "$(jq .samples_packed "$T/p/report.json")" = "$n" ]
}
