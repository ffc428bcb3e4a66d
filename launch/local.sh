#!/usr/bin/env bash
# One rank per GPU or N CPU ranks under mpirun, on this machine or on the hosts of a cluster
# without SLURM (reached by ssh, the same paths on every host).
#   bash launch/local.sh --gpus 8 -- train --config configs/paper-cifar10.toml --data D --out O
#   bash launch/local.sh --cpu 2  -- train --config configs/cpu.toml --data D --out O
#   bash launch/local.sh --gpus 8 --hosts gpu1,gpu2 -- train ...   8 ranks on each of 2 hosts
#   bash launch/local.sh --gpus 8 --hostfile FILE -- train ...     hosts one per line (# comments)
#   bash launch/local.sh --cpu 2 --dry-run -- train ...     prints the command, runs nothing
# Exit code: the run's, and 75 whenever the run stopped on request with a checkpoint.
# GPU ranks: rank i of a host takes its GPU i (tsimcne-dist picks it by its node-local rank),
# NCCL reports warnings only. CPU ranks: the machine's cores split evenly between the ranks.
# With hosts, N is the ranks on each host. Every NCCL_* variable set here (NCCL_SOCKET_IFNAME,
# NCCL_IB_HCA, ...) is passed on to every rank. TSIMCNE_BIN overrides the binary (default:
# target/release/tsimcne-dist); MPI's own settings pass as OMPI_MCA_* variables (e.g.
# OMPI_MCA_plm_rsh_agent for another remote shell than ssh).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: $0 (--gpus N | --cpu N) [--hosts H1,H2,... | --hostfile FILE] [--dry-run] -- tsimcne-dist arguments" >&2
  exit 2
}
mode= ranks= dry=0 hosts=
while (($#)); do
  case $1 in
    --gpus|--cpu) mode=${1#--}; ranks=${2:-}; shift 2 || usage ;;
    --hosts) hosts=${2:-}; shift 2 || usage ;;
    --hostfile)
      [ -r "${2:-}" ] || { echo "$0: --hostfile ${2:-}: no such readable file; give one host name per line" >&2; exit 2; }
      hosts=$(sed -e 's/#.*//' -e 's/[[:space:]].*//' "$2" | grep -v '^$' | paste -sd, -)
      [ -n "$hosts" ] || { echo "$0: --hostfile $2 names no host; give one host name per line" >&2; exit 2; }
      shift 2 ;;
    --dry-run) dry=1; shift ;;
    --) shift; break ;;
    *) usage ;;
  esac
done
[[ -n $mode && $ranks =~ ^[1-9][0-9]*$ && $# -ge 1 ]] || usage
[[ -z $hosts || $hosts =~ ^[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*$ ]] || {
  echo "$0: --hosts $hosts: give host names separated by commas (no slots: N is per host)" >&2; exit 2; }
sub=$1; shift  # the subcommand; our settings go right after it, so the caller's --set wins

bin=${TSIMCNE_BIN:-target/release/tsimcne-dist}
cores=${CORES:-$(nproc)}
if [ -n "$hosts" ]; then
  # N ranks on each host, in host order: ranks 0..N-1 on the first, and so on.
  IFS=, read -ra names <<<"$hosts"
  slots=$(printf "%s:$ranks," "${names[@]}")
  cmd=(mpirun -n $(( ranks * ${#names[@]} )) --host "${slots%,}" --map-by "ppr:$ranks:node" --bind-to none)
else
  cmd=(mpirun -n "$ranks" --bind-to none)
fi
[ "$(id -u)" -ne 0 ] || cmd+=(--allow-run-as-root)
for v in $(compgen -e); do [[ $v != NCCL_* || $v == NCCL_DEBUG ]] || cmd+=(-x "$v"); done
if [ "$mode" = gpus ]; then
  cmd+=(-x NCCL_DEBUG="${NCCL_DEBUG:-WARN}" "$bin" "$sub" --set device=cuda "$@")
else
  threads=$(( cores / ranks )); (( threads >= 1 )) || threads=1
  (( ranks <= cores )) || cmd+=(--oversubscribe)
  cmd+=(-x OMP_NUM_THREADS="$threads" "$bin" "$sub" --set device=cpu --set threads="$threads" "$@")
fi

if ((dry)); then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
# A run stopped on request exits 75, but mpirun may report 1 for it: the run's STOPPED marker
# in its --out folder says what happened (cleared here first, so it is this run's).
out=; prev=
for a in "$@"; do [ "$prev" = --out ] && out=$a; prev=$a; done
[ -z "$out" ] || rm -f "$out/STOPPED"
# mpirun runs in a process group of its own (job control), so a terminal's Ctrl-C reaches this
# script alone. The first Ctrl-C (or SIGTERM) asks the ranks to stop through mpirun with
# SIGUSR1: mpirun forwards it and waits (a SIGINT or SIGTERM of its own it would pass on and
# kill the ranks 1 s later, perhaps before their checkpoint). A second one passes SIGTERM on.
set -m
"${cmd[@]}" &
pid=$! asked=0
trap 'if ((asked)); then kill -TERM "$pid"; else asked=1; kill -USR1 "$pid"; fi 2>/dev/null' INT TERM
rc=0
while true; do
  rc=0; wait "$pid" || rc=$?
  kill -0 "$pid" 2>/dev/null || break
done
if [ -n "$out" ] && [ -f "$out/STOPPED" ]; then exit 75; fi
exit "$rc"
