#!/usr/bin/env python3
"""The peer of bench/gpu_train.sh: PyTorch + transformers training the same shapes on the same card, set up
as spec/performance.md §4 measured it: bf16 autocast over fp32 weights, SDPA attention, no compile, no
recompute; 2 warm-up steps, then the mean of STEPS timed steps bracketed by device synchronisation.

usage:
  gpu_train_ref.py llm LLM_DIR IN.safetensors STEPS
        Qwen3ForCausalLM (the checkpoint's config) on input_ids/labels of IN (one row), loss from labels (HF's
        shift), torch.optim.AdamW(fused=True) step
  gpu_train_ref.py vision VIT_DIR IMAGE_SIDE STEPS
        MLCDVisionModel on one random IMAGE_SIDE x IMAGE_SIDE image, forward + backward of the mean of the squared
        last hidden state, no optimizer
  gpu_train_ref.py full VIT_DIR LLM_DIR IN.safetensors STEPS
        the whole LLaVA-OV-1.5 shape assembled from transformers parts: MLCDVisionModel on the images of IN
        (grid_thw; all the same size, one batch), CLS rows dropped, the 2x2 merger (LayerNorm, Linear 4D->4D, GELU,
        Linear 4D->H), embeddings scattered into the image-pad positions of Qwen3ForCausalLM's inputs_embeds, loss
        from labels, fused AdamW over everything; gradient checkpointing on both models (the whole model does not
        fit an H200 without it, and ours runs with --recompute of every layer)
Prints one line: "peer: ... ms/step, ... tokens/s, ... model TFLOP/s, peak ... GiB" with the model FLOPs of
spec/performance.md §4 (LLM: 6*N_nonembed*T + 6*h*V*T + 6*L*q*T^2 for one causal sequence; ViT:
6*N*S + 12*L*h*S^2)."""
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ref"))
from stlib import read_file  # noqa: E402

WARMUP = 2


def timed(step, steps):
    for _ in range(WARMUP):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def train_step(loss_fn, opt, last):
    """One optimizer step on loss_fn() under bf16 autocast; the loss is kept (on the device) in last[0]."""
    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        last[0] = loss.detach()
    return step


def llm(model_dir, in_path, steps):
    from transformers import Qwen3ForCausalLM
    model = Qwen3ForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").cuda().train()
    inp = read_file(in_path)
    ids = torch.from_numpy(np.array(inp["input_ids"][1], np.int64)).reshape(1, -1).cuda()
    labels = torch.from_numpy(np.array(inp["labels"][1], np.int64)).reshape(1, -1).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    last = [0.0]
    step = train_step(lambda: model(input_ids=ids, labels=labels).loss, opt, last)
    torch.cuda.reset_peak_memory_stats()
    dt = timed(step, steps)
    c = model.config
    T, h, V, L = ids.shape[1], c.hidden_size, c.vocab_size, c.num_hidden_layers
    q = c.num_attention_heads * c.head_dim
    n = sum(p.numel() for p in model.parameters()) - V * h  # the tied embedding counts through the head term
    if not c.tie_word_embeddings:
        n -= V * h
    flop = 6 * n * T + 6 * h * V * T + 6 * L * q * T * T
    print(f"peer: {T} tokens, {steps} steps, {dt * 1e3:.1f} ms/step, {T / dt:.0f} tokens/s, {flop / dt / 1e12:.1f} model "
          f"TFLOP/s, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB, last loss {float(last[0]):.4f} "
          f"(transformers Qwen3ForCausalLM, bf16 autocast, SDPA, fused AdamW; {torch.cuda.get_device_name()})")


def vision(model_dir, side, steps):
    from transformers import MLCDVisionModel
    model = MLCDVisionModel.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").cuda().train()
    px = torch.randn(1, 3, side, side, device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(pixel_values=px).last_hidden_state
        out.float().pow(2).mean().backward()
        for p in model.parameters():
            p.grad = None

    torch.cuda.reset_peak_memory_stats()
    dt = timed(step, steps)
    c = model.config
    S = (side // c.patch_size) ** 2 + 1
    n = sum(p.numel() for p in model.parameters())
    flop = 6 * n * S + 12 * c.num_hidden_layers * c.hidden_size * S * S
    print(f"peer: {S} tokens, {steps} steps, {dt * 1e3:.1f} ms/step, {S / dt:.0f} tokens/s, {flop / dt / 1e12:.1f} model "
          f"TFLOP/s, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (transformers MLCDVisionModel, bf16 autocast, "
          f"SDPA; {torch.cuda.get_device_name()})")


def full(vit_dir, llm_dir, in_path, steps):
    from transformers import MLCDVisionModel, Qwen3ForCausalLM
    vit = MLCDVisionModel.from_pretrained(vit_dir, dtype=torch.float32, attn_implementation="sdpa").cuda().train()
    llm = Qwen3ForCausalLM.from_pretrained(llm_dir, dtype=torch.float32, attn_implementation="sdpa").cuda().train()
    vit.gradient_checkpointing_enable()
    llm.gradient_checkpointing_enable()
    D, H = vit.config.hidden_size, llm.config.hidden_size
    merger = torch.nn.Sequential(torch.nn.LayerNorm(D, eps=1e-6), torch.nn.Flatten(-2), torch.nn.Linear(4 * D, 4 * D),
                                 torch.nn.GELU(), torch.nn.Linear(4 * D, H)).cuda()
    inp = read_file(in_path)
    ids = torch.from_numpy(np.array(inp["input_ids"][1], np.int64)).reshape(1, -1).cuda()
    labels = torch.from_numpy(np.array(inp["labels"][1], np.int64)).reshape(1, -1).cuda()
    grid = np.array(inp["grid_thw"][1]).reshape(-1, 3)
    n, gh, gw = len(grid), int(grid[0, 1]), int(grid[0, 2])
    assert (grid[:, 1:] == [gh, gw]).all(), "the peer batches images of one size"
    px = torch.randn(n, 3, gh * 14, gw * 14, device="cuda")
    image_id = int(np.array(inp["image_token_id"][1])[0])
    pads = ids[0] == image_id
    params = list(vit.parameters()) + list(merger.parameters()) + list(llm.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    last = [0.0]

    def loss_fn():
        x = vit(pixel_values=px).last_hidden_state[:, 1:]  # [n, gh*gw, D] without CLS
        x = x.reshape(n, gh // 2, 2, gw // 2, 2, D).permute(0, 1, 3, 2, 4, 5).reshape(-1, 4, D)  # 2x2 blocks
        emb = llm.get_input_embeddings()(ids)
        emb = emb.masked_scatter(pads[None, :, None], merger(x).to(emb.dtype))
        return llm(inputs_embeds=emb, labels=labels).loss

    step = train_step(loss_fn, opt, last)
    torch.cuda.reset_peak_memory_stats()
    dt = timed(step, steps)
    T = ids.shape[1]
    print(f"peer: {T} tokens, {n} images of {gh}x{gw} patches, {steps} steps, {dt * 1e3:.1f} ms/step, {T / dt:.0f} tokens/s, "
          f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB, last loss {float(last[0]):.4f} (transformers MLCDVisionModel "
          f"+ merger + Qwen3ForCausalLM, bf16 autocast, SDPA, gradient checkpointing, fused AdamW; {torch.cuda.get_device_name()})")


if __name__ == "__main__":
    if sys.argv[1] == "llm":
        llm(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1] == "full":
        full(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        vision(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
