#!/usr/bin/env bash
# One-call GPU check (issue: fast on one GPU). Run on a machine with CUDA from the repo root:
#   bash benchmarks/gpu_check.sh            (about 8 minutes on an H100/H200)
# Prints: throughput table (picmap vs conventional pipeline, same run), then Fashion-MNIST
# kNN accuracy of the GPU recipe (bf16) against plain fp32 on a short schedule.
set -euo pipefail
pip install -q -e . 2>/dev/null || pip install -q --no-deps -e .
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "== throughput (plain, torch.compile, data-parallel path): 60,000 CIFAR-shaped images, ResNet-18, batch 512"
python benchmarks/throughput.py --epochs 2 --workers 12 --compile --ddp
echo "== quality: bf16 vs fp32, Fashion-MNIST 10k subset, ResNet-18, 40,5,15 epochs"
for precision in "" "--fp32"; do
  python benchmarks/quality.py --backbone resnet18 --epochs 40,5,15 --device cuda \
    --no-baselines $precision 2>/dev/null | tail -n 4
done
