#!/usr/bin/env bash
# One machine, one rank per GPU or N CPU ranks, under mpirun.
#   bash launch/local.sh --gpus 8 -- train --config configs/paper-cifar10.toml --data D --out O
#   bash launch/local.sh --cpu 2  -- train --config configs/cpu.toml --data D --out O
#   bash launch/local.sh --cpu 2 --dry-run -- train ...     prints the command, runs nothing
# Exit code: the run's, and 75 whenever the run stopped on request with a checkpoint.
# GPU ranks: rank i takes the node's GPU i (tsimcne-dist picks it by its node-local rank), NCCL
# reports warnings only. CPU ranks: the machine's cores split evenly between the ranks.
# TSIMCNE_BIN overrides the binary (default: target/release/tsimcne-dist).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: $0 (--gpus N | --cpu N) [--dry-run] -- tsimcne-dist arguments" >&2; exit 2; }
mode= ranks= dry=0
while (($#)); do
  case $1 in
    --gpus|--cpu) mode=${1#--}; ranks=${2:-}; shift 2 || usage ;;
    --dry-run) dry=1; shift ;;
    --) shift; break ;;
    *) usage ;;
  esac
done
[[ -n $mode && $ranks =~ ^[1-9][0-9]*$ && $# -ge 1 ]] || usage
sub=$1; shift  # the subcommand; our settings go right after it, so the caller's --set wins

bin=${TSIMCNE_BIN:-target/release/tsimcne-dist}
cores=${CORES:-$(nproc)}
cmd=(mpirun -n "$ranks" --bind-to none)
[ "$(id -u)" -ne 0 ] || cmd+=(--allow-run-as-root)
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
