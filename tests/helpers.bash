# helpers.bash: shared setup for the Bats tests. BIN points at the programs under test (bin/ or
# bin-asan/); the Python references run with Debian's interpreter and its numpy/torch.
bats_require_minimum_version 1.5.0

BIN=${BIN:-$(cd "$BATS_TEST_DIRNAME/.." && pwd)/bin}
REF="$BATS_TEST_DIRNAME/ref"
PY=/usr/bin/python3
export REF
export LLAVA_DATA_SPECS="$BATS_TEST_DIRNAME/../data-specs"

# A tiny source checkpoint pair shared by the tests of one file.
make_tiny_src() {  # DIR [mkckpt flags...]
    local dir=$1; shift
    [ -d "$dir" ] || "$BIN/mkckpt" --preset tiny --out "$dir" "$@" 2>/dev/null
}

tiny_merge() {  # SRC OUT [merge flags...]
    local src=$1 out=$2; shift 2
    "$BIN/merge" --vit "$src/vit" --llm "$src/llm" --out "$out" --image-token-id 1012 --video-token-id 1013 "$@" 2>/dev/null
}

# Bad input: exit 2, exactly one line on stderr containing every given fragment, nothing on
# stdout, and neither the output path nor a temporary sibling of it left behind.
#   expect_bad_input OUTPATH "fragment" ... -- command args...
expect_bad_input() {
    local out=$1; shift
    local frags=() f lines
    while [ "$1" != "--" ]; do frags+=("$1"); shift; done
    shift
    run --separate-stderr "$@"
    if [ "$status" -ne 2 ]; then echo "exit $status, expected 2; stderr: $stderr"; return 1; fi
    lines=$(printf '%s\n' "$stderr" | grep -c .)
    if [ "$lines" -ne 1 ]; then echo "expected one line on stderr, got $lines: $stderr"; return 1; fi
    for f in "${frags[@]}"; do
        if [[ "$stderr" != *"$f"* ]]; then echo "stderr lacks '$f': $stderr"; return 1; fi
    done
    if [ -n "$output" ]; then echo "unexpected stdout: $output"; return 1; fi
    if [ -e "$out" ]; then echo "output $out was left behind"; return 1; fi
    if compgen -G "$out.tmp.*" >/dev/null; then echo "temporary $out.tmp.* was left behind"; return 1; fi
}

# --help: a man page on stdout with the usual sections, exit 0.
expect_help() {
    run --separate-stderr "$BIN/$1" --help
    [ "$status" -eq 0 ]
    for s in NAME SYNOPSIS DESCRIPTION OPTIONS "EXIT STATUS"; do
        [[ "$output" == *"$s"* ]] || { echo "--help lacks $s"; return 1; }
    done
    [[ "$output" == *"$1 - "* ]]
}

# make_train_data DIR: a tiny stage-0 mcore release (DIR/release) and packed synthetic captions
# (DIR/packed) for the trainer's tests.
make_train_data() {
    local F=$1
    "$BIN/synth" --out "$F/data" --seed 7 --scale 1 >/dev/null 2>&1
    "$BIN/mkckpt" --preset tiny --out "$F/src" --seed 7 2>/dev/null
    "$BIN/merge" --vit "$F/src/vit" --llm "$F/src/llm" --tokenizer "$F/data/tokenizer" --out "$F/stage0" 2>/dev/null
    "$BIN/hf2mcore" "$F/stage0" "$F/release" --tp 1 --pp 1 2>/dev/null
    "$BIN/pack" --tokenizer "$F/data/tokenizer" --out "$F/packed" --max-len 512 --max-pixels 12544 "$F/data/captions/"*.tar 2>/dev/null
}
