#!/usr/bin/env python3
"""Our CPU model against the real Hugging Face implementations (transformers 5.x on the GPU machines):
MLCDVisionModel on the MLCD-format source and Qwen3ForCausalLM on the Qwen3 source, both fp32 on the CPU.

usage: hf_ref.py inputs VIT_DIR LLM_DIR DIR        write the inputs: DIR/img.safetensors (two images, for
                                                   `forward`, plus the raw images) and DIR/text.safetensors
       hf_ref.py check VIT_DIR LLM_DIR DIR         compare DIR/vis_ours.safetensors (forward on the merged
                                                   checkpoint) with MLCDVisionModel, DIR/text_ours.safetensors
                                                   (forward on the Qwen3 source) and DIR/merged_ours.safetensors
                                                   (forward on the merged checkpoint) with Qwen3ForCausalLM
Tolerance: max |diff| <= 1e-4 * max|ref| + 1e-5 (fp32 on both sides).
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "ref"))
from stlib import read_file, write_file  # noqa: E402

P, GRIDS = 14, [(4, 6), (2, 2)]


def patchify_2x2(image):
    C, H, W = image.shape
    gh, gw = H // P, W // P
    return image.reshape(C, gh // 2, 2, P, gw // 2, 2, P).permute(1, 4, 2, 5, 0, 3, 6).reshape(gh * gw, C * P * P)


def raster_to_2x2(x, gh, gw):
    return x.reshape(gh // 2, 2, gw // 2, 2, -1).permute(0, 2, 1, 3, 4).reshape(gh * gw, -1)


def inputs(d):
    g = torch.Generator().manual_seed(11)
    images = [torch.randn(3, gh * P, gw * P, generator=g) for gh, gw in GRIDS]
    write_file(f"{d}/img.safetensors",
               [("pixel_values", "F32", torch.cat([patchify_2x2(im) for im in images]).numpy()),
                ("grid_thw", "I32", np.array([(1, gh, gw) for gh, gw in GRIDS], np.int32))] +
               [(f"image{i}", "F32", im.numpy()) for i, im in enumerate(images)])
    ids = torch.randint(0, 1000, (40,), generator=g).to(torch.int32)
    write_file(f"{d}/text.safetensors", [("input_ids", "I32", ids.numpy())])


def compare(name, ours, ref):
    d = (ours - ref).abs().max().item()
    tol = 1e-4 * ref.abs().max().item() + 1e-5
    ok = d <= tol
    print(f"hf_ref: {name} {tuple(ref.shape)} max |diff| {d:.3e} (tolerance {tol:.3e}) {'ok' if ok else 'FAIL'}")
    return ok


def check(vit_dir, llm_dir, d):
    import transformers
    from transformers import MLCDVisionModel, Qwen3ForCausalLM
    print(f"hf_ref: transformers {transformers.__version__}, torch {torch.__version__}")
    load = lambda p: {k: torch.from_numpy(np.array(a)) for k, (dt, a) in read_file(p).items()}
    img, text = load(f"{d}/img.safetensors"), load(f"{d}/text.safetensors")
    ok = True
    vit = MLCDVisionModel.from_pretrained(vit_dir, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = torch.cat([raster_to_2x2(vit(pixel_values=img[f"image{i}"][None]).last_hidden_state[0, 1:], gh, gw)
                         for i, (gh, gw) in enumerate(GRIDS)])
    ok &= compare("MLCDVisionModel last_hidden_state (CLS removed, 2x2 order) vs our vision_hidden", load(f"{d}/vis_ours.safetensors")["vision_hidden"], ref)
    llm = Qwen3ForCausalLM.from_pretrained(llm_dir, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        logits = llm(input_ids=text["input_ids"].long()[None]).logits[0]
    ok &= compare("Qwen3ForCausalLM logits vs ours on the Qwen3 source", load(f"{d}/text_ours.safetensors")["logits"], logits)
    ok &= compare("Qwen3ForCausalLM logits vs ours on the merged checkpoint (text only)", load(f"{d}/merged_ours.safetensors")["logits"], logits)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    if sys.argv[1] == "inputs":
        inputs(sys.argv[4])
    else:
        check(sys.argv[2], sys.argv[3], sys.argv[4])
