#!/usr/bin/python3
"""Writes a damaged copy of a safetensors file, for the bad-input tests.

usage: corrupt.py MODE IN OUT [ARG...]
modes:
  truncate          drop the last 100 bytes
  hlen_past_end     header length field larger than the file
  garbage_json      header replaced by text that is not JSON
  unknown_dtype     first tensor's dtype becomes "F99"
  bad_nbytes        first tensor's first dimension + 1 (shape x dtype != byte range)
  overlap           second tensor's byte range starts inside the first one's
  dup               the first tensor's entry appears twice in the header JSON
  drop NAME         the tensor NAME is removed (a valid file)
  rename NAME NEW   the tensor NAME is renamed (a valid file)
  reshape NAME D0,D1  the tensor NAME is stored with another shape and fresh bytes (a valid file)
  add NAME          an extra small F32 tensor NAME is appended (a valid file)
  flip NAME         the first byte of tensor NAME is changed (a valid file)
"""
import json
import struct
import sys

import numpy as np


def load(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n], object_pairs_hook=lambda kv: dict(kv))
    return header, raw[8 + n:]


def dump(path, header_text, data):
    hb = header_text.encode()
    hb += b" " * ((8 - (8 + len(hb)) % 8) % 8)
    open(path, "wb").write(struct.pack("<Q", len(hb)) + hb + data)


def tensors(header):
    return [k for k in header if k != "__metadata__"]


def rebuild(header, data, drop=(), rename=None, add=None, replace=None):
    """Re-lays the data buffer after dropping / renaming / adding / replacing tensors."""
    out, blobs, off = {}, [], 0
    if "__metadata__" in header:
        out["__metadata__"] = header["__metadata__"]
    items = [(k, header[k]) for k in sorted(tensors(header), key=lambda k: header[k]["data_offsets"][0])]
    for k, e in items:
        if k in drop:
            continue
        b, en = e["data_offsets"]
        blob, shape = data[b:en], e["shape"]
        if replace and k == replace[0]:
            shape = replace[1]
            n = int(np.prod(shape)) * (len(blob) // max(1, int(np.prod(e["shape"]))))
            blob = bytes(n)
        name = rename[1] if rename and k == rename[0] else k
        out[name] = {"dtype": e["dtype"], "shape": shape, "data_offsets": [off, off + len(blob)]}
        blobs.append(blob)
        off += len(blob)
    if add:
        out[add] = {"dtype": "F32", "shape": [2], "data_offsets": [off, off + 8]}
        blobs.append(np.zeros(2, np.float32).tobytes())
    return json.dumps(out), b"".join(blobs)


def main():
    mode, src, dst = sys.argv[1:4]
    args = sys.argv[4:]
    header, data = load(src)
    names = sorted(tensors(header), key=lambda k: header[k]["data_offsets"][0])
    first = names[0]
    if mode == "truncate":
        raw = open(src, "rb").read()
        open(dst, "wb").write(raw[:-100])
    elif mode == "hlen_past_end":
        raw = bytearray(open(src, "rb").read())
        raw[:8] = struct.pack("<Q", len(raw) + 1000)
        open(dst, "wb").write(bytes(raw))
    elif mode == "garbage_json":
        dump(dst, '{"a": [1, 2,, not json', data)
    elif mode == "unknown_dtype":
        header[first]["dtype"] = "F99"
        dump(dst, json.dumps(header), data)
    elif mode == "bad_nbytes":
        header[first]["shape"][0] += 1
        dump(dst, json.dumps(header), data)
    elif mode == "overlap":
        a, b = header[names[0]], header[names[1]]
        size = b["data_offsets"][1] - b["data_offsets"][0]
        start = a["data_offsets"][1] - 2
        b["data_offsets"] = [start, start + size]
        dump(dst, json.dumps(header), data)
    elif mode == "dup":
        text = json.dumps(header)
        entry = json.dumps({first: header[first]})[1:-1]
        dump(dst, text[:-1] + ", " + entry + "}", data)
    elif mode == "drop":
        dump(dst, *rebuild(header, data, drop=(args[0],)))
    elif mode == "rename":
        dump(dst, *rebuild(header, data, rename=(args[0], args[1])))
    elif mode == "reshape":
        dump(dst, *rebuild(header, data, replace=(args[0], [int(x) for x in args[1].split(",")])))
    elif mode == "add":
        dump(dst, *rebuild(header, data, add=args[0]))
    elif mode == "flip":
        b = header[args[0]]["data_offsets"][0]
        d = bytearray(data)
        d[b] ^= 0xFF
        dump(dst, json.dumps(header), bytes(d))
    else:
        sys.exit("corrupt.py: unknown mode " + mode)


main()
