#!/usr/bin/env bats
# make reproduce-tiny end to end in a scratch directory: every stage runs, every stage's loss falls
# (pipelines/loss-summary.sh stops the pipeline otherwise), and a finished stage is not redone.
load helpers

@test "make reproduce-tiny: synth to the instruction-tuned HF checkpoint, the loss falling in every training stage" {
    [[ "$BIN" != *bin-asan* ]] || skip "the sanitizer build would take most of an hour here; make test runs it"
    cd "$BATS_TEST_DIRNAME/.."
    run make -s -f pipelines/reproduce-tiny.mk reproduce-tiny BIN="$BIN" TINY="$BATS_TEST_TMPDIR/tiny"
    echo "$output" | grep -v ": iteration "
    [ "$status" -eq 0 ]
    for s in llm-warmup align midtrain instruct; do
        [[ "$output" == *"$BATS_TEST_TMPDIR/tiny/$s: "*"iterations, smoothed loss"* ]]
    done
    [ -s "$BATS_TEST_TMPDIR/tiny/final/model.safetensors" ]
    # a finished pipeline is not redone; removing one stage's output reruns that stage and what follows
    run make -s -f pipelines/reproduce-tiny.mk reproduce-tiny BIN="$BIN" TINY="$BATS_TEST_TMPDIR/tiny"
    [ "$status" -eq 0 ]
    [[ "$output" != *"instruct: starting"* ]]
    rm "$BATS_TEST_TMPDIR/tiny/final/.done"
    run make -s -f pipelines/reproduce-tiny.mk final BIN="$BIN" TINY="$BATS_TEST_TMPDIR/tiny"
    [ "$status" -eq 0 ]
    [[ "$output" == *"mcore2hf: wrote"* ]]
    [[ "$output" != *"midtrain: starting"* ]]
}
