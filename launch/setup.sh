#!/usr/bin/env bash
# Installs what tsimcne-dist needs on a fresh Debian/Ubuntu machine, and nothing twice:
#   - OpenMPI and libclang (the MPI bindings are generated against mpi.h at build time),
#   - Debian's Fashion-MNIST (the demo's data) and DejaVu Sans (text in map.png),
#   - slurm-wlm and munge (the SLURM tests run a cluster of one or two nodes on this machine),
#   - iproute2 (ip and tc: the emulated-link test and benchmark put ranks in network namespaces),
#   - libtorch 2.11.0, from PyPI's torch wheel, into .venv (tch 0.24 needs exactly 2.11.0);
#     .venv/libtorch points at it, and .cargo/config.toml points the build there.
# Set LIBTORCH to use a libtorch 2.11.0 of your own instead (a cluster module, say).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(libopenmpi-dev openmpi-bin libclang-dev dataset-fashion-mnist fonts-dejavu-core
          slurm-wlm munge iproute2)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  as_root=()
  [ "$(id -u)" -eq 0 ] || as_root=(sudo)
  echo "setup: installing ${missing[*]}"
  "${as_root[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

torch_version=2.11.0
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$torch_version')" 2>/dev/null; then
  echo "setup: installing torch==$torch_version into .venv (about 4.6 GB)"
  .venv/bin/pip install -q "torch==$torch_version"
fi
ln -sfn "$(.venv/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')" .venv/libtorch
echo "setup: done (libtorch: $(readlink .venv/libtorch))"
