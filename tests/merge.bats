#!/usr/bin/env bats
# merge: the stage-0 checkpoint, checked against spec/model.md by tests/ref/check_merge.py.
load helpers

setup_file() {
    S=$BATS_FILE_TMPDIR/src
    make_tiny_src "$S"
    make_tiny_src "$BATS_FILE_TMPDIR/src32" --dtype fp32 --rice-prefix
}
setup() { T=$BATS_TEST_TMPDIR; S=$BATS_FILE_TMPDIR/src; S32=$BATS_FILE_TMPDIR/src32; }

@test "merge --help reads like a man page" {
    expect_help merge
    [[ "$output" == *"--adapter DIR"* ]]
}

@test "merge of the tiny preset gives the names, shapes and values of spec/model.md" {
    run --separate-stderr tiny_merge "$S" "$T/m"
    [ "$status" -eq 0 ]
    run $PY "$REF/check_merge.py" "$S/vit" "$S/llm" "$T/m" BF16
    echo "$output"
    [ "$status" -eq 0 ]
    [ -f "$T/m/preprocessor_config.json" ]
    [ -f "$T/m/generation_config.json" ]
    [ "$(jq .temporal_patch_size "$T/m/preprocessor_config.json")" = 1 ]
    [ "$(jq .size.longest_edge "$T/m/preprocessor_config.json")" = "$(jq .max_pixels "$T/m/preprocessor_config.json")" ]
}

@test "merge rounds fp32 sources to bf16 as PyTorch does, and accepts the vision_model. prefix" {
    tiny_merge "$S32" "$T/m"
    run $PY "$REF/check_merge.py" "$S32/vit" "$S32/llm" "$T/m" BF16
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "merge --dtype fp32 keeps fp32 and widens bf16 exactly" {
    tiny_merge "$S32" "$T/a" --dtype fp32
    run $PY "$REF/check_merge.py" "$S32/vit" "$S32/llm" "$T/a" F32
    [ "$status" -eq 0 ]
    tiny_merge "$S" "$T/b" --dtype fp32
    run $PY "$REF/check_merge.py" "$S/vit" "$S/llm" "$T/b" F32
    [ "$status" -eq 0 ]
}

@test "merge writes size-based shards with an index, and is deterministic" {
    tiny_merge "$S" "$T/a" --max-shard-size 500KB
    [ -f "$T/a/model.safetensors.index.json" ]
    n=$(ls "$T/a"/model-000*-of-000*.safetensors | wc -l)
    [ "$n" -ge 4 ]
    [ "$(jq '.weight_map | length' "$T/a/model.safetensors.index.json")" = 82 ]
    run $PY "$REF/check_merge.py" "$S/vit" "$S/llm" "$T/a" BF16
    [ "$status" -eq 0 ]
    tiny_merge "$S" "$T/b"
    tiny_merge "$S" "$T/c"
    cmp "$T/b/model.safetensors" "$T/c/model.safetensors"
    run $PY "$REF/same_tensors.py" "$T/a" "$T/b"
    [ "$status" -eq 0 ]
}

@test "merge uses --adapter weights for the merger" {
    tiny_merge "$S" "$T/m"
    $PY - "$T/m" "$T/ad" <<'PY'
import os, sys
sys.path.insert(0, os.environ["REF"])
from stlib import read_dir, write_file
m = read_dir(sys.argv[1])
os.makedirs(sys.argv[2])
write_file(sys.argv[2] + "/model.safetensors",
           [(k.replace("visual.merger.", "model.mm_projector."), dt, a + 1) for k, (dt, a) in m.items() if k.startswith("visual.merger.")])
PY
    tiny_merge "$S" "$T/m2" --adapter "$T/ad"
    run $PY - "$T/m2" "$T/ad" <<'PY'
import os, sys
sys.path.insert(0, os.environ["REF"])
from stlib import read_dir, same_bits
m, a = read_dir(sys.argv[1]), read_dir(sys.argv[2])
assert all(same_bits(m[k.replace("model.mm_projector.", "visual.merger.")][1], v) for k, (dt, v) in a.items())
print("ok")
PY
    [ "$output" = ok ]
}

@test "merge copies tokenizer files and reads the image token id from tokenizer.json" {
    cp -r "$S/llm" "$T/llm"
    printf '{"added_tokens": [{"id": 1020, "content": "<|image_pad|>", "special": true}, {"id": 1021, "content": "<|video_pad|>", "special": true}]}\n' > "$T/llm/tokenizer.json"
    echo '{"model_max_length": 4096}' > "$T/llm/tokenizer_config.json"
    "$BIN/merge" --vit "$S/vit" --llm "$T/llm" --out "$T/m" 2>/dev/null
    [ "$(jq .image_token_id "$T/m/config.json")" = 1020 ]
    [ "$(jq .video_token_id "$T/m/config.json")" = 1021 ]
    cmp "$T/llm/tokenizer.json" "$T/m/tokenizer.json"
    cmp "$T/llm/tokenizer_config.json" "$T/m/tokenizer_config.json"
}

@test "merge of the 4b widths (2 layers) gives spec/model.md's names and shapes; tied LLM gets a copied head" {
    "$BIN/mkckpt" --preset 4b --layers 2 --out "$T/s" 2>/dev/null
    run --separate-stderr "$BIN/merge" --vit "$T/s/vit" --llm "$T/s/llm" --out "$T/m"
    [ "$status" -eq 0 ]
    run $PY "$REF/check_merge.py" "$T/s/vit" "$T/s/llm" "$T/m" BF16
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(jq .vocab_size "$T/m/config.json")" = 151936 ]
    [ "$(jq .image_token_id "$T/m/config.json")" = 151655 ]
    [ "$(jq .text_config.rope_theta "$T/m/config.json")" = 5000000 ]
    [ "$(jq .vision_config.text_hidden_size "$T/m/config.json")" = 2560 ]
}

@test "merge of the 8b widths (2 layers): untied head from the LLM, merger output 4096" {
    "$BIN/mkckpt" --preset 8b --layers 2 --out "$T/s" 2>/dev/null
    run --separate-stderr "$BIN/merge" --vit "$T/s/vit" --llm "$T/s/llm" --out "$T/m"
    [ "$status" -eq 0 ]
    run $PY "$REF/check_merge.py" "$T/s/vit" "$T/s/llm" "$T/m" BF16
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(jq .vision_config.text_hidden_size "$T/m/config.json")" = 4096 ]
    [ "$(jq .text_config.rope_theta "$T/m/config.json")" = 1000000 ]
}

# ---- bad input: exit 2, one line naming the file and the item, no output ----

corrupt_vit() {  # MODE [ARGS] -> $T/bad (a copy of the tiny source with a damaged vit file)
    local mode=$1; shift
    cp -r "$S" "$T/bad"
    $PY "$REF/corrupt.py" "$mode" "$S/vit/model.safetensors" "$T/bad/vit/model.safetensors" "$@"
}
F() { echo "$T/bad/vit/model.safetensors"; }

@test "merge: truncated safetensors file" {
    corrupt_vit truncate
    expect_bad_input "$T/m" "$(F)" "truncated" "post_layernorm.bias" -- tiny_merge_raw
}

tiny_merge_raw() { "$BIN/merge" --vit "$T/bad/vit" --llm "$T/bad/llm" --out "$T/m" --image-token-id 1012; }

@test "merge: header length past the end of the file" {
    corrupt_vit hlen_past_end
    expect_bad_input "$T/m" "$(F)" "header length" -- tiny_merge_raw
}

@test "merge: header that is not JSON" {
    corrupt_vit garbage_json
    expect_bad_input "$T/m" "$(F)" "not valid JSON" -- tiny_merge_raw
}

@test "merge: unknown dtype" {
    corrupt_vit unknown_dtype
    expect_bad_input "$T/m" "$(F)" "unknown dtype 'F99'" "embeddings.patch_embedding.weight" -- tiny_merge_raw
}

@test "merge: shape x dtype does not match the byte range" {
    corrupt_vit bad_nbytes
    expect_bad_input "$T/m" "$(F)" "embeddings.patch_embedding.weight" "needs" -- tiny_merge_raw
}

@test "merge: overlapping tensors" {
    corrupt_vit overlap
    expect_bad_input "$T/m" "$(F)" "overlaps" -- tiny_merge_raw
}

@test "merge: duplicate tensor name" {
    corrupt_vit dup
    expect_bad_input "$T/m" "$(F)" "embeddings.patch_embedding.weight" -- tiny_merge_raw
}

@test "merge: missing tensor" {
    corrupt_vit drop encoder.layers.1.self_attn.k_proj.bias
    expect_bad_input "$T/m" "$(F)" "missing tensor 'encoder.layers.1.self_attn.k_proj.bias'" -- tiny_merge_raw
}

@test "merge: unexpected tensor" {
    corrupt_vit add encoder.layers.7.mlp.fc1.weight
    expect_bad_input "$T/m" "$(F)" "unexpected tensor 'encoder.layers.7.mlp.fc1.weight'" -- tiny_merge_raw
}

@test "merge: config that contradicts the tensors" {
    cp -r "$S" "$T/bad"
    jq '.intermediate_size = 200' "$S/llm/config.json" > "$T/bad/llm/config.json"
    expect_bad_input "$T/m" "$T/bad/llm/model.safetensors" "model.layers.0.mlp.gate_proj.weight" "[384, 128]" "[200, 128]" -- tiny_merge_raw
    cp "$S/llm/config.json" "$T/bad/llm/config.json"
    jq '.num_hidden_layers = 3' "$S/vit/config.json" > "$T/bad/vit/config.json"
    expect_bad_input "$T/m" "$(F)" "missing tensor 'encoder.layers.2." -- tiny_merge_raw
}

@test "merge: garbage config.json and missing inputs" {
    cp -r "$S" "$T/bad"
    echo '{"hidden_size": 64,,' > "$T/bad/vit/config.json"
    expect_bad_input "$T/m" "$T/bad/vit/config.json" "invalid JSON" -- tiny_merge_raw
    cp "$S/vit/config.json" "$T/bad/vit/config.json"
    jq 'del(.hidden_size)' "$S/llm/config.json" > "$T/bad/llm/config.json"
    expect_bad_input "$T/m" "$T/bad/llm/config.json" "hidden_size" -- tiny_merge_raw
    rm "$T/bad/llm/model.safetensors"
    cp "$S/llm/config.json" "$T/bad/llm/config.json"
    expect_bad_input "$T/m" "$T/bad/llm" "model.safetensors" -- tiny_merge_raw
    expect_bad_input "$T/m" "--vit" -- "$BIN/merge" --llm "$S/llm" --out "$T/m"
}

# Splits the tiny LLM into two shards + index: $T/bad/llm. EXTRA: a tensor of shard 1 also put in shard 2.
shard_llm() {
    cp -r "$S" "$T/bad"
    rm "$T/bad/llm/model.safetensors"
    $PY - "$S/llm/model.safetensors" "$T/bad/llm" "${1:-}" <<'PY'
import json, os, sys
sys.path.insert(0, os.environ["REF"])
from stlib import read_file, write_file
t = list(read_file(sys.argv[1]).items())
half = len(t) // 2
a, b = t[:half], t[half:]
if sys.argv[3]:
    b = b + [x for x in a if x[0] == sys.argv[3]]
names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
for part, n in zip((a, b), names):
    write_file(os.path.join(sys.argv[2], n), [(k, dt, v) for k, (dt, v) in part])
wm = {k: names[0] for k, _ in a}
wm.update({k: names[1] for k, _ in t[half:]})
json.dump({"metadata": {"total_size": 0}, "weight_map": wm}, open(os.path.join(sys.argv[2], "model.safetensors.index.json"), "w"))
PY
}

@test "merge reads a sharded LLM through its index" {
    shard_llm
    run --separate-stderr tiny_merge_raw
    [ "$status" -eq 0 ]
    run $PY "$REF/check_merge.py" "$S/vit" "$S/llm" "$T/m" BF16
    [ "$status" -eq 0 ]
}

@test "merge: an index that names the wrong shard for a tensor" {
    shard_llm
    jq '.weight_map["model.norm.weight"] = "model-00001-of-00002.safetensors"' "$T/bad/llm/model.safetensors.index.json" > "$T/i"
    mv "$T/i" "$T/bad/llm/model.safetensors.index.json"
    expect_bad_input "$T/m" "model.safetensors.index.json" "'model.norm.weight'" "missing from model-00001-of-00002" -- tiny_merge_raw
}

@test "merge: the same tensor in two shards" {
    shard_llm model.embed_tokens.weight
    expect_bad_input "$T/m" "model-00002-of-00002.safetensors" "'model.embed_tokens.weight'" "not listed" -- tiny_merge_raw
}
