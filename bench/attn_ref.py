#!/usr/bin/env python3
"""PyTorch's own attention at our two shapes, the peer of ops_check's attention timings (tests/gpu/run.sh prints both):
F.scaled_dot_product_attention on bf16 CUDA tensors, forward and forward+backward, with each SDPA backend PyTorch
has here (flash, cuDNN, memory-efficient), timed with CUDA events (the median of 10 after 3 untimed).
  slice: causal, T 8192, 32 query heads / 8 KV heads of 128 (enable_gqa)
  tower: bidirectional, T 5185, 16 heads of 64
and, beside ops_check's timings of cuDNN's ragged layout, the same heads packed (torch.nn.attention.varlen, PyTorch's
varlen flash attention, where this PyTorch has it): 5 text samples in 8192 positions (3000, 1200, 1800, 500, 1692)
causal, and two images of 1025 and 4097 rows bidirectional.
FLOPs as ops_check counts them: forward 4·T²·H·D (half of it causal; packed: the sum over the sequences), backward
2.5x the forward.
Prints one line per shape and backend: "attn_ref: SHAPE BACKEND forward X ms Y TFLOP/s, backward X ms Y TFLOP/s".
Exits 1 without a CUDA device."""
import inspect
import sys

import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    print("attn_ref: no CUDA device")
    sys.exit(1)
from torch.nn.attention import SDPBackend, sdpa_kernel  # (PyTorch 2.3 and later; the GPU machines have 2.11)


def fwd_bwd(forward, params, dout):
    """forward's time, then its backward's (into params' gradients), each as timed() takes it"""
    out = forward()
    fwd = timed(forward)

    def backward():
        for t in params:
            t.grad = None
        out.backward(dout, retain_graph=True)
    return fwd, timed(backward)


def timed(fn):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def shape(name, T, Hq, Hkv, D, causal):
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, Hq, T, D, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    k = torch.randn(1, Hkv, T, D, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    v = torch.randn(1, Hkv, T, D, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    dout = torch.randn(1, Hq, T, D, device="cuda", dtype=torch.bfloat16, generator=g)
    flops = 4.0 * T * T * Hq * D / (2 if causal else 1)
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        try:
            with sdpa_kernel(backend):
                fwd, bwd = fwd_bwd(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=Hq != Hkv),
                                   (q, k, v), dout)
        except Exception as e:  # a backend that does not take this shape here (RuntimeError, NotImplementedError)
            print(f"attn_ref: {name} {backend.name.lower()}: not available ({str(e).splitlines()[0][:80]})")
            continue
        print(f"attn_ref: {name} {backend.name.lower()} forward {fwd:.3f} ms {flops / fwd / 1e9:.1f} TFLOP/s, "
              f"backward {bwd:.3f} ms {2.5 * flops / bwd / 1e9:.1f} TFLOP/s")


def packed(name, cu, Hq, Hkv, D, causal):
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError as e:
        print(f"attn_ref: {name} varlen: not available ({e})")
        return
    lens = [b - a for a, b in zip(cu, cu[1:])]
    T, note = cu[-1], ""
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(T, Hq, D, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    k = torch.randn(T, Hkv, D, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(T, Hkv, D, device="cuda", dtype=torch.bfloat16, generator=g)
    dout = torch.randn(T, Hq, D, device="cuda", dtype=torch.bfloat16, generator=g)
    cu_t = torch.tensor(cu, dtype=torch.int32, device="cuda")
    # the signature moved between releases: is_causal (2.10) or window_size (2.11: (-1, 0) is causal); GQA by
    # enable_gqa (2.12), else K and V repeated to the query heads first (outside the timing)
    params, kw = inspect.signature(varlen_attn).parameters, {}
    if "is_causal" in params:
        kw["is_causal"] = causal
    elif causal:
        kw["window_size"] = (-1, 0)
    if Hq != Hkv:
        if "enable_gqa" in params:
            kw["enable_gqa"] = True
        else:
            k, v, note = k.repeat_interleave(Hq // Hkv, 1), v.repeat_interleave(Hq // Hkv, 1), " (K/V repeated to the query heads)"
    k, v = k.detach().requires_grad_(), v.detach().requires_grad_()
    flops = sum(4.0 * n * n * Hq * D / (2 if causal else 1) for n in lens)
    try:
        fwd, bwd = fwd_bwd(lambda: varlen_attn(q, k, v, cu_t, cu_t, max(lens), max(lens), **kw), (q, k, v), dout)
    except Exception as e:
        print(f"attn_ref: {name} varlen: not available ({str(e).splitlines()[0][:80]})")
        return
    print(f"attn_ref: {name} varlen{note} forward {fwd:.3f} ms {flops / fwd / 1e9:.1f} TFLOP/s, "
          f"backward {bwd:.3f} ms {2.5 * flops / bwd / 1e9:.1f} TFLOP/s")


print(f"attn_ref: torch {torch.__version__}, {torch.cuda.get_device_name()}")
shape("slice T 8192 32q/8kv d128 causal", 8192, 32, 8, 128, True)
shape("tower T 5185 16 heads d64 bidirectional", 5185, 16, 16, 64, False)
packed("slice heads, T 8192 in 5 causal", [0, 3000, 4200, 6000, 6500, 8192], 32, 8, 128, True)
packed("tower heads, T 5122 in 2 bidirectional", [0, 1025, 5122], 16, 16, 64, False)
