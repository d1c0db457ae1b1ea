"""Minimal, independent safetensors reader/writer for the tests (numpy; BF16 kept as raw uint16).

Written from the format description (spec/checkpoints.md 1.2), not from the C code, so that the
tests compare two implementations.
"""
import json
import os
import struct

import numpy as np

NP = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I32": np.int32, "I64": np.int64,
      "U8": np.uint8, "BOOL": np.bool_, "F64": np.float64, "I8": np.int8, "I16": np.int16, "U16": np.uint16,
      "U32": np.uint32, "U64": np.uint64}


def read_file(path):
    """Returns {name: (dtype_string, numpy array)} of one safetensors file (memory-mapped)."""
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    (n,) = struct.unpack("<Q", raw[:8].tobytes())
    header = json.loads(raw[8:8 + n].tobytes())
    data = raw[8 + n:]
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        arr = data[b:end].view(NP[e["dtype"]]).reshape(e["shape"])
        out[name] = (e["dtype"], arr)
    return out


def same_bits(a, b):
    """Bit-for-bit equality of two arrays (NaN payloads and signed zeros included)."""
    if a.shape != b.shape or a.dtype.itemsize != b.dtype.itemsize:
        return False
    u = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    return np.array_equal(np.ascontiguousarray(a).view(u), np.ascontiguousarray(b).view(u))


def read_dir(d):
    """All tensors of an HF-style directory (single file or index + shards)."""
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        wm = json.load(open(idx))["weight_map"]
        out = {}
        for f in sorted(set(wm.values())):
            part = read_file(os.path.join(d, f))
            for k, v in part.items():
                assert wm[k] == f, f"{k} in {f} but index says {wm[k]}"
                out[k] = v
        assert set(out) == set(wm), "index and shards disagree"
        return out
    return read_file(os.path.join(d, "model.safetensors"))


def write_file(path, tensors, raw_header=None):
    """tensors: list of (name, dtype_string, numpy array). raw_header overrides the JSON text."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, dt, arr in tensors:
        b = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    text = raw_header if raw_header is not None else json.dumps(header)
    hb = text.encode()
    hb += b" " * ((8 - (8 + len(hb)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + b"".join(blobs))


def bf16_from_f32(x):
    """Round-to-nearest-even fp32 -> bf16 bits, through PyTorch (the reference semantics)."""
    import torch
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16)
    return t.view(torch.int16).numpy().view(np.uint16)
