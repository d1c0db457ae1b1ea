#!/usr/bin/env python3
"""The card's measured bf16 GEMM rate, the MFU denominator of bench/gpu_train.sh and tests/gpu/run.sh: the median of
10 timed products of two random 8192x8192 bf16 matrices (2*8192^3 FLOPs each) after 3 untimed ones.
Prints "N TFLOP/s (device, median of 10, 8192^3 random bf16)"; exits 1 without a CUDA device."""
import sys

import torch

if not torch.cuda.is_available():
    print("no CUDA device")
    sys.exit(1)
n = 8192
a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
for _ in range(3):
    a @ b
torch.cuda.synchronize()
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
times = []
for _ in range(10):
    start.record()
    a @ b
    end.record()
    torch.cuda.synchronize()
    times.append(start.elapsed_time(end) / 1e3)
times.sort()
print(f"{2 * n**3 / times[len(times) // 2] / 1e12:.0f} TFLOP/s ({torch.cuda.get_device_name()}, median of 10, {n}^3 random bf16)")
