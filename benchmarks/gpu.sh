#!/usr/bin/env bash
# The GPU check: ONE device call on a bare GPU machine (torch 2.11 + CUDA 13 in /opt/torch/.venv;
# no cargo, no network, no MPI, no ssh), with the folder benchmarks/gpu-prepare.sh made here:
#   device call: carry .gpu, command: bash benchmarks/gpu.sh, timeout_s 600
# Stages, each under `timeout` and all within GPU_SH_BUDGET seconds (default 540); a failed
# stage does not stop the later ones:
#   0. the machine: GPU, driver, CUDA, torch, NCCL, glibc; OpenMPI unpacked from .gpu/debs into
#      .gpu/root, and the launch mode that works there: a singleton that starts no daemon, else
#      the carried mpirun with its ssh-free launcher;
#   1. tsimcne-dist on the paper config (configs/paper-cifar10.toml: ResNet-18, global batch
#      1024) on random images in CIFAR-10's format, 50,000 training and 10,000 test (the config
#      trains on both), f32 and bf16: median images/s after warm-up, epoch time = steps per
#      epoch × median step time;
#   2. benchmarks/torch_reference.py on the same config and data, f32 and bf16;
#   3. the NCCL path at world size 1 (device=cuda makes tsimcne-dist use NCCL even on one rank):
#      a short run of configs/cpu.toml on Fashion-MNIST, whose step rate sizes stage 4;
#   4. Fashion-MNIST quality run, all 60,000 training images, about 3 minutes: kNN accuracy.
# $OUT gets summary.txt (every figure side by side; rewritten after every stage, so a killed
# call still brings one back) and logs.tar.gz (every stage's whole log, step logs, metrics,
# maps).
# GPU_SH_REHEARSAL=1 runs the same on a CPU (device=cpu, the tiny network, small data, few
# steps); tests/gpu_script.rs does so with the system's MPI and ssh hidden.
# Other settings: OUT, GPU_DIR (default .gpu), WORK (scratch, default /tmp/gpu-work), PYTHON,
# GPU_SH_MPI=mpirun (launch with the carried mpirun without probing).
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
started=$SECONDS
budget=${GPU_SH_BUDGET:-540}
rehearsal=${GPU_SH_REHEARSAL:-0}
gpu=$(cd "${GPU_DIR:-.gpu}" 2>/dev/null && pwd) ||
  { echo "gpu.sh: no ${GPU_DIR:-.gpu}: run benchmarks/gpu-prepare.sh here and carry it"; exit 1; }
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out" && out=$(cd "$out" && pwd)
work=${WORK:-/tmp/gpu-work}
mkdir -p "$work" && work=$(cd "$work" && pwd)
# Fresh run folders: tsimcne-dist resumes from any checkpoint it finds in one.
rm -rf "$work/logs" "$work/runs" "$work/stages.tsv"
mkdir -p "$work/logs" "$work/runs" "$work/data"
helper=$repo/benchmarks/gpu_helper.py
bin=$gpu/tsimcne-dist
root=$gpu/root

if [ "$rehearsal" = 1 ]; then
  device=cpu
  python=${PYTHON:-$repo/.venv/bin/python}
  # The tiny CNN needs only torch (no torchvision in this venv); bf16 is slow on CPUs, so few steps.
  paper_sets=(--set device=cpu --set model.backbone=tiny --set batch_size=32)
  cifar_per_file=256 cifar_batch=32 cifar_what="rehearsal: tiny CNN, batch 32, 1,536 random images"
  steps=6
  fashion_data=$work/data/fashion-subset
  probe_sets=(--set device=cpu --set batch_size=128 --set max_steps=6)
  quality_sets=(--set device=cpu --set batch_size=256 --set train_limit=0)
  fashion_what="rehearsal: 2,048 training and 512 test images"
else
  device=cuda
  python=${PYTHON:-/opt/torch/.venv/bin/python}
  paper_sets=(--set device=cuda)
  cifar_per_file=10000 cifar_batch=1024 cifar_what="paper config, ResNet-18, batch 1024, 60,000 random images"
  steps=80
  fashion_data=$gpu/fashion-mnist
  probe_sets=(--set device=cuda --set train_limit=0 --set max_steps=40)
  quality_sets=(--set device=cuda --set train_limit=0)
  fashion_what="configs/cpu.toml, 60,000 training images"
fi
# Anything stdlib-only will do for the helper; the venv's python is there for sure.
helper_py=$(command -v python3 || echo "$python")

header=$work/header.txt
say() { echo "$*" | tee -a "$header"; }
: >"$header"
say "t-SimCNE GPU check$([ "$rehearsal" = 1 ] && echo ' (REHEARSAL on the CPU)'), $(date -u +%FT%TZ), $(uname -n)"

# --- 0. the machine --------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null; then
  nvidia-smi >"$work/logs/nvidia-smi.log" 2>&1
  say "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -4 | paste -sd ';')"
  say "driver's CUDA: $(grep -o 'CUDA Version: [0-9.]*' "$work/logs/nvidia-smi.log" | head -1)"
else
  say "GPU: no nvidia-smi"
fi
say "glibc: $(ldd --version 2>&1 | head -1)"
torch_info=$(timeout 120 "$python" - 2>"$work/logs/torch-info.log" <<'PY'
import os, torch
nccl = "n/a"
try:
    nccl = ".".join(map(str, torch.cuda.nccl.version()))
except Exception as e:  # a CPU-only torch has no NCCL
    nccl = f"n/a ({type(e).__name__})"
gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
print(os.path.join(os.path.dirname(torch.__file__), "lib"))
print(f"torch {torch.__version__}, torch.version.cuda {torch.version.cuda}, NCCL {nccl}, "
      f"{gpus} GPU(s) visible to torch")
PY
)
torch_lib=$(sed -n 1p <<<"$torch_info")
say "python: $python; $(sed -n 2p <<<"$torch_info")"
[ -n "$torch_lib" ] || say "torch: cannot import it with $python (logs/torch-info.log)"

# OpenMPI, unpacked inside the carried folder (never into /) and pointed at by OPAL_PREFIX.
if [ ! -e "$root/.unpacked" ]; then
  rm -rf "$root" && mkdir -p "$root"
  for deb in "$gpu"/debs/*.deb; do
    if command -v dpkg-deb >/dev/null; then
      dpkg-deb -x "$deb" "$root"
    else
      "$helper_py" "$helper" unpack-deb "$deb" "$root"
    fi || say "unpack: $deb failed"
  done
  # Links the packages' maintainer scripts would make (update-alternatives).
  ln -sfn orterun "$root/usr/bin/mpirun"
  for f in "$root"/usr/lib/libpsm1/libpsm_infinipath.so.1.*; do
    [ -e "$f" ] && ln -sfn "$(basename "$f")" "$root/usr/lib/libpsm1/libpsm_infinipath.so.1"
  done
  touch "$root/.unpacked"
fi
# An empty folder for hwloc's plugins: the system's (if any, of another hwloc) stay unloaded.
mkdir -p "$root/hwloc-plugins"
multiarch=$root/usr/lib/x86_64-linux-gnu
mpi_env=(
  LD_LIBRARY_PATH="$torch_lib:$multiarch/openmpi/lib:$multiarch:$root/lib/x86_64-linux-gnu:$root/usr/lib/libpsm1${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  PATH="$root/usr/bin:$PATH"
  # OpenMPI finds its components, help texts and wrapper data relative to OPAL_PREFIX; Debian
  # keeps its configuration outside the prefix (/etc/openmpi), and PMIx has its own prefix.
  OPAL_PREFIX="$root/usr"
  OPAL_SYSCONFDIR="$root/etc/openmpi"
  PMIX_PREFIX="$multiarch/pmix2"
  HWLOC_PLUGINS_PATH="$root/hwloc-plugins"
  OMPI_ALLOW_RUN_AS_ROOT=1
  OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  OMPI_MCA_btl_vader_single_copy_mechanism=none
  # One rank, host buffers only: the plain shared-memory path, so that no network transport
  # (UCX, libfabric, InfiniBand) probes the GPU machine's hardware.
  OMPI_MCA_pml=ob1
  OMPI_MCA_btl=self,vader
)
# A singleton normally starts an `orted` through ssh even on one machine; isolated, it does not.
singleton=(env "${mpi_env[@]}" OMPI_MCA_ess_singleton_isolated=1)
# mpirun's `isolated` launcher starts local ranks only, without ssh/rsh.
mpirun=(env "${mpi_env[@]}" "$root/usr/bin/orterun" --mca plm isolated -n 1 --bind-to none)

if env "${mpi_env[@]}" ldd "$bin" >"$work/logs/ldd.log" 2>&1; then
  resolved() { awk -v lib="$1" '$1 == lib {print $3}' "$work/logs/ldd.log"; }
  cuda=$(resolved libtorch_cuda.so)
  say "tsimcne-dist: libmpi.so.40 => $(resolved libmpi.so.40), libtorch_cpu.so => $(resolved libtorch_cpu.so), libtorch_cuda.so => ${cuda:-not linked}"
  missing=$(grep 'not found' "$work/logs/ldd.log" | awk '{print $1}' | paste -sd ' ')
  say "tsimcne-dist: libraries not found: ${missing:-none}"
else
  say "tsimcne-dist: ldd failed: $(head -3 "$work/logs/ldd.log" | paste -sd ' ')"
fi

launch=("${singleton[@]}")
mode="singleton, isolated (OMPI_MCA_ess_singleton_isolated=1; no mpirun, no daemon)"
if [ "${GPU_SH_MPI:-auto}" = mpirun ]; then
  launch=("${mpirun[@]}")
  mode="carried mpirun (orterun --mca plm isolated -n 1 --bind-to none), as GPU_SH_MPI asks"
elif [ -x "$gpu/mpi-hello" ]; then
  if timeout 30 "${singleton[@]}" "$gpu/mpi-hello" >"$work/logs/mpi-probe.log" 2>&1; then
    :
  elif echo "--- mpirun" >>"$work/logs/mpi-probe.log" &&
    timeout 30 "${mpirun[@]}" "$gpu/mpi-hello" >>"$work/logs/mpi-probe.log" 2>&1; then
    launch=("${mpirun[@]}")
    mode="carried mpirun (orterun --mca plm isolated -n 1 --bind-to none); the singleton failed"
  else
    mode="NONE works (logs/mpi-probe.log); trying the singleton anyway"
  fi
else
  mode="$mode, not probed: no mpi-hello"
fi
say "MPI launch: $mode"
say "OpenMPI: $(env "${mpi_env[@]}" "$root/usr/bin/ompi_info" --version 2>&1 | head -1) from $root"

# --- stages ----------------------------------------------------------------------------------
reserve=20  # seconds kept for the summary and the archive
stage() {  # name, longest seconds, command…: runs it under timeout, logs into logs/NAME.log
  local name=$1 cap=$2 left limit t0 rc
  shift 2
  left=$((budget - (SECONDS - started) - reserve))
  limit=$((cap < left ? cap : left))
  if ((limit < 5)); then
    echo "== $name: skipped, the time budget is spent"
    return
  fi
  echo "== $name (at most ${limit} s)"
  t0=$SECONDS
  { echo "\$ $*"; echo; } >"$work/logs/$name.log"
  timeout -k 10 "$limit" "$@" >>"$work/logs/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" >>"$work/stages.tsv"
  echo "   exit $rc after $((SECONDS - t0)) s"
  report
}
report() {  # summary.txt and logs.tar.gz as they stand
  "$helper_py" "$helper" summary "$work" "$out/summary.txt" 2>"$work/logs/summary-error.log" ||
    { echo "summary failed:"; cat "$work/logs/summary-error.log"; } >>"$out/summary.txt"
  tar -czf "$out/logs.tar.gz" -C "$work" --exclude=checkpoints --exclude='*.npy' \
    --exclude='*.csv' --exclude='*.safetensors' header.txt params.json logs runs \
    $([ -e "$work/stages.tsv" ] && echo stages.tsv)
}
params() {  # what the summary needs to know of this run
  cat >"$work/params.json" <<JSON
{"device": "$device", "cifar_batch": $cifar_batch,
 "cifar_steps_per_epoch": $((6 * cifar_per_file / cifar_batch)), "cifar_what": "$cifar_what",
 "fashion_what": "$fashion_what", "fashion_epochs": "${fashion_epochs:-not chosen yet}"}
JSON
}
params
report

cifar=$work/data/cifar-random-$cifar_per_file
[ -f "$cifar/test_batch.bin" ] || "$helper_py" "$helper" cifar "$cifar" "$cifar_per_file"
if [ "$rehearsal" = 1 ]; then
  "$helper_py" "$helper" idx-subset "$gpu/fashion-mnist" "$fashion_data" 2048 512
fi

# 1. and 2.: the paper config, both programs, both precisions.
for prec in f32 bf16; do
  sets=("${paper_sets[@]}")
  [ "$prec" = bf16 ] && sets+=(--set precision=bf16)
  stage "tsimcne-$prec" 150 "${launch[@]}" "$bin" train --config configs/paper-cifar10.toml \
    --data "$cifar" --out "$work/runs/tsimcne-$prec" "${sets[@]}" --set max_steps=$steps
done
for prec in f32 bf16; do
  sets=("${paper_sets[@]}")
  [ "$prec" = bf16 ] && sets+=(--set precision=bf16)
  stage "torch-$prec" 150 "$python" benchmarks/torch_reference.py --config configs/paper-cifar10.toml \
    --data "$cifar" "${sets[@]}" --max-steps $steps --json "$work/runs/torch-$prec.json"
done

# 3. NCCL at world size 1, which also measures the Fashion-MNIST step rate.
stage nccl 120 env NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT \
  "${launch[@]}" "$bin" train --config configs/cpu.toml --data "$fashion_data" \
  --out "$work/runs/nccl" "${probe_sets[@]}"

# 4. Fashion-MNIST: as many epochs as fill about 3 minutes at the measured rate (leaving time
# for the final embedding and the summary), else a conservative fixed length.
if [ "$rehearsal" = 1 ]; then
  fashion_epochs="[1,1,1]"
else
  left=$((budget - (SECONDS - started) - reserve))
  seconds=$((left - 90 < 180 ? left - 90 : 180))
  rate=$("$helper_py" "$helper" rate "$work/runs/nccl")
  spe=$(grep -o 'steps_per_epoch=[0-9]*' "$work/logs/nccl.log" | head -1 | cut -d= -f2)
  spe=${spe:-$((60000 / 512))}  # configs/cpu.toml's batch on all training images
  if [ -n "$rate" ]; then
    fashion_epochs=$("$helper_py" "$helper" epochs "$rate" "$spe" 512 $((seconds > 10 ? seconds : 10)))
  else
    fashion_epochs="[6,1,3]"
  fi
fi
params
stage fashion 400 "${launch[@]}" "$bin" train --config configs/cpu.toml --data "$fashion_data" \
  --out "$work/runs/fashion" "${quality_sets[@]}" --set "epochs=$fashion_epochs"

echo
cat "$out/summary.txt"
echo "(whole logs: $out/logs.tar.gz; $((SECONDS - started)) s in all)"
