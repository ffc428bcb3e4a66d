#!/usr/bin/env bash
# The GPU check, in one call on a bare GPU machine: python3 with torch preinstalled, no package
# registry, only the source tree and the files sent with it. It installs nothing and imports
# picmap from src/.
#
#   bash benchmarks/gpu_check.sh --prepare   here, once: the data it needs, into the git-ignored
#                                            benchmarks/gpu_data/ (needs dataset-fashion-mnist)
#   bash benchmarks/gpu_check.sh             on the GPU machine, with benchmarks/gpu_data carried
#                                            along (the device tool's carry); about 5 minutes on
#                                            an H100/H200, each step capped so it ends within 6
#   bash benchmarks/gpu_check.sh --dry-run   the same steps on this CPU at toy sizes (CI runs it
#                                            under the GPU machine's torch 2.11)
#
# Prints the throughput table (picmap, picmap + torch.compile, picmap's data-parallel path and a
# conventional DataLoader pipeline, one run: images/s, peak memory, model FLOP utilisation and
# the picmap/conventional ratio), then the map quality (2-D kNN) of bf16 against fp32 training.
# The full log goes to $OUT/gpu_check.log when $OUT is set, else benchmarks/gpu_data/. Exits
# non-zero if any step failed (after running the others).
set -uo pipefail
cd "$(dirname "$0")/.."

mode=run
case "${1:-}" in
  "") ;;
  --prepare) mode=prepare ;;
  --dry-run) mode=dry ;;
  *) echo "gpu_check.sh: unknown option '$1' (use --prepare or --dry-run)" >&2; exit 2 ;;
esac
python="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
data_dir=benchmarks/gpu_data
data="$data_dir/fashion_mnist_10k.npz"

if [ "$mode" = prepare ]; then
  mkdir -p "$data_dir"
  exec "$python" benchmarks/quality.py --export "$data"
fi
if [ ! -f "$data" ]; then
  echo "gpu_check.sh: $data is missing; run 'bash benchmarks/gpu_check.sh --prepare' first" >&2
  exit 1
fi
log_dir="${OUT:-$data_dir}"
mkdir -p "$log_dir"
log="$log_dir/gpu_check.log"
: >"$log"

failed=0
# step SECONDS LINES TITLE COMMAND...: run it with a time cap, log everything, show the last LINES.
step() {
  local cap=$1 lines=$2 title=$3 out
  shift 3
  echo "== $title" | tee -a "$log"
  out=$(mktemp)
  timeout "$cap" "$@" >"$out" 2>&1
  local rc=$?
  cat "$out" >>"$log"
  if [ "$rc" = 0 ]; then
    tail -n "$lines" "$out"
  else
    failed=1
    echo "!! failed (exit $rc$([ "$rc" = 124 ] && echo ", over ${cap}s")); its last lines:"
    tail -n 25 "$out"
  fi
  rm -f "$out"
}

if [ "$mode" = dry ]; then
  device=cpu
  throughput=(--small --device cpu --ddp)
  quality=(--data "$data" --subset 600 --backbone small --epochs 1,1,1 --batch-size 64)
else
  device=cuda
  throughput=(--epochs 1 --workers 12 --compile --ddp)
  quality=(--data "$data" --backbone resnet18 --epochs 20,2,8 --batch-size 512)
fi

step 30 20 "machine" "$python" -c "
import sys, torch, picmap
print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(p.name, f'{p.total_memory / 2**30:.0f} GiB', torch.cuda.device_count(), 'device(s)')
elif '$device' == 'cuda':
    sys.exit('no CUDA device visible to torch')
"
step 150 12 "throughput: picmap against a conventional pipeline, CIFAR-shaped data, same run" \
  "$python" benchmarks/throughput.py "${throughput[@]}"
step 90 12 "quality: bf16 autocast, picmap and neighbours recipes (10k Fashion-MNIST)" \
  "$python" benchmarks/quality.py "${quality[@]}" --device "$device" \
  --recipes picmap,neighbours --no-baselines --quiet
step 90 10 "quality: fp32 (no autocast, no TF32), picmap recipe" \
  "$python" benchmarks/quality.py "${quality[@]}" --device "$device" \
  --recipes picmap --no-baselines --fp32 --quiet
echo "full log: $log"
exit "$failed"
