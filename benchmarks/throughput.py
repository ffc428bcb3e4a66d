"""Training throughput: picmap's pipeline against a conventional per-image pipeline.

Both train the same network with the same loss and optimizer on a synthetic CIFAR-shaped
dataset (uint8, 3×32×32). The conventional pipeline is the usual one: torchvision transforms
applied image by image in DataLoader worker processes, float32. picmap keeps the data on the
training device as one uint8 tensor, augments whole batches there, and (on CUDA) uses bfloat16
autocast and channels_last. One run prints both and their ratio.

    python benchmarks/throughput.py                 # full: 60,000 images, ResNet-18, batch 512
    python benchmarks/throughput.py --small         # CPU smoke run, under 2 minutes
    python benchmarks/throughput.py --ddp           # also picmap through the torchrun path

``--ddp`` adds a row for picmap in a one-process group (DistributedDataParallel, the gathering
loss and the processes' agreement steps): the overhead of the data-parallel path on one device.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import socket
import time

import torch
import torch.distributed as dist
import torchvision.transforms.v2 as T
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from picmap.loss import info_nce
from picmap.model import EmbeddingNet, make_backbone
from picmap.train import Stage, TrainConfig, Trainer

RECIPE_EPOCHS = (1000, 50, 450)
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 tensor-core peaks


class TwoViews(Dataset):
    """Per-image SimCLR augmentation, as conventional pipelines do it."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images
        self.transform = T.Compose(
            [
                T.RandomResizedCrop(images.shape[-1], scale=(0.2, 1.0), antialias=True),
                T.RandomHorizontalFlip(),
                T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
                T.ToDtype(torch.float32, scale=True),
            ]
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[i]
        return self.transform(image), self.transform(image)


def build_net(backbone: str, device: torch.device) -> EmbeddingNet:
    torch.manual_seed(0)
    features, dim = make_backbone(backbone, 3, 32)
    return EmbeddingNet(features, dim, 1024, 128).to(device)


def step_flops(net: EmbeddingNet, batch: int, size: int, device: torch.device) -> float:
    """FLOPs of one training step (forward + backward of both views)."""
    x = torch.rand(2 * batch, 3, size, size, device=device)
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    net.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB, whole process


def time_parallel_picmap(images: torch.Tensor, args, device: torch.device) -> float:
    """Images per second of picmap's trainer on the data-parallel path, in one process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        return time_picmap(images, args, device)
    finally:
        dist.destroy_process_group()


def time_picmap(images: torch.Tensor, args, device: torch.device, compile: bool = False) -> float:
    """Images per second of picmap's trainer, measured after a warm-up epoch."""
    net = build_net(args.backbone, device)
    stage = Stage(args.epochs + 1, 0.06, 0, 128, False)
    config = TrainConfig([stage], args.batch_size, images.shape[-1], verbose=False, compile=compile)
    trainer = Trainer(net, images.to(device), config, 0)
    stamps = []

    def stamp(_: Trainer) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    trainer.on_epoch_end = stamp
    trainer.run()
    seconds = stamps[-1] - stamps[0]
    return args.epochs * trainer.steps_per_epoch * args.batch_size / seconds


def time_conventional(images: torch.Tensor, args, device: torch.device) -> float:
    """Images per second of the per-image DataLoader pipeline in float32."""
    net = build_net(args.backbone, device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(
        TwoViews(images),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    started = None
    for epoch in range(args.epochs + 1):
        if epoch == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        for a, b in loader:
            a, b = a.to(device, non_blocking=True), b.to(device, non_blocking=True)
            z = net(torch.cat([a, b]))
            loss = info_nce(z[: len(a)], z[len(a) :])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_value_(net.parameters(), 4.0)
            optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.epochs * len(loader) * args.batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="CPU smoke run (<2 min)")
    parser.add_argument("--images", type=int, default=60_000)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="also time picmap + torch.compile")
    parser.add_argument("--ddp", action="store_true", help="also time the data-parallel path")
    args = parser.parse_args()
    if args.small:
        args.images, args.backbone, args.batch_size, args.epochs, args.workers = (
            1024,
            "small",
            128,
            1,
            2,
        )
    device = torch.device(args.device)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8)
    flops = (
        step_flops(build_net(args.backbone, device), args.batch_size, 32, device) / args.batch_size
    )
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)

    rows = []
    timers = [("picmap", time_picmap), ("conventional", time_conventional)]
    if args.compile:
        timers.insert(1, ("picmap+compile", functools.partial(time_picmap, compile=True)))
    if args.ddp:
        timers.insert(1, ("picmap DDP×1", time_parallel_picmap))
    for label, timer in timers:
        reset_memory(device)
        rate = timer(images, args, device)
        rows.append((label, rate, peak_memory_gb(device)))

    print(f"\n{name}, {args.backbone}, batch {args.batch_size}, {args.images} images")
    header = ("pipeline", "img/s", "s/epoch60k", "recipe", "peak GB", "MFU")
    print("{:14s} {:>9s} {:>10s} {:>9s} {:>8s} {:>6s}".format(*header))
    for label, rate, memory in rows:
        per_epoch = 60_000 / rate
        recipe_h = per_epoch * sum(RECIPE_EPOCHS) / 3600
        mfu = f"{100 * rate * flops / (peak * 1e12):5.1f}%" if peak else "  n/a"
        print(f"{label:14s} {rate:9.0f} {per_epoch:10.2f} {recipe_h:8.2f}h {memory:8.2f} {mfu}")
    print(f"speed-up picmap / conventional: {rows[0][1] / rows[-1][1]:.1f}×")
    print(f"model: {flops / 1e9:.2f} GFLOP per image per step (two views, forward + backward)")


if __name__ == "__main__":
    main()
