#!/usr/bin/env bash
# local-cluster.sh start DIR | stop DIR: a real single-node Slurm (munge, slurmctld, slurmd) whose
# config, state, spool, pid and log files all live under DIR (spec/distributed.md §5), for tests and for
# trying the sbatch scripts on one machine. Needs root and Debian's munge + slurm-wlm (make deps).
# After `start`, use it with: export SLURM_CONF=DIR/slurm.conf
set -euo pipefail
cmd=${1:?usage: local-cluster.sh start|stop DIR} dir=${2:?usage: local-cluster.sh start|stop DIR}
dir=$(mkdir -p "$dir" && cd "$dir" && pwd)
host=$(hostname -s)

stop() {
    local m="" pids
    [ -s "$dir/munge.dir" ] && m=$(cat "$dir/munge.dir")
    pids="$dir/slurmd.pid $dir/slurmctld.pid ${m:+$m/munged.pid}"
    for f in $pids; do [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
    sleep 0.5
    for f in $pids; do [ -s "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; done
}

if [ "$cmd" = stop ]; then
    stop
    [ -s "$dir/munge.dir" ] && rm -rf "$(cat "$dir/munge.dir")" "$dir/munge.dir"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "local-cluster.sh: needs root (slurmd runs jobs as their users)" >&2; exit 2; }
for b in munged slurmctld slurmd srun; do
    command -v "$b" >/dev/null || [ -x "/usr/sbin/$b" ] || { echo "local-cluster.sh: $b not installed (make deps)" >&2; exit 2; }
done
mkdir -p "$dir/state" "$dir/spool" "$dir/log"
# munged runs as the munge user, which must reach its files: they live in their own directory under
# /tmp (DIR may sit below directories only root can enter, as test scratch directories do)
if [ ! -s "$dir/munge.dir" ]; then mktemp -d /tmp/llava-munge.XXXXXX > "$dir/munge.dir"; fi
munge=$(cat "$dir/munge.dir")
chmod 0755 "$munge"
chown munge:munge "$munge"
if [ ! -s "$munge/munge.key" ]; then
    dd if=/dev/urandom bs=1024 count=1 of="$munge/munge.key" status=none
    chown munge:munge "$munge/munge.key"
    chmod 0400 "$munge/munge.key"
fi
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) * 8 / 10 ))
cat > "$dir/slurm.conf" <<CONF
ClusterName=local
SlurmctldHost=$host
AuthType=auth/munge
AuthInfo=socket=$munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=$(( 20000 + RANDOM % 20000 ))
SlurmdPort=$(( 40000 + RANDOM % 20000 ))
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=pmi2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
stop
runuser -u munge -- /usr/sbin/munged --force --socket="$munge/munge.socket" --key-file="$munge/munge.key" \
    --pid-file="$munge/munged.pid" --log-file="$munge/munged.log" --seed-file="$munge/munge.seed"
export SLURM_CONF=$dir/slurm.conf
/usr/sbin/slurmctld -c -i -f "$dir/slurm.conf"
/usr/sbin/slurmd -f "$dir/slurm.conf"
for i in $(seq 100); do
    if sinfo -h -o %T 2>/dev/null | grep -q idle; then echo "local-cluster.sh: $host idle, SLURM_CONF=$dir/slurm.conf"; exit 0; fi
    sleep 0.2
done
echo "local-cluster.sh: the node did not come up; logs in $dir/log" >&2
exit 1
