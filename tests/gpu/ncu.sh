#!/usr/bin/env bash
# tests/gpu/ncu.sh: Nsight Compute on the attention kernels (the largest cost left: 41% of the slice's step, 65%
# of the tower's), to say where their cycles go before the next kernel is written: per kernel its duration, SM
# and memory throughput, tensor-pipe use, occupancy, registers, and the warp stall breakdown.
#   usage: tests/gpu/ncu.sh OPS_CHECK OUTDIR   (tests/gpu/run.sh calls it with NCU=1; LLAVA_FLASH picks versions)
# Profiles `OPS_CHECK --attention` (one forward and one backward at the slice's shape, causal T 8192, 32q/8kv
# heads of 128, and at the tower's, bidirectional T 5185, 16 heads of 64). The full report goes to
# OUTDIR/ncu_attention.txt; a summary is printed. Exits 0 with a line saying why when ncu is missing or not allowed
# to read the counters (ERR_NVGPUCTRPERM in a container): the profile is a diagnostic, not a check.
set -uo pipefail
ops=${1:?usage: ncu.sh OPS_CHECK OUTDIR}
out=${2:?usage: ncu.sh OPS_CHECK OUTDIR}
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [ -z "$NCU" ]; then
    echo "ncu: not installed on this machine"
    exit 0
fi
report=$out/ncu_attention.txt
# the kernels: flash_* (every version's forward, dK/dV and dQ) and attn_bwd_d (the backward's row dot products)
timeout "${NCU_TIMEOUT:-150}" "$NCU" --kernel-name 'regex:flash|attn_bwd_d' \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section InstructionStats \
    "$ops" --attention > "$report" 2>&1
rc=$?
if grep -q 'ERR_NVGPUCTRPERM' "$report"; then
    echo "ncu: no permission to read the GPU's performance counters here (ERR_NVGPUCTRPERM)"
    exit 0
fi
[ $rc -eq 0 ] || echo "ncu: exit $rc (the report so far is in $report)"
# per kernel: the lines that say where the time goes
awk '
/^  [a-z_0-9]+.*\(.*\)x\(.*\)/ { print "ncu: " substr($0, 3, 150) }
/Duration|Compute \(SM\) Throughput|Memory Throughput|Registers Per Thread|Achieved Occupancy|Warp Cycles Per Issued Instruction|Issue Slots Busy|Executed Ipc Active/ {
    gsub(/  +/, " "); print "ncu:   " $0 }
/One or More Eligible|No Eligible/ { gsub(/  +/, " "); print "ncu:   " $0 }
/stalled|Stall/ && /cycles/ { line = $0; gsub(/  +/, " ", line); print "ncu:   " substr(line, 1, 240) }
' "$report" | head -120
