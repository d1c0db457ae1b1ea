#!/usr/bin/env bats
# synth: deterministic synthetic datasets, eval sets and a tokenizer that a reference loads.
load helpers

setup_file() { "$BIN/synth" --out "$BATS_FILE_TMPDIR/d" --seed 5 2>/dev/null; }
setup() { T=$BATS_TEST_TMPDIR; D=$BATS_FILE_TMPDIR/d; }

@test "synth --help reads like a man page" {
    expect_help synth
}

@test "synth is deterministic in its seed" {
    "$BIN/synth" --out "$T/a" --seed 5 2>/dev/null
    diff -r "$D" "$T/a"
    "$BIN/synth" --out "$T/b" --seed 6 2>/dev/null
    run cmp -s "$D/captions/captions-000000.tar" "$T/b/captions/captions-000000.tar"
    [ "$status" -ne 0 ]
}

@test "datasets: sample counts, Energon metadata, decodable images whose text matches the scene" {
    [ "$("$BIN/shards" ls "$D"/captions/*.tar | wc -l)" -eq 3000 ]
    [ "$("$BIN/shards" ls "$D"/instruct/*.tar | wc -l)" -eq 2000 ]
    for k in mme mmbench ai2d docvqa chartqa; do
        [ "$("$BIN/shards" ls "$D/eval/$k"/*.tar | wc -l)" -eq 200 ]
        [ -f "$D/eval/$k/.nv-meta/.info.json" ]
    done
    [ "$(jq '.shard_counts | add' "$D/captions/.nv-meta/.info.json")" = 3000 ]
    run $PY - "$D" <<'PY'
import io, json, sys, tarfile
from PIL import Image
d = sys.argv[1]
colors = {"red": (220, 30, 30), "blue": (40, 70, 220), "green": (30, 170, 60), "yellow": (240, 210, 30),
          "purple": (140, 50, 170), "orange": (245, 140, 20), "black": (20, 20, 20), "pink": (240, 120, 180)}
cells = ["top left", "top middle", "top right", "middle left", "center", "middle right", "bottom left", "bottom middle", "bottom right"]
n = 0
with tarfile.open(d + "/instruct/instruct-000000.tar") as t:
    ms = {m.name: m for m in t.getmembers()}
    for name, m in ms.items():
        if not name.endswith(".json"):
            continue
        j = json.load(t.extractfile(m))
        assert j["media"] == "image" and j["texts"][0]["content"].startswith("<image>\n")
        img = Image.open(io.BytesIO(t.extractfile(ms[name[:-4] + j["name"][0]]).read())).convert("RGB")
        for q, a in zip(j["texts"][::2], j["texts"][1::2]):
            # "Where is the <colour> <shape>?" -> "In the <cell>.": the cell's centre has that colour
            if q["content"].split("\n")[-1].startswith("Where is the "):
                colour = q["content"].split("Where is the ")[1].split()[0]
                cell = cells.index(a["content"][len("In the "):-1])
                w, h = img.size
                px = img.getpixel((int((cell % 3 + 0.5) * w / 3), int((cell // 3 + 0.5) * h / 3)))
                assert max(abs(p - c) for p, c in zip(px, colors[colour])) < 40, (name, px, colour)
                n += 1
assert n > 100, n
print("ok", n)
PY
    echo "$output"
    [[ "$output" == "ok "* ]]
}

@test "the learnt tokenizer loads in the reference implementation and tokenizes the data identically" {
    run $PY - "$D" "$T/texts.jsonl" <<'PY'
import json, sys, tarfile
d, out = sys.argv[1], open(sys.argv[2], "w")
for path, key in ((d + "/captions/captions-000000.tar", "conversations"), (d + "/instruct/instruct-000000.tar", "texts")):
    with tarfile.open(path) as t:
        for m in t.getmembers():
            if m.name.endswith(".json"):
                for turn in json.load(t.extractfile(m))[key]:
                    out.write(json.dumps({"text": turn.get("value", turn.get("content")) + "<|im_end|>\n"}) + "\n")
PY
    "$BATS_TEST_DIRNAME/js/setup.sh" >/dev/null
    node "$BATS_TEST_DIRNAME/js/encode_with.js" "$D/tokenizer" < "$T/texts.jsonl" > "$T/ref.jsonl" 2>/dev/null
    "$BIN/tokenize" --tokenizer "$D/tokenizer" < "$T/texts.jsonl" > "$T/ours.jsonl"
    [ "$(wc -l < "$T/ours.jsonl")" -gt 3000 ]
    cmp "$T/ref.jsonl" <(sed 's/, /,/g; s/": /":/' "$T/ours.jsonl")
    # special ids where the tiny preset expects them
    [ "$(jq '.added_tokens[] | select(.content == "<|image_pad|>") | .id' "$D/tokenizer/tokenizer.json")" = \
      "$(jq .image_token_id "$BATS_TEST_DIRNAME/../data-specs/models/tiny.json")" ]
    [ "$(jq '.added_tokens | length' "$D/tokenizer/tokenizer.json")" = 14 ]
    [ "$(jq -r .eos_token "$D/tokenizer/tokenizer_config.json")" = "<|im_end|>" ]
}

@test "merge takes the image token id from the synth tokenizer" {
    make_tiny_src "$T/src"
    "$BIN/merge" --vit "$T/src/vit" --llm "$T/src/llm" --tokenizer "$D/tokenizer" --out "$T/m" 2>/dev/null
    [ "$(jq .image_token_id "$T/m/config.json")" = 1012 ]
    [ "$(jq .video_token_id "$T/m/config.json")" = 1013 ]
    cmp "$D/tokenizer/tokenizer.json" "$T/m/tokenizer.json"
}
