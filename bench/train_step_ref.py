#!/usr/bin/python3
"""PyTorch peer of bench/train_step.c: the reference model of tests/ref/model_ref.py (fp32, eager, written
from spec/model.md; attention per diagonal block) trained on the same batch with torch.optim.AdamW; two
untimed warm-up steps, as train_step.c.
usage: train_step_ref.py HF_DIR IN.safetensors STEPS THREADS"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "ref"))
import model_ref  # noqa: E402
from model_ref import load, read, run  # noqa: E402

dense_attend = model_ref.attend


def blockwise_attend(q, k, v, allowed):
    """The reference's attention one diagonal block (packed sub-sequence or image) at a time, as a careful
    PyTorch user would write it, instead of one T x T product with most of it masked."""
    T = q.shape[0]
    starts = [0] + [t for t in range(1, T) if not allowed[t, t - 1]] + [T]
    return torch.cat([dense_attend(q[a:b], k[a:b], v[a:b], allowed[a:b, a:b]) for a, b in zip(starts, starts[1:])])


model_ref.attend = blockwise_attend

model_dir, in_path, steps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
cfg, W = load(model_dir)
inp = read(in_path)
params = list(W.values())
for p in params:
    p.requires_grad_(True)
opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
T = inp["input_ids"].numel()
WARMUP = 2
for s in range(WARMUP + steps):
    if s == WARMUP:
        t0 = time.perf_counter()
    opt.zero_grad()
    _, _, _, loss = run(cfg, W, inp)
    loss.backward()
    opt.step()
dt = (time.perf_counter() - t0) / steps
print(f"train_step_ref: {T} tokens, {steps} steps, {dt * 1e3:.1f} ms/step, {T / dt:.0f} tokens/s, last loss {loss.item():.4f}")
