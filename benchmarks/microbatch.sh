#!/usr/bin/env bash
# Peak memory and speed of a step against the global batch, with and without micro-batches
# (`micro_batch`: images per forward pass; gradient caching, src/train/passes.rs). One rank,
# two threads, the tiny CNN on Fashion-MNIST, 4 steps per run (images/s over the steps after
# the first); peak memory is the process's maximum resident set (GNU time), which includes
# libtorch and the resident training images (about 0.6 GB before the first step).
#   bash benchmarks/microbatch.sh [batches] [micro]     (default: "512 2048 8192" and 256)
set -euo pipefail
cd "$(dirname "$0")/.."
batches=${1:-512 2048 8192}
micro=${2:-256}
data=${DATA:-/usr/share/datasets/fashion-mnist}
out=benchmarks/out/microbatch; rm -rf "$out"; mkdir -p "$out"
cargo build --release --quiet
echo "| global batch | micro_batch | peak memory (GB) | images/s |"
echo "| --- | --- | --- | --- |"
for b in $batches; do
  for m in 0 "$micro"; do
    dir=$out/b$b-m$m
    /usr/bin/time -f '%M' -o "$dir.rss" target/release/tsimcne-dist train --config configs/cpu.toml \
      --data "$data" --out "$dir" --set batch_size="$b" --set train_limit=$((4 * b)) \
      --set threads=2 --set max_steps=4 --set micro_batch="$m" --set model.backbone=tiny \
      --set augment.neighbours=0 2>/dev/null
    .venv/bin/python - "$dir" "$b" "$m" <<'PY'
import json, sys
d, b, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = [json.loads(l) for l in open(f"{d}/train-log.jsonl")][1:]
ips = b * len(rows) / sum(b / r["images_per_s"] for r in rows)
kb = int(open(f"{d}.rss").read().split()[-1])
print(f"| {b} | {m or 'off'} | {kb / 1e6:.2f} | {ips:.0f} |")
PY
  done
done
