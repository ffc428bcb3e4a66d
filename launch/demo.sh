#!/usr/bin/env bash
# The demo: t-SimCNE on 20,000 Fashion-MNIST images (Debian's dataset-fashion-mnist) with two
# CPU ranks under mpirun, configs/cpu.toml (the pixel MLP), about three minutes on
# 2 cores. Prints the map's kNN accuracy (of all 70,000 images' map, scored on the test split) and
# writes demo-run/map.png. Run launch/setup.sh first. Running it again resumes, then re-reports.
#   bash launch/demo.sh [extra tsimcne-dist train flags, e.g. --set epochs=[2,1,1]]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${DATA:-/usr/share/datasets/fashion-mnist}
out=${OUT:-demo-run}
cargo build --release --quiet
bash launch/local.sh --cpu 2 -- train --config configs/cpu.toml --data "$data" --out "$out" "$@"
python3 - "$out/metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"kNN accuracy (k={m['knn_k']}, {m['protocol']}): {100 * m['knn_accuracy']:.1f} %")
PY
echo "map: $out/map.png"
