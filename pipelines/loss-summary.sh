#!/usr/bin/env bash
# loss-summary.sh STAGE_DIR [MIN_DROP]: first and last smoothed loss of a training run (the mean of the
# first and of the last 10% of metrics.jsonl, at least 5 iterations each); fails unless the loss fell
# by at least MIN_DROP (a fraction, default 0.1) so a stage that does not learn stops the pipeline.
set -euo pipefail
dir=$1 min=${2:-0.1}
jq -r '.loss' "$dir/metrics.jsonl" | awk -v dir="$dir" -v min="$min" '
    { loss[NR] = $1 }
    END {
        k = int(NR / 10); if (k < 5) k = 5; if (k > NR) k = NR
        for (i = 1; i <= k; i++) a += loss[i]
        for (i = NR - k + 1; i <= NR; i++) b += loss[i]
        a /= k; b /= k; drop = (a - b) / a
        printf "%s: %d iterations, smoothed loss %.4f -> %.4f (%.1f%% lower)\n", dir, NR, a, b, 100 * drop
        if (drop < min) { printf "%s: the loss fell by less than %.0f%%\n", dir, 100 * min > "/dev/stderr"; exit 1 }
    }'
