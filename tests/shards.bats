#!/usr/bin/env bats
# WebDataset shards: tar round trips and .tar.idx checked with Python's tarfile.
load helpers

setup() {
    T=$BATS_TEST_TMPDIR
    $PY - "$T" <<'PY'
import gzip, io, os, random, sys, tarfile
random.seed(3)
d = sys.argv[1]
def build(name, fmt, extra=None):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for i in range(40):
            for ext in (["jpg", "json", "img0.jpg"] if i % 3 else ["txt"]):
                data = os.urandom(random.randint(0, 3000))
                ti = tarfile.TarInfo(f"part/s_{i:04d}.{ext}"); ti.size = len(data); ti.mtime = 1700000000
                t.addfile(ti, io.BytesIO(data))
            if i == 5:
                ti = tarfile.TarInfo("__meta__"); ti.size = 2; t.addfile(ti, io.BytesIO(b"{}"))
        if extra: extra(t)
    return buf.getvalue()
open(f"{d}/gnu.tar", "wb").write(build("gnu", tarfile.GNU_FORMAT))
long = lambda t: (lambda ti: (setattr(ti, "size", 4), t.addfile(ti, io.BytesIO(b"long"))))(tarfile.TarInfo("x" * 150 + "/ünïcode_sample.json"))
open(f"{d}/pax.tar", "wb").write(build("pax", tarfile.PAX_FORMAT, long))
open(f"{d}/gnu.tar.gz", "wb").write(gzip.compress(open(f"{d}/gnu.tar", "rb").read()))
PY
}

@test "shards --help reads like a man page" {
    expect_help shards
}

@test "a tar round trip preserves every member byte for byte; .tar.idx points at each sample's first header" {
    for f in gnu.tar gnu.tar.gz pax.tar; do
        "$BIN/shards" copy "$T/$f" "$T/copy-$f.tar" 2>/dev/null
        run $PY "$REF/check_tar.py" "$T/$f" "$T/copy-$f.tar"
        echo "$f: $output"
        [ "$status" -eq 0 ]
    done
    # a copy of a copy is byte-identical (the output depends on the content only)
    "$BIN/shards" copy "$T/copy-gnu.tar.tar" "$T/again.tar" 2>/dev/null
    cmp "$T/copy-gnu.tar.tar" "$T/again.tar"
    cmp "$T/copy-gnu.tar.tar.idx" "$T/again.tar.idx"
}

@test "samples are grouped by key, __*__ members skipped" {
    run "$BIN/shards" ls "$T/gnu.tar"
    [ "${#lines[@]}" -eq 40 ]
    [[ "${lines[0]}" == *$'\tpart/s_0000\ttxt:'* ]]
    [[ "${lines[1]}" == *$'\tpart/s_0001\tjpg:'*$'\tjson:'*$'\timg0.jpg:'* ]]
    [[ "$output" != *__meta__* ]]
}

@test "a damaged or truncated tar stops at the damage, naming the shard and the byte offset" {
    head -c 30000 "$T/gnu.tar" > "$T/trunc.tar"
    run --separate-stderr "$BIN/shards" ls "$T/trunc.tar"
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"$T/trunc.tar"*"byte "* ]]
    [ "${#lines[@]}" -ge 1 ]   # the samples before the damage were read
    $PY -c "
d = bytearray(open('$T/gnu.tar', 'rb').read()); d[1536 * 3 + 100] ^= 0x55; open('$T/bad.tar', 'wb').write(d)"
    run --separate-stderr "$BIN/shards" ls "$T/bad.tar"
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"$T/bad.tar: damaged tar header at byte"* ]]
    expect_bad_input "$T/o.tar" "$T/trunc.tar" "byte" -- "$BIN/shards" copy "$T/trunc.tar" "$T/o.tar"
    [ ! -e "$T/o.tar.tmp" ]
    [ ! -e "$T/o.tar.idx" ]
}

@test "a sample whose members are not consecutive, and a member without extension, are errors" {
    $PY - "$T" <<'PY'
import io, sys, tarfile
with tarfile.open(sys.argv[1] + "/split.tar", "w") as t:
    for n in ["a.jpg", "b.jpg", "a.json"]:
        ti = tarfile.TarInfo(n); ti.size = 1; t.addfile(ti, io.BytesIO(b"x"))
with tarfile.open(sys.argv[1] + "/noext.tar", "w") as t:
    ti = tarfile.TarInfo("README"); ti.size = 1; t.addfile(ti, io.BytesIO(b"x"))
PY
    run --separate-stderr "$BIN/shards" ls "$T/split.tar"
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"sample key 'a' at byte 2048 repeats"* ]]
    run --separate-stderr "$BIN/shards" ls "$T/noext.tar"
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"member 'README' at byte 0 has no extension"* ]]
}
