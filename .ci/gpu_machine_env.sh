#!/usr/bin/env bash
# The GPU machine's environment, on this CPU: Python 3.12 (where there is one) with torch 2.11,
# torchvision 0.26 and the few packages that machine has (no openTSNE, no umap-learn), picmap
# imported from src/ as the GPU check does there. Runs the GPU check's dry run in it: an import,
# training steps and the benchmarks' code paths under that torch, so that what would fail on
# the GPU machine fails here first. The data comes from the prepare step, run with the
# caller's Python (which has picmap installed and dataset-fashion-mnist).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.ci/venv-gpu-machine
base_python=python3
for candidate in python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3; do
  if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
    base_python="$candidate"
    break
  fi
done
echo "GPU machine environment: $("$base_python" --version), torch 2.11"
rm -rf "$venv"
"$base_python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  "torch==2.11.0" "torchvision==0.26.0" safetensors click tqdm scikit-learn matplotlib pillow

bash benchmarks/gpu_check.sh --prepare
OUT="$(mktemp -d)" PYTHON="$venv/bin/python" bash benchmarks/gpu_check.sh --dry-run
rm -rf "$venv"
