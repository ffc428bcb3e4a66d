#!/usr/bin/env bash
# Prepares .gpu/ for benchmarks/gpu.sh on a GPU machine that has torch 2.11 (CUDA) but no
# cargo and no package registry: the binary built here with --features cuda (debug info
# stripped, to fit the 64 MiB a device call carries) and OpenMPI's runtime as Debian packages.
#   bash benchmarks/gpu-prepare.sh      then carry .gpu (it is git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu/debs
cargo build --release --features cuda
objcopy --strip-debug target/release/tsimcne-dist .gpu/tsimcne-dist
(cd .gpu/debs && apt-get download openmpi-bin openmpi-common libopenmpi3 libevent-core-2.1-7 \
  libevent-pthreads-2.1-7 libfabric1 libhwloc15 libibverbs1 libnl-3-200 libnl-route-3-200 \
  libpmix2 libpsm-infinipath1 libpsm2-2 libucx0 librdmacm1 libltdl7 libnuma1 2>&1 | tail -1)
du -sh .gpu
