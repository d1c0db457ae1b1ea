#!/usr/bin/python3
"""usage: check_tar.py ORIGINAL.tar[.gz] COPY.tar — with Python's tarfile (an independent tar reader):
every regular member of ORIGINAL except __*__ ones is in COPY with the same name and bytes, in order;
COPY.idx holds, as little-endian uint64, the offset of each sample's first header and then the end
offset of the last member (spec/data.md 1.1)."""
import re
import struct
import sys
import tarfile

KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def members(path):
    with tarfile.open(path) as t:
        out = []
        for m in t.getmembers():
            if not m.isfile() or re.search(r"(^|/)__[^/]*__$", m.name):
                continue
            out.append((m.name, t.extractfile(m).read(), m.offset, m.offset_data + (m.size + 511) // 512 * 512))
        return out


a, b = members(sys.argv[1]), members(sys.argv[2])
if [(n, d) for n, d, _, _ in a] != [(n, d) for n, d, _, _ in b]:
    sys.exit("check_tar: members differ")
want, prev = [], None
for name, _, off, _ in b:
    key = KEY.match(name).group(1)
    if key != prev:
        want.append(off)
        prev = key
want.append(b[-1][3] if b else 0)
raw = open(sys.argv[2] + ".idx", "rb").read()
got = list(struct.unpack(f"<{len(raw) // 8}Q", raw))
if got != want:
    sys.exit(f"check_tar: idx {got[:5]}... != tarfile offsets {want[:5]}...")
print(f"check_tar: {len(b)} members identical, {len(want) - 1} sample offsets match")
