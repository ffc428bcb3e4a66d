#!/usr/bin/env bash
# A SLURM cluster of NODES nodes on this machine for the tests (Debian's slurm-wlm and munge, as
# root). Nodes n1 … nN, each one slurmd of its own (`slurmd -N nK`, which Debian's build allows),
# on this host's address and a port of its own, with its own spool and TmpFS; each node offers
# all of this machine's cores.
#   bash tests/slurm/cluster.sh start DIR [NODES]   writes DIR/slurm.conf, starts munged,
#                                                   slurmctld and the slurmds (default 1 node)
#   bash tests/slurm/cluster.sh stop DIR            stops the daemons it started (pids in DIR)
# Clients find the cluster through SLURM_CONF=DIR/slurm.conf.
set -euo pipefail
cmd=$1 dir=$(realpath -m "$2") nodes=${3:-1}

stop() {
  local f p
  # What a test that failed may have left of its jobs: the batch scripts run from our spool,
  # with srun and the ranks below them.
  for p in $(pgrep -f "$dir/spool/" || true); do
    pkill -KILL -P "$p" 2>/dev/null || true
    kill -KILL "$p" 2>/dev/null || true
  done
  for f in "$dir"/slurmd.*.pid "$dir"/slurmctld.pid "$dir"/munged.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  sleep 1
  for f in "$dir"/slurmd.*.pid "$dir"/slurmctld.pid "$dir"/munged.pid; do
    [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
}

if [ "$cmd" = stop ]; then stop; exit 0; fi
[ "$cmd" = start ] || { echo "usage: $0 start DIR [NODES] | stop DIR" >&2; exit 2; }
[[ $nodes =~ ^[1-9]$ ]] || { echo "NODES must be 1 to 9, not $nodes" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "the SLURM test cluster needs root" >&2; exit 2; }
mkdir -p "$dir"/{state,munge,log}
for k in $(seq "$nodes"); do mkdir -p "$dir/spool/n$k" "$dir/tmp/n$k"; done
host=$(hostname -s)
# Ports of our own, so that two test runs on one machine (a developer's and CI's) do not meet.
port=${SLURM_TEST_PORT:-$((20000 + $$ % 20000))}
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))

# munge: a key of our own, a socket of our own, run as the munge user as it insists.
chown munge: "$dir/munge"
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chown munge: "$dir/munge/munge.key"; chmod 400 "$dir/munge/munge.key"
su -s /bin/sh munge -c "munged --key-file=$dir/munge/munge.key --socket=$dir/munge/socket \
  --pid-file=$dir/munge/munged.pid --log-file=$dir/munge/munged.log --seed-file=$dir/munge/seed"
cp "$dir/munge/munged.pid" "$dir/munged.pid"

cat >"$dir/slurm.conf" <<CONF
ClusterName=tsimcne-test
SlurmctldHost=$host
SlurmUser=root
SlurmctldPort=$port
AuthType=auth/munge
# Credentials expire after 10 s, not 120: a requeued job may start again that much sooner.
AuthInfo=socket=$dir/munge/socket,cred_expire=10
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.%n.log
# A TmpFS per node: the step daemons of two nodes would otherwise meet in PMIx's folder there.
TmpFS=$dir/tmp/%n
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SchedulerParameters=defer_batch
JobRequeue=1
KillWait=10
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
NodeName=n[1-$nodes] NodeHostname=$host NodeAddr=127.0.0.1 Port=$((port + 1))-$((port + nodes)) CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=test Nodes=n[1-$nodes] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
export SLURM_CONF=$dir/slurm.conf
slurmctld -f "$dir/slurm.conf"
for k in $(seq "$nodes"); do slurmd -f "$dir/slurm.conf" -N "n$k"; done
for _ in $(seq 60); do
  if [ "$(sinfo -h -N -o %t 2>/dev/null | grep -cE '^(idle|mix|alloc)')" -eq "$nodes" ]; then
    echo "slurm: $nodes node(s) up on $host"; exit 0
  fi
  sleep 0.5
done
echo "slurm did not come up; logs in $dir/log" >&2
tail -5 "$dir"/log/*.log >&2
stop
exit 1
