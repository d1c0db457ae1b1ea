#!/usr/bin/env bats
# mkckpt: random source checkpoints in the upstream MLCD and Qwen3 formats.
load helpers

setup() { T=$BATS_TEST_TMPDIR; }

@test "mkckpt --help reads like a man page" {
    expect_help mkckpt
    [[ "$output" == *"--preset NAME"* ]]
}

@test "mkckpt writes MLCD and Qwen3 checkpoints with the upstream names and configs" {
    run "$BIN/mkckpt" --preset tiny --out "$T/src"
    [ "$status" -eq 0 ]
    run $PY - "$T/src" <<'PY'
import json, sys
sys.path.insert(0, __import__('os').environ['REF'])
from stlib import read_dir
d = sys.argv[1]
vc, tc = json.load(open(d + "/vit/config.json")), json.load(open(d + "/llm/config.json"))
assert vc["model_type"] == "mlcd_vision_model" and vc["architectures"] == ["MLCDVisionModel"], vc
assert vc["rope_parameters"] == {"rope_theta": 10000.0, "rope_type": "axial"}, vc
assert tc["model_type"] == "qwen3" and tc["architectures"] == ["Qwen3ForCausalLM"], tc
assert tc["tie_word_embeddings"] is True and tc["vocab_size"] == 1152 and tc["num_hidden_layers"] == 4
v, l = read_dir(d + "/vit"), read_dir(d + "/llm")
D, F, n = vc["hidden_size"], vc["intermediate_size"], vc["num_hidden_layers"]
want = {"embeddings.patch_embedding.weight": [D, 3, 14, 14], "embeddings.class_embedding": [D],
        "class_pos_emb": [1, D // vc["num_attention_heads"] // 2], "pre_layrnorm.weight": [D], "pre_layrnorm.bias": [D],
        "post_layernorm.weight": [D], "post_layernorm.bias": [D]}
for i in range(n):
    p = f"encoder.layers.{i}."
    for x in ("q", "k", "v", "out"):
        want[p + f"self_attn.{x}_proj.weight"] = [D, D]; want[p + f"self_attn.{x}_proj.bias"] = [D]
    for x in ("layer_norm1", "layer_norm2"):
        want[p + x + ".weight"] = [D]; want[p + x + ".bias"] = [D]
    want[p + "mlp.fc1.weight"] = [F, D]; want[p + "mlp.fc1.bias"] = [F]
    want[p + "mlp.fc2.weight"] = [D, F]; want[p + "mlp.fc2.bias"] = [D]
assert {k: list(a.shape) for k, (dt, a) in v.items()} == want
assert all(dt == "BF16" for dt, a in v.values())
assert "lm_head.weight" not in l and "model.embed_tokens.weight" in l  # tied: no head, as Qwen3-4B
assert len(l) == 1 + 11 * 4 + 1
print("ok")
PY
    [ "$status" -eq 0 ]
    [ -f "$T/src/llm/generation_config.json" ]
}

@test "mkckpt --rice-prefix names the vision tensors like the released RICE file" {
    "$BIN/mkckpt" --preset tiny --out "$T/a" --rice-prefix 2>/dev/null
    run $PY -c "import sys; sys.path.insert(0,__import__('os').environ['REF']); from stlib import read_dir; print(all(k.startswith('vision_model.') for k in read_dir('$T/a/vit')))"
    [ "$output" = "True" ]
}

@test "mkckpt is deterministic in its seed" {
    "$BIN/mkckpt" --preset tiny --out "$T/a" --seed 7 2>/dev/null
    "$BIN/mkckpt" --preset tiny --out "$T/b" --seed 7 2>/dev/null
    "$BIN/mkckpt" --preset tiny --out "$T/c" --seed 8 2>/dev/null
    cmp "$T/a/llm/model.safetensors" "$T/b/llm/model.safetensors"
    cmp "$T/a/vit/model.safetensors" "$T/b/vit/model.safetensors"
    run cmp -s "$T/a/llm/model.safetensors" "$T/c/llm/model.safetensors"
    [ "$status" -ne 0 ]
}

@test "mkckpt --layers cuts depth and keeps the widths; fp32 storage" {
    "$BIN/mkckpt" --preset tiny --out "$T/a" --layers 1 --llm-layers 3 --dtype fp32 2>/dev/null
    [ "$(jq .num_hidden_layers "$T/a/vit/config.json")" = 1 ]
    [ "$(jq .num_hidden_layers "$T/a/llm/config.json")" = 3 ]
    [ "$(jq .hidden_size "$T/a/llm/config.json")" = 128 ]
    run $PY -c "import sys; sys.path.insert(0,__import__('os').environ['REF']); from stlib import read_dir; print({dt for dt,a in read_dir('$T/a/llm').values()})"
    [ "$output" = "{'F32'}" ]
}

@test "mkckpt rejects bad flags, unknown presets and an existing output" {
    expect_bad_input "$T/x" "--preset" "nosuch" -- "$BIN/mkckpt" --preset nosuch --out "$T/x"
    expect_bad_input "$T/x" "--dtype" "fp8" -- "$BIN/mkckpt" --preset tiny --out "$T/x" --dtype fp8
    expect_bad_input "$T/x" "--bogus" -- "$BIN/mkckpt" --preset tiny --out "$T/x" --bogus
    expect_bad_input "$T/x" "--seed" "abc" -- "$BIN/mkckpt" --preset tiny --out "$T/x" --seed abc
    expect_bad_input "$T/x" "--out" -- "$BIN/mkckpt" --preset tiny
    mkdir "$T/y"
    run --separate-stderr "$BIN/mkckpt" --preset tiny --out "$T/y"
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"$T/y"*"already exists"* ]]
}

@test "mkckpt rejects a preset file that is not valid JSON" {
    printf '{"text_config": {' > "$T/bad.json"
    expect_bad_input "$T/x" "$T/bad.json" "invalid JSON" -- "$BIN/mkckpt" --preset "$T/bad.json" --out "$T/x"
    printf '{"text_config": {"hidden_size": 8}, "vision_config": {}}' > "$T/bad2.json"
    expect_bad_input "$T/x" "$T/bad2.json" "text_config.vocab_size" -- "$BIN/mkckpt" --preset "$T/bad2.json" --out "$T/x"
}
