#!/usr/bin/env python3
"""`forward --device cuda` against `forward --device cpu` on the same checkpoint and inputs (issue 7's bf16
tolerances): logits, vision_hidden, image_embeds and every gradient by relative L2 error <= 2e-2, the loss
within 1e-2 relative.
usage: compare_backends.py CPU.safetensors CUDA.safetensors"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "ref"))
from stlib import read_file  # noqa: E402

cpu, gpu = read_file(sys.argv[1]), read_file(sys.argv[2])
assert set(cpu) == set(gpu), (sorted(set(cpu) ^ set(gpu)))[:5]
worst, bad = {}, []
for k in sorted(cpu):
    a, b = np.asarray(cpu[k][1], np.float64), np.asarray(gpu[k][1], np.float64)
    if not np.all(np.isfinite(b)):
        bad.append((k, "non-finite"))
        continue
    if k == "loss":
        rel = abs(a[0] - b[0]) / abs(a[0])
        print(f"compare: loss cpu {a[0]:.6f} cuda {b[0]:.6f} relative diff {rel:.2e} (tolerance 1e-2)")
        if rel > 1e-2:
            bad.append((k, rel))
        continue
    rel = np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30)
    kind = "grad" if k.startswith("grad.") else k
    worst[kind] = max(worst.get(kind, 0.0), rel)
    if rel > 2e-2:
        bad.append((k, rel))
for k, v in worst.items():
    print(f"compare: {k}: worst relative L2 {v:.2e} (tolerance 2e-2)")
ngrad = sum(k.startswith("grad.") for k in cpu)
print(f"compare: {ngrad} gradients; {len(bad)} outside tolerance")
for b in bad[:8]:
    print("compare: FAIL", b)
sys.exit(1 if bad else 0)
