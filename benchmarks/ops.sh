#!/usr/bin/env bash
# ATen operators per training step outside the network, before and after a change, counted by
# benchmarks/opcount.cpp (a RecordFunction callback, preloaded; top-level operators only, on
# every thread; a backward node counts as one). One rank, batch 64, no epoch end inside the
# measured steps; the tiny CNN (21 trained tensors) and ResNet-18 (62).
#   after:  tsimcne-dist with phase_timing logs each step's operators outside and inside the
#           network (forward, and the backward nodes); the median over steps 2.. is printed.
#   before: a commit's binary (BEFORE, default ab6eee9: the step before the flat buffers) cannot
#           split its count, so its operators per step are (total after K2 steps − total after
#           K1 steps) / (K2 − K1), less the network's operators measured above (the network
#           code is the same).
#   bash benchmarks/ops.sh          (run launch/setup.sh first; about 4 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
before=${BEFORE:-ab6eee9}
data=${DATA:-/usr/share/datasets/fashion-mnist}
out=benchmarks/out/ops; rm -rf "$out"; mkdir -p "$out"
lib=$(readlink -f .venv/libtorch)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
g++ -O2 -shared -fPIC -std=c++17 -I"$lib/include" -I"$lib/include/torch/csrc/api/include" \
  benchmarks/opcount.cpp -L"$lib/lib" -ltorch_cpu -lc10 -Wl,-rpath,"$lib/lib" -o "$out/libopcount.so"

# The commit's binary, built in the same target folder (its dependencies are the same), then
# the working tree's again (touched, so cargo relinks it).
git worktree add -f --detach "$out/before-src" "$before" >/dev/null 2>&1
cargo build --release --quiet --manifest-path "$out/before-src/Cargo.toml" --target-dir target
cp target/release/tsimcne-dist "$out/before-bin"
git worktree remove --force "$out/before-src"
touch src/main.rs && cargo build --release --quiet
cp target/release/tsimcne-dist "$out/after-bin"

sets=(--set batch_size=64 --set train_limit=1024 --set threads=2)
run() {  # binary, steps, run folder, extra --set flags
  local bin=$1 steps=$2 dir=$3; shift 3
  TSIMCNE_OPS_REPORT="$dir.ops" LD_PRELOAD="$PWD/$out/libopcount.so" "$bin" train \
    --config configs/large-batch.toml --data "$data" --out "$dir" "${sets[@]}" --set max_steps="$steps" "$@" 2>/dev/null
}
echo "| network | operators per step outside the network, before ($before) | after | inside the network (forward + backward nodes) |"
echo "| --- | --- | --- | --- |"
for net in tiny resnet18; do
  run "$out/after-bin" 6 "$out/$net-after" --set model.backbone=$net --set phase_timing=true
  run "$out/before-bin" 2 "$out/$net-before-2" --set model.backbone=$net
  run "$out/before-bin" 6 "$out/$net-before-6" --set model.backbone=$net
  .venv/bin/python - "$out" "$net" <<'PY'
import json, statistics, sys
out, net = sys.argv[1:]
rows = [json.loads(l) for l in open(f"{out}/{net}-after/train-log.jsonl")][1:]
outside = statistics.median(r["ops_outside_network"] for r in rows)
network = statistics.median(r["ops_network"] for r in rows)
total = lambda k: int(open(f"{out}/{net}-before-{k}.ops").read())
before = (total(6) - total(2)) / 4 - network
print(f"| {net} | {before:.0f} | {outside:.0f} | {network:.0f} |")
PY
done
