#!/usr/bin/env bash
# tests/run.sh: runs the C unit tests and the Bats tests, prints every result as TAP, and ends
# with the line "N passed, N failed". Exits non-zero when anything failed, including a test binary
# that crashed without reporting.
#   BIN       programs under test (default bin/)
#   UNIT_DIR  compiled unit tests (default build/tests)
#   GPU_TOOLS_DIR  tests/gpu's programs of a CUDA build (default build/gpu; tests/cudnn.bats)
set -u
cd "$(dirname "$0")/.."
export BIN=${BIN:-$PWD/bin}
UNIT_DIR=${UNIT_DIR:-$PWD/build/tests}
passed=0 failed=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

count() {  # LOG RC NAME
    local p f
    p=$(grep -c '^ok ' "$1")
    f=$(grep -c '^not ok ' "$1")
    if [ "$2" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "not ok - $3 exited with status $2 without reporting a failure"
        f=1
    fi
    passed=$((passed + p))
    failed=$((failed + f))
}

for t in "$UNIT_DIR"/test_*; do
    [ -x "$t" ] || continue
    echo "# unit: $(basename "$t")"
    "$t" > "$log" 2>&1
    rc=$?
    cat "$log"
    count "$log" $rc "$(basename "$t")"
done

echo "# bats: tests/*.bats"
bats --tap tests/*.bats 2>&1 | tee "$log"
count "$log" "${PIPESTATUS[0]}" bats

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
