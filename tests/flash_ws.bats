#!/usr/bin/env bats
# Flash version 8's warp-specialised schedule (kernels/cuda/flash_ws.cuh) without a GPU: tests/gpu/ws_schedule.py
# restates its producer's and consumers' waits and arrivals and runs them under random interleavings. The
# kernels' numerics are ops_check's on a GPU (tests/gpu/run.sh).
load helpers

@test "flash v8's schedule: no deadlock, no stage refilled while read, balanced barriers, and no step held unpublished behind a stage's release (2-4 stages)" {
    run "$PY" "$BATS_TEST_DIRNAME/gpu/ws_schedule.py"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"no step held behind a stage"* ]]
}

@test "flash v8's schedule check finds the earlier producer's fault (step w - 1 published only after the wait for step w's stage)" {
    run "$PY" "$BATS_TEST_DIRNAME/gpu/ws_schedule.py" --publish-after-wait 3
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"step held behind the wait for a stage"* ]]
}
