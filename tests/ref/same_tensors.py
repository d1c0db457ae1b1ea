#!/usr/bin/python3
"""usage: same_tensors.py DIR_A DIR_B — exit 0 when both HF directories hold the same tensor names,
dtypes, shapes and bytes (sharding may differ)."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from stlib import read_dir, same_bits  # noqa: E402

a, b = read_dir(sys.argv[1]), read_dir(sys.argv[2])
if set(a) != set(b):
    print(f"same_tensors: names differ: {sorted(set(a) ^ set(b))[:5]}")
    sys.exit(1)
for k in a:
    (da, xa), (db, xb) = a[k], b[k]
    if da != db or not same_bits(xa, xb):
        print(f"same_tensors: {k} differs ({da}{list(xa.shape)} vs {db}{list(xb.shape)})")
        sys.exit(1)
print(f"same_tensors: {len(a)} tensors bit-identical")
