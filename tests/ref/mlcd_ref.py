#!/usr/bin/python3
"""The vision tower as the MLCD model computes it (HF MLCDVisionModel semantics, spec/model.md §2 and §7.1),
written in PyTorch from the MLCD-format source checkpoint: separate q/k/v projections, a Conv2d patch embedding
on the image, patches in raster order, RoPE ids in raster order with the CLS angles in front, one image per
forward. The stage-0 merge check (spec/model.md §7.3 step 5a): last hidden state without CLS, reordered from
raster to 2x2-block order, must equal what our merged model's vision tower computes.

usage:
  mlcd_ref.py inputs VIT_DIR IN.safetensors SEED     two random images (4x6 and 2x2 patches); writes them as
                                                     image0/image1 [3, H, W] and, for `forward`, pixel_values in
                                                     2x2-block order (Qwen2-VL patchify) with grid_thw
  mlcd_ref.py check VIT_DIR IN.safetensors OURS.safetensors
                                                     OURS's vision_hidden against MLCD: max |diff| <= 1e-4*max|ref| + 1e-5
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from stlib import read_dir, read_file, write_file  # noqa: E402

P = 14
GRIDS = [(4, 6), (2, 2)]


def load(vit_dir):
    cfg = json.load(open(os.path.join(vit_dir, "config.json")))
    W = {}
    for k, (dt, a) in read_dir(vit_dir).items():
        t = (a.astype(np.uint32) << 16).view(np.float32) if dt == "BF16" else np.asarray(a, np.float32)
        W[k[len("vision_model."):] if k.startswith("vision_model.") else k] = torch.from_numpy(t.copy())
    return cfg, W


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def mlcd(cfg, W, image):
    """image [3, H, W] -> last_hidden_state [1 + h*w, D] (CLS first, raster order, no post_layernorm)."""
    D, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    hd, eps = D // nh, cfg["layer_norm_eps"]
    theta = cfg.get("rope_parameters", {}).get("rope_theta", cfg.get("rope_theta", 10000.0))
    x = F.conv2d(image[None], W["embeddings.patch_embedding.weight"], stride=P)  # [1, D, h, w]
    h, w = x.shape[2:]
    x = torch.cat([W["embeddings.class_embedding"][None], x.flatten(2)[0].T])  # [1 + h*w, D]
    # MLCDRotaryEmbedding(hd // 2): (row, col) ids in raster order
    dim = hd // 2
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    hpos = torch.arange(h).unsqueeze(1).expand(-1, w).flatten()
    wpos = torch.arange(w).unsqueeze(0).expand(h, -1).flatten()
    freqs = torch.outer(torch.arange(max(h, w), dtype=torch.float32), inv)
    rot = torch.cat([W["class_pos_emb"], torch.cat([freqs[hpos], freqs[wpos]], dim=1)])
    emb = torch.cat([rot, rot], dim=-1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]
    x = F.layer_norm(x, (D,), W["pre_layrnorm.weight"], W["pre_layrnorm.bias"], eps)
    S = x.shape[0]
    for i in range(cfg["num_hidden_layers"]):
        b = f"encoder.layers.{i}."
        r = x
        x = F.layer_norm(x, (D,), W[b + "layer_norm1.weight"], W[b + "layer_norm1.bias"], eps)
        q, k, v = (F.linear(x, W[b + f"self_attn.{n}_proj.weight"], W[b + f"self_attn.{n}_proj.bias"]).view(S, nh, hd)
                   for n in "qkv")
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [nh, S, hd]
        a = ((q @ k.transpose(1, 2)) * hd ** -0.5).softmax(-1) @ v
        x = r + F.linear(a.transpose(0, 1).reshape(S, D), W[b + "self_attn.out_proj.weight"], W[b + "self_attn.out_proj.bias"])
        r = x
        x = F.layer_norm(x, (D,), W[b + "layer_norm2.weight"], W[b + "layer_norm2.bias"], eps)
        x = r + F.linear(F.gelu(F.linear(x, W[b + "mlp.fc1.weight"], W[b + "mlp.fc1.bias"])),
                         W[b + "mlp.fc2.weight"], W[b + "mlp.fc2.bias"])
    return x


def patchify_2x2(image):
    """Qwen2-VL processor order (temporal_patch_size 1, merge 2): rows in 2x2 blocks, each row (c, ky, kx)."""
    C, H, Wd = image.shape
    gh, gw = H // P, Wd // P
    x = image.reshape(C, gh // 2, 2, P, gw // 2, 2, P).permute(1, 4, 2, 5, 0, 3, 6)
    return x.reshape(gh * gw, C * P * P)


def raster_to_2x2(x, gh, gw):
    return x.reshape(gh // 2, 2, gw // 2, 2, -1).permute(0, 2, 1, 3, 4).reshape(gh * gw, -1)


def make_inputs(path, seed):
    g = torch.Generator().manual_seed(seed)
    images = [torch.randn(3, gh * P, gw * P, generator=g) for gh, gw in GRIDS]
    write_file(path, [("pixel_values", "F32", torch.cat([patchify_2x2(im) for im in images]).numpy()),
                      ("grid_thw", "I32", np.array([(1, gh, gw) for gh, gw in GRIDS], np.int32))] +
               [(f"image{i}", "F32", im.numpy()) for i, im in enumerate(images)])


def check(vit_dir, in_path, ours_path):
    cfg, W = load(vit_dir)
    inp = {k: torch.from_numpy(np.array(a)) for k, (dt, a) in read_file(in_path).items()}
    ours = torch.from_numpy(np.array(read_file(ours_path)["vision_hidden"][1]))
    with torch.no_grad():
        ref = torch.cat([raster_to_2x2(mlcd(cfg, W, inp[f"image{i}"])[1:], gh, gw) for i, (gh, gw) in enumerate(GRIDS)])
    d = (ours - ref).abs().max().item()
    tol = 1e-4 * ref.abs().max().item() + 1e-5
    mean = (ours - ref).abs().mean().item()
    print(f"mlcd_ref: vision_hidden {tuple(ref.shape)} max |diff| {d:.3e} (tolerance {tol:.3e}), mean {mean:.3e} "
          f"(upstream's merge check allows a mean of 5e-2)")
    # the same rows left in raster order must NOT match: the reordering is what is being checked
    raster = torch.cat([mlcd(cfg, W, inp[f"image{i}"])[1:] for i in range(len(GRIDS))]).detach()
    unordered = (ours - raster).abs().max().item()
    print(f"mlcd_ref: without the 2x2 reordering the max |diff| would be {unordered:.3e}")
    sys.exit(0 if d <= tol and unordered > tol else 1)


if __name__ == "__main__":
    if sys.argv[1] == "inputs":
        make_inputs(sys.argv[3], int(sys.argv[4]))
    else:
        check(sys.argv[2], sys.argv[3], sys.argv[4])
