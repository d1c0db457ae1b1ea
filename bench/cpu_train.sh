#!/usr/bin/env bash
# bench/cpu_train.sh: training-step throughput (tokens/s: forward, loss, full backward, AdamW) of the
# CPU backend next to the PyTorch reference model (tests/ref/model_ref.py, fp32 eager, AdamW) on the
# same checkpoint, the same batch and the same cores: both pinned with taskset to CORES, both with
# THREADS threads (OpenMP/OpenBLAS for ours, torch.set_num_threads for PyTorch).
#   usage: bench/cpu_train.sh [tiny|small|sft]     (default small; CORES=0,1 THREADS=2 STEPS=5)
# small: text hidden 512, 4 layers, 8 query / 2 KV heads of 64, FFN 1536; vision width 256, 2 blocks,
# 4 heads of 64; one packed row of 1024 tokens (two sub-sequences, each with a 16x16-patch image).
# sft: small with Qwen's vocabulary (151936) and an instruct-stage batch: only the last quarter of each
# sub-sequence (the answer) counts in the loss; also ours with the head over every position (--head-all).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/bin}
CORES=${CORES:-0,1}
THREADS=${THREADS:-2}
STEPS=${STEPS:-5}
SIZE=${1:-small}
W=$(mktemp -d /tmp/bench_ct.XXXX)
trap 'rm -rf "$W"' EXIT
make -s bench-tools >/dev/null

if [ "$SIZE" = small ] || [ "$SIZE" = sft ]; then
    jq '.text_config.hidden_size = 512 | .text_config.intermediate_size = 1536 | .text_config.num_attention_heads = 8
        | .text_config.num_key_value_heads = 2 | .text_config.head_dim = 64
        | .vision_config.embed_dim = 256 | .vision_config.hidden_size = 256 | .vision_config.intermediate_size = 1024
        | .vision_config.num_heads = 4 | .vision_config.text_hidden_size = 512' data-specs/models/tiny.json > "$W/preset.json"
    LEN=512 GRID=16
    if [ "$SIZE" = sft ]; then
        jq '.vocab_size = 151936 | .text_config.vocab_size = 151936' "$W/preset.json" > "$W/p.json" && mv "$W/p.json" "$W/preset.json"
    fi
else
    cp data-specs/models/tiny.json "$W/preset.json"
    LEN=256 GRID=8
fi
"$BIN/mkckpt" --preset "$W/preset.json" --out "$W/src" --seed 1 2>/dev/null
"$BIN/merge" --vit "$W/src/vit" --llm "$W/src/llm" --out "$W/hf" --image-token-id 1012 2>/dev/null
/usr/bin/python3 - "$W/in.safetensors" "$LEN" "$GRID" "$SIZE" <<'PY'
import sys, os
sys.path.insert(0, "tests/ref")
import numpy as np
from stlib import write_file
path, L, G, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(0)
pads = G * G // 4
seq = lambda: np.concatenate([rng.integers(0, 1000, 8), np.full(pads, 1012), rng.integers(0, 1000, L - 8 - pads)])
ids = np.concatenate([seq(), seq()]).astype(np.int32)
labels = ids.copy()
labels[ids == 1012] = -100
if size == "sft":  # the answers: the last quarter of each sub-sequence
    for s0 in (0, L):
        labels[s0:s0 + L - L // 4] = -100
write_file(path, [("input_ids", "I32", ids), ("labels", "I32", labels),
                  ("cu_seqlens", "I32", np.array([0, L, 2 * L], np.int32)),
                  ("pixel_values", "F32", rng.standard_normal((2 * G * G, 588)).astype(np.float32)),
                  ("grid_thw", "I32", np.array([[1, G, G], [1, G, G]], np.int32))])
PY
echo "bench/cpu_train.sh: preset $SIZE, cores $CORES, $THREADS threads, $STEPS timed steps ($(nproc) cores here)"
OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS taskset -c "$CORES" build/bench/train_step "$W/hf" "$W/in.safetensors" "$STEPS"
OMP_NUM_THREADS=$THREADS taskset -c "$CORES" /usr/bin/python3 bench/train_step_ref.py "$W/hf" "$W/in.safetensors" "$STEPS" "$THREADS"
if [ "$SIZE" = sft ]; then
    echo -n "ours with the head over every position (--head-all): "
    OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS taskset -c "$CORES" build/bench/train_step --head-all "$W/hf" "$W/in.safetensors" "$STEPS"
fi
