#!/usr/bin/python3
"""NumPy + PIL reference of the Qwen2-VL image processor as LLaVA-OV-1.5 configures it
(temporal_patch_size 1), written from spec/data.md 5 and the public qwen-vl-utils / transformers code.

usage:
  qwen2vl_image.py make DIR                 write the test images (skimage photos, odd sizes, modes)
  qwen2vl_image.py check IMAGE OURS MIN MAX compare `imgprep --out OURS` with the reference
"""
import json
import math
import os
import struct
import sys

import numpy as np
from PIL import Image

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def smart_resize(h, w, min_pixels, max_pixels, factor=28):
    """qwen-vl-utils vision_process.smart_resize (Python round = half to even)."""
    if max(h, w) / min(h, w) > 200:
        raise ValueError("aspect ratio")
    h_bar = max(factor, round(h / factor) * factor)
    w_bar = max(factor, round(w / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((h * w) / max_pixels)
        h_bar = max(factor, math.floor(h / beta / factor) * factor)
        w_bar = max(factor, math.floor(w / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        h_bar = math.ceil(h * beta / factor) * factor
        w_bar = math.ceil(w * beta / factor) * factor
    return h_bar, w_bar


def to_rgb(img):
    """qwen-vl-utils to_rgb: RGBA over white, everything else convert('RGB')."""
    if img.mode == "RGBA":
        bg = Image.new("RGB", img.size, (255, 255, 255))
        bg.paste(img, mask=img.split()[3])
        return bg
    return img.convert("RGB")


def preprocess(path, min_pixels, max_pixels):
    img = to_rgb(Image.open(path))
    w, h = img.size
    rh, rw = smart_resize(h, w, min_pixels, max_pixels)
    img = img.resize((rw, rh), Image.BICUBIC)
    x = np.asarray(img).astype(np.float64) * (1 / 255)      # rescale in float64, as transformers
    x = ((x.astype(np.float32) - MEAN) / STD).astype(np.float32)
    x = x.transpose(2, 0, 1)[None]                           # (1, 3, H, W)
    gh, gw = rh // 14, rw // 14
    # Qwen2VLImageProcessor with temporal_patch_size 1 and merge_size 2
    p = x.reshape(1, 1, 3, gh // 2, 2, 14, gw // 2, 2, 14)
    p = p.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return p.reshape(gh * gw, 3 * 14 * 14), (1, gh, gw), np.asarray(img)


def read_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    hdr = json.loads(raw[8:8 + n])
    out = {}
    for k, e in hdr.items():
        if k == "__metadata__":
            continue
        b, en = e["data_offsets"]
        dt = {"F32": np.float32, "I32": np.int32}[e["dtype"]]
        out[k] = np.frombuffer(raw[8 + n + b:8 + n + en], dtype=dt).reshape(e["shape"])
    return out


def make(d):
    import skimage.data as sd
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(7)
    for name in ("coffee", "astronaut", "chelsea"):
        a = getattr(sd, name)()
        Image.fromarray(a).save(f"{d}/{name}.png")
        Image.fromarray(a).save(f"{d}/{name}.jpg", quality=90)
    cof = sd.coffee()
    Image.fromarray(cof).resize((1000, 750), Image.BICUBIC).save(f"{d}/photo_1000x750.jpg", quality=92)
    smooth = lambda h, w: (np.stack(np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h)), -1)[..., [0, 1, 0]] +
                           rng.integers(0, 40, (h, w, 3))).clip(0, 255).astype(np.uint8)
    Image.fromarray(smooth(28, 5600)).save(f"{d}/wide_28x5600.png")
    Image.fromarray(smooth(2000, 3000)).save(f"{d}/big_3000x2000.jpg", quality=85)   # w x h = 3000 x 2000
    Image.fromarray(smooth(70, 70)).save(f"{d}/tie_70x70.png")
    Image.fromarray(smooth(126, 350)).save(f"{d}/tie_350x126.png")
    Image.fromarray(smooth(20, 20)).save(f"{d}/small_20x20.png")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(f"{d}/one_1x1.png")
    # modes
    Image.fromarray(cof).convert("L").save(f"{d}/grey.jpg", quality=90)
    Image.fromarray(cof).convert("L").save(f"{d}/grey.png")
    Image.fromarray(cof).convert("P", palette=Image.ADAPTIVE, colors=64).save(f"{d}/palette.png")
    rgba = np.dstack([cof, (np.arange(600)[None, :].repeat(400, 0) * 255 // 599).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(f"{d}/alpha.png")
    Image.fromarray(rgba, "RGBA").save(f"{d}/alpha.webp", lossless=True)
    Image.fromarray(cof).save(f"{d}/lossy.webp", quality=80)
    Image.fromarray(cof).convert("CMYK").save(f"{d}/cmyk.jpg", quality=90)
    g16 = (np.linspace(0, 600, 400 * 300).reshape(300, 400)).astype(np.uint16)
    Image.fromarray(g16.astype(np.int32), "I").save(f"{d}/grey16.png")
    rgb16 = rng.integers(0, 65535, (300, 400, 3)).astype(">u2")
    _write_png16(f"{d}/rgb16.png", rgb16)


def _write_png16(path, a):
    """A 16-bit RGB PNG (PIL cannot write one)."""
    import zlib
    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)) +
                           chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def check(path, ours_path, mn, mx):
    ref, grid, _ = preprocess(path, mn, mx)
    ours = read_safetensors(ours_path)
    g = tuple(int(x) for x in ours["grid_thw"][0])
    if g != grid:
        sys.exit(f"qwen2vl_image: {path}: grid {g}, reference {grid}")
    got = ours["pixel_values"]
    if got.shape != ref.shape:
        sys.exit(f"qwen2vl_image: {path}: shape {got.shape}, reference {ref.shape}")
    d = np.abs(got.astype(np.float64) - ref)
    # Tolerances of the issue: one 8-bit level is ~0.015 in normalised units.
    print(f"qwen2vl_image: {os.path.basename(path)} min {mn} max {mx}: grid {grid}, max |diff| {d.max():.5f}, "
          f"mean |diff| {d.mean():.6f}")
    if d.max() > 0.02 or d.mean() > 0.002:
        sys.exit(1)


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        check(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
