#!/usr/bin/env bats
# hf2mcore / mcore2hf: the Megatron layout checked against spec/checkpoints.md by
# tests/ref/check_mcore.py, and round trips checked bit for bit.
load helpers

setup_file() {
    # 6 decoder layers so that PP 2 and 3 both divide them; fp32 vision tower to cover both dtypes.
    make_tiny_src "$BATS_FILE_TMPDIR/src" --llm-layers 6
    tiny_merge "$BATS_FILE_TMPDIR/src" "$BATS_FILE_TMPDIR/hf"
}
setup() { T=$BATS_TEST_TMPDIR; HF=$BATS_FILE_TMPDIR/hf; }

@test "hf2mcore and mcore2hf --help read like man pages" {
    expect_help hf2mcore
    [[ "$output" == *"--tp N"* ]]
    [[ "$output" == *"release"* ]]
    expect_help mcore2hf
    [[ "$output" == *"--iter"* ]]
}

@test "HF -> mcore at TP 1/2/4 x PP 1/2/3 matches spec/checkpoints.md, and -> HF is bit-identical" {
    for tp in 1 2 4; do
        for pp in 1 2 3; do
            "$BIN/hf2mcore" "$HF" "$T/mc$tp$pp" --tp $tp --pp $pp 2>/dev/null
            [ "$(cat "$T/mc$tp$pp/latest_checkpointed_iteration.txt")" = release ]
            run $PY "$REF/check_mcore.py" "$HF" "$T/mc$tp$pp" $tp $pp
            echo "tp $tp pp $pp: $output"
            [ "$status" -eq 0 ]
            "$BIN/mcore2hf" "$T/mc$tp$pp" "$T/hf$tp$pp" 2>/dev/null
            cmp "$HF/model.safetensors" "$T/hf$tp$pp/model.safetensors"
            cmp "$HF/config.json" "$T/hf$tp$pp/config.json"
            cmp "$HF/preprocessor_config.json" "$T/hf$tp$pp/preprocessor_config.json"
        done
    done
    # PP > 1 uses mp_rank_XX_YYY, PP = 1 mp_rank_XX; padded vocabulary at TP 2 and 4
    [ -f "$T/mc23/release/mp_rank_01_002/model.safetensors" ]
    [ -f "$T/mc41/release/mp_rank_03/model.safetensors" ]
}

@test "mcore -> release at other sizes -> HF is bit-identical" {
    "$BIN/hf2mcore" "$HF" "$T/a" --tp 2 --pp 3 2>/dev/null
    "$BIN/hf2mcore" "$T/a" "$T/b" --tp 4 --pp 2 2>/dev/null
    run $PY "$REF/check_mcore.py" "$HF" "$T/b" 4 2
    [ "$status" -eq 0 ]
    "$BIN/hf2mcore" "$T/b" "$T/c" --tp 1 --pp 1 2>/dev/null
    run $PY "$REF/check_mcore.py" "$HF" "$T/c" 1 1
    [ "$status" -eq 0 ]
    "$BIN/mcore2hf" "$T/c" "$T/h" 2>/dev/null
    cmp "$HF/model.safetensors" "$T/h/model.safetensors"
}

@test "an iteration checkpoint is released: tracker iteration or --iter, untracked newer iterations ignored" {
    "$BIN/hf2mcore" "$HF" "$T/a" --tp 2 2>/dev/null
    # Dress it up as a training run at iteration 20 with a newer, uncommitted iteration 30.
    mv "$T/a/release" "$T/a/iter_0000020"
    echo 20 > "$T/a/latest_checkpointed_iteration.txt"
    mkdir -p "$T/a/iter_0000030/mp_rank_00"
    echo garbage > "$T/a/iter_0000030/mp_rank_00/model.safetensors"
    "$BIN/hf2mcore" "$T/a" "$T/r" --pp 2 2>/dev/null
    [ "$(cat "$T/r/latest_checkpointed_iteration.txt")" = release ]
    [ ! -e "$T/r/iter_0000020" ]
    run $PY "$REF/check_mcore.py" "$HF" "$T/r" 1 2
    [ "$status" -eq 0 ]
    "$BIN/mcore2hf" "$T/a" "$T/h" --iter 20 2>/dev/null
    cmp "$HF/model.safetensors" "$T/h/model.safetensors"
    expect_bad_input "$T/h2" "iter_0000030/mp_rank_00/model.safetensors" -- "$BIN/mcore2hf" "$T/a" "$T/h2" --iter 30
}

@test "mcore2hf writes shards with an index past --max-shard-size" {
    "$BIN/hf2mcore" "$HF" "$T/a" --tp 2 --pp 2 2>/dev/null
    "$BIN/mcore2hf" "$T/a" "$T/h" --max-shard-size 300KB 2>/dev/null
    [ -f "$T/h/model.safetensors.index.json" ]
    run $PY "$REF/same_tensors.py" "$HF" "$T/h"
    [ "$status" -eq 0 ]
    # and an indexed HF checkpoint converts like a single file
    "$BIN/hf2mcore" "$T/h" "$T/b" --tp 2 --pp 2 2>/dev/null
    diff -r "$T/a/release" "$T/b/release"
}

@test "hf2mcore of a plain Qwen3 checkpoint (no vision tower)" {
    "$BIN/hf2mcore" "$BATS_FILE_TMPDIR/src/llm" "$T/a" --tp 2 --pp 2 2>/dev/null
    "$BIN/mcore2hf" "$T/a" "$T/h" 2>/dev/null
    cmp "$BATS_FILE_TMPDIR/src/llm/model.safetensors" "$T/h/model.safetensors"
}

# ---- bad input ----

@test "hf2mcore: a TP size the heads do not divide, a PP size the layers do not divide" {
    expect_bad_input "$T/o" "TP size 3" "heads" -- "$BIN/hf2mcore" "$HF" "$T/o" --tp 3
    expect_bad_input "$T/o" "PP size 4" "6 decoder layers" -- "$BIN/hf2mcore" "$HF" "$T/o" --pp 4
    expect_bad_input "$T/o" "TP size 8" -- "$BIN/hf2mcore" "$HF" "$T/o" --tp 8
    expect_bad_input "$T/o" "--tp" -- "$BIN/hf2mcore" "$HF" "$T/o" --tp 0
    expect_bad_input "$T/o" "positional" -- "$BIN/hf2mcore" "$HF"
}

@test "hf2mcore: damaged HF checkpoints" {
    for mode in truncate hlen_past_end garbage_json unknown_dtype bad_nbytes overlap dup; do
        rm -rf "$T/bad"; cp -r "$HF" "$T/bad"
        $PY "$REF/corrupt.py" $mode "$HF/model.safetensors" "$T/bad/model.safetensors"
        expect_bad_input "$T/o" "$T/bad/model.safetensors" -- "$BIN/hf2mcore" "$T/bad" "$T/o" --tp 2
    done
    rm -rf "$T/bad"; cp -r "$HF" "$T/bad"
    $PY "$REF/corrupt.py" drop "$HF/model.safetensors" "$T/bad/model.safetensors" model.layers.3.mlp.up_proj.weight
    expect_bad_input "$T/o" "missing tensor 'model.layers.3.mlp.up_proj.weight'" -- "$BIN/hf2mcore" "$T/bad" "$T/o"
    $PY "$REF/corrupt.py" add "$HF/model.safetensors" "$T/bad/model.safetensors" visual.blocks.9.norm1.weight
    expect_bad_input "$T/o" "unexpected tensor 'visual.blocks.9.norm1.weight'" -- "$BIN/hf2mcore" "$T/bad" "$T/o"
    cp "$HF/model.safetensors" "$T/bad/"
    jq '.text_config.num_key_value_heads = 2' "$HF/config.json" > "$T/bad/config.json"
    expect_bad_input "$T/o" "model.layers.0.self_attn.k_proj.weight" "[64, 128]" "[32, 128]" -- "$BIN/hf2mcore" "$T/bad" "$T/o"
    jq '.vision_config.text_hidden_size = 64' "$HF/config.json" > "$T/bad/config.json"
    expect_bad_input "$T/o" "$T/bad/config.json" "text_hidden_size" -- "$BIN/hf2mcore" "$T/bad" "$T/o"
    echo '{"text_config": 3' > "$T/bad/config.json"
    expect_bad_input "$T/o" "$T/bad/config.json" "invalid JSON" -- "$BIN/hf2mcore" "$T/bad" "$T/o"
}

@test "mcore2hf: damaged mcore checkpoints" {
    "$BIN/hf2mcore" "$HF" "$T/a" --tp 2 --pp 2 2>/dev/null
    cp -r "$T/a" "$T/b"; echo latest > "$T/b/latest_checkpointed_iteration.txt"
    expect_bad_input "$T/o" "latest_checkpointed_iteration.txt" "\"latest\"" -- "$BIN/mcore2hf" "$T/b" "$T/o"
    rm -rf "$T/b"; cp -r "$T/a" "$T/b"; rm -r "$T/b/release/mp_rank_01_001"
    expect_bad_input "$T/o" "release" "grid" -- "$BIN/mcore2hf" "$T/b" "$T/o"
    rm -rf "$T/b"; cp -r "$T/a" "$T/b"
    f=release/mp_rank_01_000/model.safetensors
    $PY "$REF/corrupt.py" truncate "$T/a/$f" "$T/b/$f"
    expect_bad_input "$T/o" "$T/b/$f" "truncated" -- "$BIN/mcore2hf" "$T/b" "$T/o"
    $PY "$REF/corrupt.py" drop "$T/a/$f" "$T/b/$f" adapter.linear_fc2.bias
    expect_bad_input "$T/o" "$T/b/$f" "missing tensor 'adapter.linear_fc2.bias'" -- "$BIN/mcore2hf" "$T/b" "$T/o"
    $PY "$REF/corrupt.py" flip "$T/a/$f" "$T/b/$f" vision_model.class_pos_emb
    expect_bad_input "$T/o" "$T/b/$f" "vision_model.class_pos_emb" "differs" -- "$BIN/mcore2hf" "$T/b" "$T/o"
    $PY "$REF/corrupt.py" add "$T/a/$f" "$T/b/$f" language_model.decoder.layers.7.mlp.linear_fc2.weight
    expect_bad_input "$T/o" "$T/b/$f" "unexpected tensor 'language_model.decoder.layers.7" -- "$BIN/mcore2hf" "$T/b" "$T/o"
    expect_bad_input "$T/o" "$HF" "not an mcore checkpoint" -- "$BIN/mcore2hf" "$HF" "$T/o"
    rm -rf "$T/b"; cp -r "$T/a" "$T/b"; rm "$T/b/hf/config.json"
    expect_bad_input "$T/o" "$T/b/hf/config.json" -- "$BIN/mcore2hf" "$T/b" "$T/o"
}

@test "the output is never partial: an existing OUT is refused, a failed run leaves nothing" {
    mkdir "$T/o"
    run --separate-stderr "$BIN/hf2mcore" "$HF" "$T/o"
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"already exists"* ]]
    [ -z "$(ls -A "$T/o")" ]
    "$BIN/hf2mcore" "$HF" "$T/o" --force --tp 2 2>/dev/null
    [ -f "$T/o/release/mp_rank_01/model.safetensors" ]
    ls "$T" | { ! grep -q "tmp\|old"; }
}
