#!/usr/bin/env bash
# Prepares the folder that benchmarks/gpu.sh needs on a bare GPU machine (torch 2.11 with CUDA in
# /opt/torch/.venv; no cargo, no package registry, no network, no MPI, no ssh):
#   tsimcne-dist     built here with --features cuda, debug info stripped (BIN=path: that binary);
#   debs/            OpenMPI's runtime as this machine's Debian packages: openmpi-bin, libopenmpi3,
#                    openmpi-common and every package owning a library that `ldd` of their ELF
#                    files (programs, libraries, MCA components) resolves to, less the C and C++
#                    runtime that any system running torch has; packages.txt lists them. gpu.sh
#                    unpacks them inside this folder, never into /.
#   mpi-hello        a small MPI program gpu.sh runs to choose how to launch;
#   fashion-mnist/   Debian's Fashion-MNIST (dataset-fashion-mnist), for the quality run.
# Everything must fit the 64 MiB a device call carries.
#   bash benchmarks/gpu-prepare.sh         then carry .gpu (git-ignored); command: bash benchmarks/gpu.sh
# GPU_DIR=dir writes that folder instead of .gpu (tests/gpu_script.rs uses a temporary one).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${GPU_DIR:-.gpu}
fashion=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
mkdir -p "$dir"
rm -rf "$dir/debs" "$dir/root" "$dir/nccl" "$dir/fashion-mnist"
mkdir -p "$dir/debs" "$dir/fashion-mnist"

if [ -n "${BIN:-}" ]; then
  bin=$BIN
else
  cargo build --release --features cuda
  bin=target/release/tsimcne-dist
  # rustc drops libtorch_cuda unless build.rs keeps it; without it torch sees no GPU.
  readelf -d "$bin" | grep -q 'libtorch_cuda' ||
    echo "gpu-prepare: warning: $bin does not link libtorch_cuda: it will see no GPU" >&2
fi
objcopy --strip-debug "$bin" "$dir/tsimcne-dist"

# The packages OpenMPI's runtime needs, from what its files link against (not from a hand
# list): start from the three OpenMPI packages, ldd every ELF file they install, find the
# packages owning the libraries, and repeat for those. Debian has merged /usr, so a library
# may be registered under /lib or /usr/lib: ask dpkg about both spellings.
base=" libc6 libgcc-s1 libstdc++6 zlib1g "
todo="openmpi-bin libopenmpi3 openmpi-common"
seen=" "
while [ -n "$todo" ]; do
  libs=()
  for p in $todo; do seen+="$p "; done
  while read -r f; do
    [ -f "$f" ] && [ ! -L "$f" ] && [ "$(head -c 4 "$f" | tr -d '\0')" = $'\x7fELF' ] || continue
    mapfile -t -O "${#libs[@]}" libs < <(ldd "$f" 2>/dev/null | awk '/=> \// {print $3}')
  done < <(dpkg -L $todo)
  paths=$(for l in "${libs[@]}"; do r=$(readlink -f "$l"); printf '%s\n' "$l" "$r" "${r#/usr}"; done | sort -u)
  owners=$(dpkg -S $paths 2>/dev/null | cut -d: -f1 | tr ', ' '\n\n' | sort -u || true)
  todo=""
  for o in $owners; do
    case "$seen$base" in *" $o "*) ;; *) todo+="$o " ;; esac
  done
done
packages=($seen)
printf '%s\n' "${packages[@]}" >"$dir/packages.txt"
echo "gpu-prepare: ${#packages[@]} packages: ${packages[*]}"

# The installed versions, which the closure above was computed from; any version if the
# archive no longer has them. apt-get needs its package lists: update them once if it fails.
pinned=()
for p in "${packages[@]}"; do pinned+=("$p=$(dpkg-query -W -f='${Version}' "$p")"); done
# (apt warns that its _apt user cannot write here; it downloads as root then, which is fine)
download() { (cd "$dir/debs" && apt-get download -q "$@" 2>&1 | { grep -v 'unsandboxed' || true; }) }
download "${pinned[@]}" || download "${packages[@]}" ||
  { apt-get update -q && download "${packages[@]}"; }
got=$(find "$dir/debs" -name '*.deb' | wc -l)
[ "$got" -eq "${#packages[@]}" ] || { echo "gpu-prepare: got $got of ${#packages[@]} packages" >&2; exit 1; }

# Small enough to show in full: every rank sums its number, so a wrong world shows.
cat >"$dir/mpi-hello.c" <<'C'
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
  int rank, size, sum, one = 1;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Allreduce(&one, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  printf("mpi-hello: rank %d of %d, all-reduce %d\n", rank, size, sum);
  MPI_Finalize();
  return sum == size ? 0 : 1;
}
C
mpicc -O2 -o "$dir/mpi-hello" "$dir/mpi-hello.c"

cp "$fashion"/*-ubyte.gz "$dir/fashion-mnist/"
[ "$(ls "$dir/fashion-mnist" | wc -l)" -eq 4 ] || { echo "gpu-prepare: $fashion lacks the 4 IDX files" >&2; exit 1; }

size=$(du -sb "$dir" | cut -f1)
echo "gpu-prepare: $dir holds $((size / 1024 / 1024)) MiB (a device call carries at most 64 MiB)"
[ "$size" -le $((64 * 1024 * 1024)) ] || { echo "gpu-prepare: $dir is too large to carry" >&2; exit 1; }
