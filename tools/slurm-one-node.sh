#!/usr/bin/env bash
# A one-node Slurm cluster on this host, for tests/slurm.rs and for trying the job-array recipe
# of docs/eval.md: configures Debian's slurm-wlm + munge under DIR (munge key, slurm.conf naming
# this host's `hostname -s`, state/spool/log dirs, free ports), starts munged, slurmctld and
# slurmd as root and waits until `sinfo` shows the node idle. It installs nothing
# (`apt-get install slurm-wlm munge` does).
#
#   tools/slurm-one-node.sh start DIR   # prints `export SLURM_CONF=DIR/slurm.conf` on success
#   tools/slurm-one-node.sh stop DIR    # stops the three daemons started for DIR
#
# Exit 0 on success; 2 with one line "cannot start: WHY" on stderr when Slurm cannot run here
# (not root, packages missing, a daemon that does not come up): callers treat that as a skip.
set -uo pipefail

cmd=${1:-}
dir=${2:-}
if [[ -z "$cmd" || -z "$dir" ]]; then
  echo "usage: $0 start|stop DIR" >&2
  exit 1
fi

cannot() {
  echo "cannot start: $*" >&2
  [[ -d "$dir" ]] && stop_daemons
  exit 2
}

stop_daemons() {
  local f pid
  for f in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
    [[ -s "$f" ]] || continue
    pid=$(cat "$f")
    [[ "$pid" =~ ^[0-9]+$ ]] || continue
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  done
}

if [[ "$cmd" == stop ]]; then
  stop_daemons
  exit 0
fi
[[ "$cmd" == start ]] || { echo "usage: $0 start|stop DIR" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || cannot "slurmctld/slurmd must run as root here (uid $(id -u))"
for c in munged slurmctld slurmd sinfo sbatch scontrol; do
  command -v "$c" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$c" >/dev/null 2>&1 \
    || cannot "$c not found (apt-get install slurm-wlm munge)"
done
export PATH="$PATH:/usr/sbin:/sbin"

mkdir -p "$dir"/{munge,state,spool,log} || cannot "cannot create $dir"
dir=$(cd "$dir" && pwd)
# munged wants its socket directory searchable by all; the key itself is 0400.
chmod 755 "$dir/munge"

# A free TCP port on loopback (bash's /dev/tcp connects when something listens).
free_port() {
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  return 1
}
ctl_port=$(free_port) || cannot "no free port"
d_port=$(free_port) || cannot "no free port"
[[ "$ctl_port" != "$d_port" ]] || d_port=$((ctl_port + 1))

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)

# munge: a fresh key and its own socket, so nothing of the host's munge is used or touched.
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none || cannot "cannot write the munge key"
chmod 400 "$dir/munge/munge.key"
socket="$dir/munge/munge.socket"
munged --force --key-file="$dir/munge/munge.key" --socket="$socket" \
  --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed" \
  >"$dir/log/munged.out" 2>&1 || cannot "munged failed: $(tail -n 1 "$dir/log/munged.log" "$dir/log/munged.out" 2>/dev/null | grep -v '^==' | grep . | tail -n 1)"

cat >"$dir/slurm.conf" <<EOF
# One-node test cluster written by tools/slurm-one-node.sh.
ClusterName=perceptio-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctl_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=30
KillWait=5
Waittime=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
export SLURM_CONF="$dir/slurm.conf"

slurmctld -i >"$dir/log/slurmctld.out" 2>&1 || cannot "slurmctld failed: $(tail -n 2 "$dir/log/slurmctld.log" "$dir/log/slurmctld.out" 2>/dev/null | grep . | grep -v '^==' | tail -n 1)"
slurmd >"$dir/log/slurmd.out" 2>&1 || cannot "slurmd failed: $(tail -n 2 "$dir/log/slurmd.log" "$dir/log/slurmd.out" 2>/dev/null | grep . | grep -v '^==' | tail -n 1)"

state=""
for _ in $(seq 150); do
  state=$(sinfo -h -N -n "$host" -o %T 2>/dev/null | head -n 1)
  [[ "$state" == idle ]] && break
  sleep 0.2
done
if [[ "$state" != idle ]]; then
  cannot "the node did not become idle within 30 s (state: ${state:-none}; $(tail -n 1 "$dir/log/slurmd.log" 2>/dev/null))"
fi
echo "export SLURM_CONF=$dir/slurm.conf"
