#!/usr/bin/env bash
# Installs what the Python benchmarks need into .venv, which launch/setup.sh made with torch
# 2.11.0 in it: torchvision, Lightning, scikit-learn, SciPy, matplotlib (plots), the tsimcne package the benchmarks
# compare against, and openTSNE. torch is pinned on the same pip command line so that pip
# cannot replace the libtorch tsimcne-dist is built against. Installs nothing twice.
#   bash launch/setup.sh && bash benchmarks/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  echo "benchmarks/setup.sh: .venv is missing; run bash launch/setup.sh first" >&2
  exit 1
fi
if .venv/bin/python - <<'PY' 2>/dev/null
import importlib.metadata as md
import sys

pinned = {"torch": "2.11.0", "torchvision": "0.26.0", "tsimcne": "0.4.24"}
if any(md.version(name).split("+")[0] != v for name, v in pinned.items()):
    sys.exit(1)
for name in ("lightning", "scikit-learn", "scipy", "openTSNE", "matplotlib"):
    md.version(name)  # raises when it is not installed
PY
then
  echo "benchmarks/setup.sh: already installed"
else
  echo "benchmarks/setup.sh: installing the benchmark packages into .venv"
  .venv/bin/pip install -q torch==2.11.0 torchvision==0.26.0 lightning scikit-learn scipy \
    tsimcne==0.4.24 opentsne matplotlib
fi
