#!/usr/bin/env bash
# bench/convert_4b.sh: converts a full-depth LLaVA-OV-1.5-4B checkpoint (random values at the real
# shapes, 4.74 G parameters) through merge, hf2mcore and mcore2hf, and prints seconds and peak
# resident memory (GNU time) next to the checkpoint size and, as the peer figure, the time `cp`
# takes to copy the same bytes on the same disk (the I/O floor any converter is bound by).
#   usage: bench/convert_4b.sh [WORKDIR]   (needs about 40 GB free; WORKDIR is removed afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/bin}
W=${1:-$(mktemp -d /tmp/bench4b.XXXX)}
mkdir -p "$W"
trap 'rm -rf "$W"' EXIT
TP=${TP:-2}
PP=${PP:-2}

timed() {  # LABEL CMD... -> "seconds maxrss_kB"
    local label=$1; shift
    /usr/bin/time -f "%e %M" -o "$W/time.$label" "$@" 2>"$W/log.$label" >/dev/null
    cat "$W/time.$label"
}
gb() { du -sb "$1" | awk '{printf "%.2f", $1/1e9}'; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -m); $(date -u +%F)"
"$BIN/mkckpt" --preset 4b --out "$W/src" 2>/dev/null
sync
read -r cp_s cp_kb < <(timed cp cp -r "$W/src" "$W/src-copy")
rm -rf "$W/src-copy"
read -r m_s m_kb < <(timed merge "$BIN/merge" --vit "$W/src/vit" --llm "$W/src/llm" --out "$W/hf")
read -r h_s h_kb < <(timed hf2mcore "$BIN/hf2mcore" "$W/hf" "$W/mc" --tp "$TP" --pp "$PP")
read -r b_s b_kb < <(timed mcore2hf "$BIN/mcore2hf" "$W/mc" "$W/back")
cmp -s <(cat "$W"/hf/model-*.safetensors) <(cat "$W"/back/model-*.safetensors) && same=yes || same=NO

printf '\n%-34s %10s %10s %12s %14s\n' "step (4B, full depth)" "input GB" "output GB" "seconds" "peak RSS GB"
printf '%-34s %10s %10s %12s %14s\n' "peer: cp -r of the source (I/O)" "$(gb "$W/src")" "$(gb "$W/src")" "$cp_s" "$(awk "BEGIN{printf \"%.2f\", $cp_kb/1048576}")"
printf '%-34s %10s %10s %12s %14s\n' "merge (MLCD+Qwen3 -> HF bf16)" "$(gb "$W/src")" "$(gb "$W/hf")" "$m_s" "$(awk "BEGIN{printf \"%.2f\", $m_kb/1048576}")"
printf '%-34s %10s %10s %12s %14s\n' "hf2mcore (TP$TP x PP$PP)" "$(gb "$W/hf")" "$(gb "$W/mc")" "$h_s" "$(awk "BEGIN{printf \"%.2f\", $h_kb/1048576}")"
printf '%-34s %10s %10s %12s %14s\n' "mcore2hf" "$(gb "$W/mc")" "$(gb "$W/back")" "$b_s" "$(awk "BEGIN{printf \"%.2f\", $b_kb/1048576}")"
echo "largest tensor group: embed_tokens / lm_head 151936 x 2560 bf16 = 0.78 GB; round trip bit-identical: $same"
