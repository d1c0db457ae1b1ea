#!/usr/bin/env bats
# imgprep: Qwen2-VL preprocessing against a NumPy + PIL reference (tests/ref/qwen2vl_image.py).
load helpers

setup_file() { $PY "$REF/qwen2vl_image.py" make "$BATS_FILE_TMPDIR/img"; }
setup() { T=$BATS_TEST_TMPDIR; I=$BATS_FILE_TMPDIR/img; }

@test "imgprep --help reads like a man page" {
    expect_help imgprep
    [[ "$output" == *"--max-pixels N"* ]]
}

@test "skimage photos, odd sizes and every decoder path match PIL + NumPy across pixel limits" {
    n=0
    for f in "$I"/*.jpg "$I"/*.png "$I"/*.webp; do
        [[ "$f" == *one_1x1* ]] && continue
        for mm in "3136 2560000" "3136 200704" "200704 1605632" "3136 12845056"; do
            set -- $mm
            "$BIN/imgprep" "$f" --min-pixels $1 --max-pixels $2 --out "$T/o.safetensors" > /dev/null
            run $PY "$REF/qwen2vl_image.py" check "$f" "$T/o.safetensors" $1 $2
            [ "$status" -eq 0 ] || { echo "$output"; return 1; }
            n=$((n + 1))
        done
    done
    [ "$n" -ge 80 ]
}

@test "imgprep reports sizes, grid and LLM tokens as JSON (spec/data.md worked values)" {
    run "$BIN/imgprep" "$I/coffee.png" --max-pixels 200704
    [ "$output" = '{"image": "'"$I"'/coffee.png", "width": 600, "height": 400, "resized_width": 532, "resized_height": 364, "grid_thw": [1, 26, 38], "patches": 988, "llm_tokens": 247}' ]
    run "$BIN/imgprep" "$I/tie_70x70.png"
    [[ "$output" == *'"resized_width": 56, "resized_height": 56'* ]]
    run "$BIN/imgprep" "$I/tie_350x126.png"
    [[ "$output" == *'"resized_width": 336, "resized_height": 112'* ]]
    run "$BIN/imgprep" "$I/big_3000x2000.jpg"
    [[ "$output" == *'"grid_thw": [1, 92, 138], "patches": 12696, "llm_tokens": 3174'* ]]
    run "$BIN/imgprep" "$I/big_3000x2000.jpg" --max-pixels 12845056
    [[ "$output" == *'"resized_width": 2996, "resized_height": 1988'* ]]
    run "$BIN/imgprep" "$I/wide_28x5600.png"
    [[ "$output" == *'"grid_thw": [1, 2, 400], "patches": 800, "llm_tokens": 200'* ]]
}

@test "imgprep: a 1x1 image, corrupt, truncated, zero-byte and non-image files give one clear line" {
    expect_bad_input "$T/o.safetensors" "$I/one_1x1.png" "smaller than one 14-pixel patch" -- "$BIN/imgprep" "$I/one_1x1.png" --out "$T/o.safetensors"
    : > "$T/empty.jpg"
    expect_bad_input "$T/o.safetensors" "$T/empty.jpg" "empty file" -- "$BIN/imgprep" "$T/empty.jpg" --out "$T/o.safetensors"
    echo "hello, not an image" > "$T/text.png"
    expect_bad_input "$T/o.safetensors" "$T/text.png" "not a JPEG, PNG or WebP" -- "$BIN/imgprep" "$T/text.png" --out "$T/o.safetensors"
    for f in coffee.jpg coffee.png lossy.webp alpha.webp grey.jpg; do
        sz=$(stat -c %s "$I/$f")
        head -c $((sz / 2)) "$I/$f" > "$T/trunc_$f"
        expect_bad_input "$T/o.safetensors" "$T/trunc_$f" -- "$BIN/imgprep" "$T/trunc_$f" --out "$T/o.safetensors"
        head -c 40 "$I/$f" > "$T/head_$f"
        expect_bad_input "$T/o.safetensors" "$T/head_$f" -- "$BIN/imgprep" "$T/head_$f" --out "$T/o.safetensors"
        # garbage after an intact signature
        { head -c 16 "$I/$f"; head -c 4000 /dev/urandom; } > "$T/garbage_$f"
        expect_bad_input "$T/o.safetensors" "$T/garbage_$f" -- "$BIN/imgprep" "$T/garbage_$f" --out "$T/o.safetensors"
    done
    expect_bad_input "$T/o.safetensors" "$T/missing.jpg" -- "$BIN/imgprep" "$T/missing.jpg"
    expect_bad_input "$T/o.safetensors" "--max-pixels" -- "$BIN/imgprep" "$I/coffee.png" --max-pixels 10
}
