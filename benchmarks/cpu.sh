#!/usr/bin/env bash
# Side-by-side CPU figures for benchmarks/RESULTS.md, all in one run on this machine:
#   throughput  images/s (steps after the first) of tsimcne-dist (1 rank × 2 threads, 2 ranks × 1 thread), a plain
#               PyTorch script of the same network, batch and augmentations
#               (benchmarks/torch_reference.py) and the PyPI tsimcne package
#               (benchmarks/reference_tsimcne.py), for the tiny CNN and for ResNet-18;
#   quality     Fashion-MNIST, configs/cpu.toml (10,000 training images): kNN accuracy and time
#               of tsimcne-dist on 2 ranks and of the PyTorch script, with t-SNE of the pixels.
# Run launch/setup.sh and benchmarks/setup.sh first; nothing else should run meanwhile.
#   bash benchmarks/cpu.sh [throughput|quality|all]      (default: all; about 30 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
data=${DATA:-/usr/share/datasets/fashion-mnist}
out=benchmarks/out; mkdir -p "$out"
py=.venv/bin/python
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONDONTWRITEBYTECODE=1
cargo build --release --quiet
bin=target/release/tsimcne-dist
# t-SimCNE's own pairs (two views of one image) in both programs: the PyTorch script has no
# neighbour positives, which configs/cpu.toml turns on.
pairs=(--set augment.neighbours=0)

# tsimcne-dist's images/s over the steps after the first, from its step log, as JSON.
dist_json() {  # name, run folder, ranks, threads
  "$py" - "$@" <<'PY'
import json, sys, tomllib
name, run, ranks, threads = sys.argv[1:]
rows = [json.loads(l) for l in open(f"{run}/train-log.jsonl")][1:]  # the first step warms up
batch = tomllib.load(open(f"{run}/config.toml", "rb"))["batch_size"]
seconds = sum(batch / r["images_per_s"] for r in rows)
print(json.dumps({"program": name, "ranks": int(ranks), "threads": int(threads),
                  "images_per_s": batch * len(rows) / seconds, "steps": len(rows) + 1}))
PY
}

# One round of the four programs on the same network, batch and images.
throughput_round() {  # label, backbone, batch, steps, round
  local label=$1 backbone=$2 batch=$3 steps=$4 round=$5
  local sets=(--set model.backbone="$backbone" --set batch_size="$batch" --set train_limit=$((batch * steps)) "${pairs[@]}")
  local run="$out/run-$label"
  rm -rf "$run-r1" "$run-r2"
  bash launch/local.sh --cpu 1 -- train --config configs/cpu.toml --data "$data" --out "$run-r1" \
    "${sets[@]}" --set threads=2 --set max_steps="$steps" 2>/dev/null
  dist_json "tsimcne-dist" "$run-r1" 1 2 >"$out/$label-dist-1x2-$round.json"
  bash launch/local.sh --cpu 2 -- train --config configs/cpu.toml --data "$data" --out "$run-r2" \
    "${sets[@]}" --set max_steps="$steps" 2>/dev/null
  dist_json "tsimcne-dist" "$run-r2" 2 1 >"$out/$label-dist-2x1-$round.json"
  "$py" benchmarks/torch_reference.py --config configs/cpu.toml --data "$data" "${sets[@]}" \
    --threads 2 --max-steps "$steps" --json "$out/$label-torch-$round.json" >/dev/null
  # The same script with the malloc settings tsimcne-dist makes for itself (src/main.rs).
  MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 "$py" benchmarks/torch_reference.py \
    --config configs/cpu.toml --data "$data" "${sets[@]}" --threads 2 --max-steps "$steps" \
    --json "$out/$label-torchmalloc-$round.json" >/dev/null
  "$py" benchmarks/reference_tsimcne.py --data "$data" --backbone "$backbone" --batch-size "$batch" \
    --images $((batch * steps)) --threads 2 --json "$out/$label-tsimcne-$round.json" >/dev/null 2>&1
}

# Rounds interleave the programs, so that a slow spell of this shared machine hits all of them;
# the table gives each program's median over the rounds, and the ratios of those medians.
throughput() {  # label, backbone, batch, steps, rounds
  local r
  for r in $(seq "$5"); do throughput_round "$1" "$2" "$3" "$4" "$r"; done
  "$py" - "$1" "$out" "$5" <<'PY'
import json, statistics, sys
label, out, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
def med(k):
    return statistics.median(json.load(open(f"{out}/{label}-{k}-{r}.json"))["images_per_s"] for r in range(1, rounds + 1))
r = {k: med(k) for k in ["dist-1x2", "dist-2x1", "torch", "torchmalloc", "tsimcne"]}
print(f"| {label} | {r['dist-1x2']:.0f} | {r['dist-2x1']:.0f} | {r['torch']:.0f} | {r['torchmalloc']:.0f} | {r['tsimcne']:.0f} "
      f"| {r['dist-1x2'] / r['torch']:.2f} | {r['dist-2x1'] / r['torch']:.2f} | {r['dist-1x2'] / r['torchmalloc']:.2f} "
      f"| {r['dist-1x2'] / r['tsimcne']:.2f} | {r['dist-2x1'] / r['dist-1x2']:.2f} |", flush=True)
PY
}

if [ "$what" = all ] || [ "$what" = throughput ]; then
  echo "| network, batch | tsimcne-dist 1×2 | tsimcne-dist 2×1 | PyTorch script | script, same malloc settings | tsimcne 0.4.24 | 1×2 ÷ script | 2×1 ÷ script | 1×2 ÷ script, same malloc | 1×2 ÷ tsimcne | 2×1 ÷ 1×2 |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  throughput tiny-512 tiny 512 16 5
  throughput resnet18-128 resnet18 128 4 3
fi

if [ "$what" = all ] || [ "$what" = quality ]; then
  rm -rf "$out/run-quality"
  start=$(date +%s%N)
  bash launch/local.sh --cpu 2 -- train --config configs/cpu.toml --data "$data" --out "$out/run-quality" "${pairs[@]}" 2>/dev/null
  dist_s=$(( ($(date +%s%N) - start) / 1000000 ))e-3
  "$py" benchmarks/torch_reference.py --config configs/cpu.toml --data "$data" "${pairs[@]}" --threads 2 --json "$out/quality-torch.json" >/dev/null
  "$py" benchmarks/pixel_tsne.py --data "$data" --threads 2 --json "$out/quality-tsne.json" >/dev/null
  "$py" - "$out" "$dist_s" <<'PY'
import json, sys
out, dist_s = sys.argv[1], float(sys.argv[2])
d = json.load(open(f"{out}/run-quality/metrics.json"))["knn_accuracy"]
t = json.load(open(f"{out}/quality-torch.json"))
s = json.load(open(f"{out}/quality-tsne.json"))
print("| program | kNN accuracy | seconds |\n| --- | --- | --- |")
print(f"| tsimcne-dist, 2 ranks × 1 thread | {100 * d:.1f} % | {dist_s:.0f} |")
print(f"| PyTorch script, 2 threads | {100 * t['knn_accuracy']:.1f} % | {t['total_seconds']:.0f} |")
print(f"| t-SNE of the pixels (openTSNE, 2 threads) | {100 * s['knn_accuracy']:.1f} % | {s['total_seconds']:.0f} |")
PY
fi
