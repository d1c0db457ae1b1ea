#!/usr/bin/env bats
# forward: the CPU model's outputs against a PyTorch implementation written from spec/model.md.
load helpers

setup() { T=$BATS_TEST_TMPDIR; }

run_case() {  # PRESET_FILE: mkckpt + merge + random inputs, then forward vs tests/ref/model_ref.py
    "$BIN/mkckpt" --preset "$1" --out "$T/src" --seed 3 2>/dev/null
    "$BIN/merge" --vit "$T/src/vit" --llm "$T/src/llm" --out "$T/hf" --image-token-id 1012 --video-token-id 1013 2>/dev/null
    $PY "$REF/model_ref.py" inputs "$T/hf" "$T/in.safetensors" 7
    "$BIN/forward" --model "$T/hf" --in "$T/in.safetensors" --out "$T/out.safetensors"
    run $PY "$REF/model_ref.py" check "$T/hf" "$T/in.safetensors" "$T/out.safetensors"
    echo "$output"
    [ "$status" -eq 0 ]
    "$BIN/forward" --model "$T/hf" --in "$T/in.safetensors" --out "$T/grads.safetensors" --grads
    run $PY "$REF/model_ref.py" grads "$T/hf" "$T/in.safetensors" "$T/grads.safetensors"
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "forward --help reads like a man page" {
    expect_help forward
}

@test "tiny preset: vision tower, merger, logits, loss and every gradient match PyTorch (two images, two packed sub-sequences)" {
    run_case tiny
}

# Weights 15x larger than the initialiser's 0.02 make attention far from uniform, so that a wrong
# position, mask or head mapping moves the outputs well past the tolerance.
@test "other head counts and GQA ratio (6 query heads over 2 KV heads, head_dim 24; 2 vision heads): outputs and gradients match PyTorch" {
    jq '.text_config.num_attention_heads = 6 | .text_config.num_key_value_heads = 2 | .text_config.head_dim = 24
        | .vision_config.num_heads = 2 | .text_config.rope_theta = 5000000.0
        | .text_config.initializer_range = 0.3 | .vision_config.initializer_range = 0.3' \
        "$BATS_TEST_DIRNAME/../data-specs/models/tiny.json" > "$T/preset.json"
    run_case "$T/preset.json"
}

@test "forward: an image-pad count that does not match the images is an input error" {
    "$BIN/mkckpt" --preset tiny --out "$T/src" 2>/dev/null
    "$BIN/merge" --vit "$T/src/vit" --llm "$T/src/llm" --out "$T/hf" --image-token-id 1012 2>/dev/null
    $PY - "$T/in.safetensors" <<'PY'
import sys, os
sys.path.insert(0, os.environ["REF"])
import numpy as np
from stlib import write_file
write_file(sys.argv[1], [("input_ids", "I32", np.array([1, 1012, 2], np.int32)),
                         ("pixel_values", "F32", np.zeros((8, 588), np.float32)),
                         ("grid_thw", "I32", np.array([[1, 2, 4]], np.int32))])
PY
    expect_bad_input "$T/out.safetensors" "$T/in.safetensors" "1 <|image_pad|> tokens but the images give 2" -- \
        "$BIN/forward" --model "$T/hf" --in "$T/in.safetensors" --out "$T/out.safetensors"
}
