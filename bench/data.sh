#!/usr/bin/env bash
# bench/data.sh: pack samples/s on caption samples (2 threads; the issue's target is >= 5,000/s, the
# image probe reads headers only) and the training loader's sequences/s, images/s and tokens/s
# (decode + resize + normalise + patchify in 2 workers), next to the PIL + NumPy reference's
# images/s for the same per-image work, from the same run.   usage: bench/data.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/bin}
make -s bench-tools >/dev/null
W=$(mktemp -d /tmp/bench_data.XXXX)
trap 'rm -rf "$W"' EXIT
"$BIN/synth" --out "$W/d" --scale 4 2>/dev/null
n=$("$BIN/shards" ls "$W"/d/captions/*.tar | wc -l)
"$BIN/pack" --tokenizer "$W/d/tokenizer" --out "$W/p" --max-len 2048 --threads 2 "$W"/d/captions/*.tar 2>/dev/null
pack_s=$(jq .seconds "$W/p/report.json")
pack_rate=$(awk "BEGIN{printf \"%.0f\", $n/$pack_s}")
read -r seq_s img_s tok_s < <(build/bench/loader_bench 2 300 "$W"/p/packed-*.tar)
peer_img=$(/usr/bin/python3 - "$W/p/packed-000000.tar" <<'PY'
import io, json, sys, tarfile, time
import numpy as np
from PIL import Image
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32); STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
with tarfile.open(sys.argv[1]) as t:
    g = {m.name: t.extractfile(m).read() for m in t.getmembers()}
jobs = []
for k in sorted(n for n in g if n.endswith(".json")):
    for im in json.loads(g[k])["images"]:
        jobs.append((g[k[:-4] + im["member"]], im["height"], im["width"]))
jobs = jobs[:600]
t0 = time.perf_counter()
for data, h, w in jobs:
    x = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((w, h), Image.BICUBIC)).astype(np.float32) / 255
    x = ((x - MEAN) / STD).transpose(2, 0, 1).reshape(1, 1, 3, h // 28, 2, 14, w // 28, 2, 14).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    np.ascontiguousarray(x)
print(f"{len(jobs) / (time.perf_counter() - t0):.0f}")
PY
)
echo "machine: $(nproc --all) cores, $(uname -m); $(date -u +%F)"
printf '\n%-62s %12s %12s\n' "measure" "ours" "peer"
printf '%-62s %12s %12s\n' "pack samples/s, $n caption samples, max-len 2048, 2 threads" "$pack_rate" "(target 5000)"
printf '%-62s %12s %12s\n' "loader images/s, 2 workers (peer: PIL+NumPy, 1 thread)" "$(printf %.0f "$img_s")" "$peer_img"
printf '%-62s %12s %12s\n' "loader tokens/s, 2 workers" "$(printf %.0f "$tok_s")" "-"
printf '%-62s %12s %12s\n' "loader packed sequences/s, 2 workers" "$seq_s" "-"
