#!/usr/bin/env bats
# align / midtrain / instruct: the trainer on the tiny model and synthetic packed data.
load helpers

# One tiny stage-0 release and packed captions for every test of the file.
setup_file() { make_train_data "$BATS_FILE_TMPDIR"; }

setup() { T=$BATS_TEST_TMPDIR; F=$BATS_FILE_TMPDIR; }

COMMON="--global-batch 2 --iterations 12 --lr 1e-3 --warmup-fraction 0.1 --save-interval 4 --workers 1"

# train PROGRAM SAVE [flags]: a short run on the packed captions
train() {
    local prog=$1 save=$2; shift 2
    "$BIN/$prog" --load "$F/release" --data "$F/packed" --save "$save" $COMMON "$@"
}

losses() { jq -r '"\(.iteration) \(.loss) \(.grad_norm)"' "$1/metrics.jsonl"; }

@test "align, midtrain and instruct --help read like man pages" {
    expect_help align
    expect_help midtrain
    expect_help instruct
}

@test "align trains only the adapter: every vision and LLM tensor of its checkpoint equals the input bit for bit" {
    train align "$T/al" 2>/dev/null
    run $PY - "$F/release/release/mp_rank_00/model.safetensors" "$T/al/iter_0000012/mp_rank_00/model.safetensors" <<'PY'
import sys, os
sys.path.insert(0, os.environ["REF"])
from stlib import read_file, same_bits
a, b = read_file(sys.argv[1]), read_file(sys.argv[2])
assert set(a) == set(b), "names differ"
same = [k for k in a if same_bits(a[k][1], b[k][1])]
moved = sorted(set(a) - set(same))
frozen_moved = [k for k in moved if not k.startswith("adapter.")]
print(f"{len(same)} tensors unchanged, changed: {moved}")
sys.exit(1 if frozen_moved or len(moved) != 6 else 0)
PY
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "midtrain: the loss falls on the synthetic captions, and metrics.jsonl has one line per iteration" {
    train midtrain "$T/mt" --iterations 30 --save-interval 30 2>/dev/null
    [ "$(wc -l < "$T/mt/metrics.jsonl")" -eq 30 ]
    run "$BATS_TEST_DIRNAME/../pipelines/loss-summary.sh" "$T/mt" 0.2
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "SIGTERM at a random step saves at the step boundary and exits 0; the resumed run repeats the uninterrupted losses and weights exactly" {
    train midtrain "$T/full" 2>/dev/null
    stop_after=$(( (RANDOM % 8) + 2 ))
    "$BIN/midtrain" --load "$F/release" --data "$F/packed" --save "$T/cut" $COMMON 2>"$T/cut.log" &  # $! is the trainer
    pid=$!
    while [ "$(wc -l < "$T/cut/metrics.jsonl" 2>/dev/null || echo 0)" -lt "$stop_after" ]; do sleep 0.05; done
    kill -TERM "$pid"
    st=0
    wait "$pid" || st=$?
    cat "$T/cut.log"
    [ "$st" -eq 0 ]
    grep -q "stopped by a signal after iteration" "$T/cut.log"
    saved=$(cat "$T/cut/latest_checkpointed_iteration.txt")
    [ "$saved" -lt 12 ]
    train midtrain "$T/cut" 2>"$T/resume.log"
    grep -q "resuming $T/cut iteration $saved" "$T/resume.log"
    diff <(losses "$T/full") <(losses "$T/cut")
    cmp "$T/full/iter_0000012/mp_rank_00/model.safetensors" "$T/cut/iter_0000012/mp_rank_00/model.safetensors"
    cmp "$T/full/iter_0000012/mp_rank_00/optim_dp_000_of_001.safetensors" "$T/cut/iter_0000012/mp_rank_00/optim_dp_000_of_001.safetensors"
}

@test "kill -9 during a save leaves the previous checkpoint committed and usable; resuming repeats the uninterrupted losses" {
    train midtrain "$T/full" 2>/dev/null
    LLAVA_SAVE_PAUSE=30 "$BIN/midtrain" --load "$F/release" --data "$F/packed" --save "$T/cut" $COMMON 2>/dev/null &
    pid=$!
    # iteration 4 committed (pause included), then the save of 8 is written but not yet committed
    while [ ! -e "$T/cut/iter_0000008/state.json" ]; do sleep 0.05; done
    kill -9 "$pid"
    wait "$pid" || true
    [ "$(cat "$T/cut/latest_checkpointed_iteration.txt")" = 4 ]
    "$BIN/mcore2hf" "$T/cut" "$T/cut-hf"
    [ -s "$T/cut-hf/model.safetensors" ]
    train midtrain "$T/cut" 2>"$T/resume.log"
    grep -q "resuming $T/cut iteration 4" "$T/resume.log"
    diff <(losses "$T/full") <(losses "$T/cut")
    cmp "$T/full/iter_0000012/mp_rank_00/model.safetensors" "$T/cut/iter_0000012/mp_rank_00/model.safetensors"
}

@test "--keep 1 leaves only the newest iteration" {
    train instruct "$T/k" --keep 1 2>/dev/null
    run ls "$T/k"
    [ "$output" = "$(printf 'hf\niter_0000012\nlatest_checkpointed_iteration.txt\nmetrics.jsonl')" ]
}

@test "non-finite losses are reported with the step and batch and skipped; too many in a row stop training with exit 2" {
    run --separate-stderr train midtrain "$T/nan" --lr 1e30 --warmup-fraction 0 --max-skips 2
    echo "$stderr"
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"iteration 2: non-finite"*"on batch ps_"*"step skipped (1 so far)"* ]]
    [[ "$stderr" == *"3 non-finite steps in a row (more than --max-skips 2): stopping without saving"* ]]
}

@test "bad input: no shards, an HF directory as --load, a micro-batch of 2, contradicting overlap flags, a resume with another global batch" {
    mkdir "$T/empty"
    expect_bad_input "$T/x" "$T/empty" "no .tar shards" -- \
        "$BIN/align" --load "$F/release" --data "$T/empty" --save "$T/x"
    expect_bad_input "$T/x" "$F/stage0" "expected an mcore checkpoint" -- \
        "$BIN/align" --load "$F/stage0" --data "$F/packed" --save "$T/x"
    expect_bad_input "$T/x" "--micro-batch" -- \
        "$BIN/align" --load "$F/release" --data "$F/packed" --save "$T/x" --micro-batch 2
    expect_bad_input "$T/x" "--overlap-grad-reduce and --no-overlap-grad-reduce" -- \
        "$BIN/align" --load "$F/release" --data "$F/packed" --save "$T/x" --overlap-grad-reduce --no-overlap-grad-reduce
    train align "$T/r" --iterations 4 2>/dev/null
    expect_bad_input "$T/nothing" "state.json" "global batch 2, but this run asks for 4" -- \
        "$BIN/align" --load "$F/release" --data "$F/packed" --save "$T/r" --global-batch 4 --iterations 8
}

@test "--recompute: the losses, gradient norms and saved weights equal those of a run that stores every activation" {
    train midtrain "$T/plain" --iterations 4 --save-interval 4 2>/dev/null
    train midtrain "$T/rc" --iterations 4 --save-interval 4 --recompute 99 2>"$T/rc.log"
    grep -q "4 of 4 decoder layers recomputed" "$T/rc.log"
    [ "$(losses "$T/plain")" = "$(losses "$T/rc")" ]
    cmp "$T/plain/iter_0000004/mp_rank_00/model.safetensors" "$T/rc/iter_0000004/mp_rank_00/model.safetensors"
    run "$BIN/midtrain" --load "$F/release" --data "$F/packed" --save "$T/bad" $COMMON --recompute -2
    [ "$status" -eq 2 ]
    [[ "$output" == *"--recompute"* ]]
}

@test "--fp32-residual-connection: announced; on cpu (fp32 already) the same losses; on cpu-bf16 other losses, and a SIGTERM + resume repeats the uninterrupted run" {
    train midtrain "$T/plain" --iterations 4 --save-interval 4 2>/dev/null
    train midtrain "$T/r32" --iterations 4 --save-interval 4 --fp32-residual-connection 2>"$T/r32.log"
    grep -q "residual stream in fp32" "$T/r32.log"
    [ "$(losses "$T/plain")" = "$(losses "$T/r32")" ]
    # cpu-bf16: the flag changes the arithmetic (the stream is no longer rounded) ...
    train midtrain "$T/b16" --iterations 6 --device cpu-bf16 2>/dev/null
    train midtrain "$T/b16r" --iterations 6 --device cpu-bf16 --fp32-residual-connection 2>/dev/null
    [ "$(losses "$T/b16")" != "$(losses "$T/b16r")" ]
    # ... and a run stopped after iteration 2 and resumed repeats it
    "$BIN/midtrain" --load "$F/release" --data "$F/packed" --save "$T/cut" $COMMON --iterations 6 --device cpu-bf16 \
        --fp32-residual-connection 2>/dev/null &
    pid=$!
    while [ "$(wc -l < "$T/cut/metrics.jsonl" 2>/dev/null || echo 0)" -lt 2 ]; do sleep 0.05; done
    kill -TERM "$pid"
    wait "$pid"
    [ "$(cat "$T/cut/latest_checkpointed_iteration.txt")" -lt 6 ]
    train midtrain "$T/cut" --iterations 6 --device cpu-bf16 --fp32-residual-connection 2>/dev/null
    diff <(losses "$T/b16r") <(losses "$T/cut")
}
