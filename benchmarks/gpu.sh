#!/usr/bin/env bash
# The GPU check, one prepared call on a machine with a GPU (see benchmarks/gpu-prepare.sh):
#   1. single-GPU epoch time on CIFAR-sized data (50,000 random 32×32 colour images in CIFAR-10's
#      binary format), ResNet-18, global batch 512, f32 and bf16 autocast;
#   2. the NCCL path at world size 1 under mpirun (the collectives run even on one rank);
#   3. a short scaling sweep of the global batch at world size 1.
# Figures: each run's train-log.jsonl (images/s, data/compute/comm seconds) summarised into
# $OUT/gpu-summary.txt; copy them into benchmarks/RESULTS.md.
#   device call: carry .gpu, command: bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-out}; mkdir -p "$out"
torch_lib=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/torch/lib | head -1)
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
command -v mpirun >/dev/null || { for f in .gpu/debs/*.deb; do dpkg -x "$f" /; done; ldconfig; }
bin=$PWD/.gpu/tsimcne-dist
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu-summary.txt"

data=/tmp/cifar-random
if [ ! -f "$data/test_batch.bin" ]; then
  python3 - "$data" <<'PY'
import os, sys
d = sys.argv[1]; os.makedirs(d, exist_ok=True)
for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
    rec = bytearray(os.urandom(10000 * 3073))
    for r in range(10000):
        rec[r * 3073] %= 10
    open(os.path.join(d, name), "wb").write(rec)
PY
fi

summary() {  # name, run folder: median images/s and phase seconds over steps after the first 5
  python3 - "$1" "$2/train-log.jsonl" <<'PY' | tee -a "$out/gpu-summary.txt"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[2])][5:]
med = lambda k: statistics.median(r[k] for r in rows)
print(f"{sys.argv[1]}: {med('images_per_s'):.0f} images/s, data {med('data_s')*1e3:.1f} ms, "
      f"compute {med('compute_s')*1e3:.1f} ms, comm {med('comm_s')*1e3:.1f} ms per step ({len(rows)} steps)")
PY
}

run() {  # name, ranks, settings…
  local name=$1 ranks=$2; shift 2
  local sets=(); for s in "$@"; do sets+=(--set "$s"); done
  timeout 150 mpirun -n "$ranks" --bind-to none "$bin" train --config configs/paper-cifar10.toml \
    --data "$data" --out "/tmp/gpu-runs/$name" --set device=cuda "${sets[@]}" >"$out/$name.log" 2>&1
  echo "$name: exit $?" >>"$out/gpu-summary.txt"
  summary "$name" "/tmp/gpu-runs/$name"
}

# One epoch of 97 steps at batch 512 is the "epoch time": steps × median step time.
run f32-b512 1 batch_size=512 max_steps=60
run bf16-b512 1 batch_size=512 max_steps=60 precision=bf16
for b in 1024 2048 4096; do run bf16-b$b 1 batch_size=$b max_steps=30 precision=bf16; done
tail -n 3 "$out"/*.log >"$out/gpu-logs-tail.txt"; rm -f "$out"/*.log
