"""Data-parallel training: 2 processes × batch B train the same objective as 1 process × 2B."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import picmap.distributed
import picmap.loss
from picmap.augment import AugmentConfig
from picmap.data.batches import DeviceBatches
from picmap.loss import info_nce
from picmap.model import EmbeddingNet
from picmap.train import Interrupted, Stage, TrainConfig, Trainer

WORLD, B, D_IN, D_OUT = 2, 8, 5, 3


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights of a tiny linear model and the two views of 2B samples, the same in every process."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(D_OUT, D_IN, generator=g)
    return (
        weight,
        torch.randn(WORLD * B, D_IN, generator=g),
        torch.randn(WORLD * B, D_IN, generator=g),
    )


def _loss_and_grad(weight: torch.Tensor, x_a: torch.Tensor, x_b: torch.Tensor):
    weight = weight.clone().requires_grad_(True)
    loss = info_nce(x_a @ weight.T, x_b @ weight.T)
    loss.backward()
    return loss.detach(), weight.grad


def _gather_without_grad(z: torch.Tensor) -> torch.Tensor:
    """The common mistake: other processes' rows are constants, so their gradients are lost."""
    parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, z.detach())
    parts[dist.get_rank()] = z
    return torch.cat(parts)


def _worker(rank: int, port: int, out: str, with_grad: bool) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        if not with_grad:
            picmap.loss._GatherWithGradients.apply = _gather_without_grad
        weight, x_a, x_b = _inputs()
        mine = slice(rank * B, (rank + 1) * B)
        loss, grad = _loss_and_grad(weight, x_a[mine], x_b[mine])
        # What DistributedDataParallel does: average the loss (for reporting) and the gradients.
        for t in (loss, grad):
            dist.all_reduce(t)
            t /= WORLD
        if rank == 0:
            torch.save({"loss": loss, "grad": grad}, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed(tmp_path, with_grad: bool) -> dict[str, torch.Tensor]:
    out = str(tmp_path / f"result_{with_grad}.pt")
    mp.spawn(_worker, args=(_free_port(), out, with_grad), nprocs=WORLD)
    return torch.load(out)


@pytest.fixture(scope="module")
def single() -> tuple[torch.Tensor, torch.Tensor]:
    return _loss_and_grad(*_inputs())


def test_two_processes_match_one_process_with_the_whole_batch(tmp_path, single):
    loss, grad = single
    result = _distributed(tmp_path, with_grad=True)
    torch.testing.assert_close(result["loss"], loss)
    torch.testing.assert_close(result["grad"], grad)


def test_a_gather_without_gradient_would_get_the_gradients_wrong(tmp_path, single):
    loss, grad = single
    result = _distributed(tmp_path, with_grad=False)
    torch.testing.assert_close(result["loss"], loss)  # the forward pass is the same …
    assert (result["grad"] - grad).norm() > 0.2 * grad.norm()  # … the gradients are not


# -- the training loop across processes ---------------------------------------------------------

IDENTITY = AugmentConfig(
    crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0
)
STAGES = [Stage(2, 0.05, 1, 8, False), Stage(1, 0.05, 0, 2, True), Stage(2, 0.01, 0, 2, False)]
N_IMAGES, BATCH = 48, 16


def _trainer(checkpoint_dir: str | None = None, augment: AugmentConfig = IDENTITY) -> Trainer:
    """A network without BatchNorm (whose statistics are per process), on fixed images."""
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 12), torch.nn.Tanh())
    images = (
        torch.rand(N_IMAGES, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 255
    ).byte()
    config = TrainConfig(
        STAGES, BATCH, image_size=8, augment=augment, channels_last=False, verbose=False
    )
    return Trainer(EmbeddingNet(backbone, 12, 16, 8), images, config, 5, checkpoint_dir, 0.0)


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.net.state_dict().items()}


def _train_worker(rank: int, port: int, out: str, task: str, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        if task == "straight":
            trainer = _trainer()
            losses = trainer.run()
        else:  # stopped by rank 1 alone in stage 3, then resumed from rank 0's checkpoint
            trainer = _trainer(folder)

            def stop_on_rank_1(t: Trainer) -> None:
                t.stop_requested = t.rank == 1 and t.progress.stage == 2

            trainer.on_epoch_end = stop_on_rank_1
            with pytest.raises(Interrupted):
                trainer.run()
            dist.barrier()
            trainer = _trainer(folder)
            assert trainer.resume()
            losses = trainer.run()
        gathered = [None] * WORLD
        dist.all_gather_object(gathered, (losses, _weights(trainer)))
        if rank == 0:
            torch.save(gathered, out)
    finally:
        dist.destroy_process_group()


def _two_processes(tmp_path, task: str) -> list:
    tmp_path.mkdir(exist_ok=True)
    out = str(tmp_path / f"{task}.pt")
    mp.spawn(_train_worker, args=(_free_port(), out, task, str(tmp_path)), nprocs=WORLD)
    return torch.load(out)


def test_two_processes_train_like_one_with_the_whole_batch(tmp_path):
    single = _trainer()
    single_losses = single.run()
    (losses_0, weights_0), (losses_1, weights_1) = _two_processes(tmp_path, "straight")
    assert losses_0 == losses_1  # the processes report the same (averaged) loss …
    for name, value in weights_0.items():  # … and hold the same network …
        torch.testing.assert_close(weights_1[name], value, rtol=0, atol=0)
    # … which is the network one process trains with the whole batch.
    np.testing.assert_allclose(np.concatenate(losses_0), np.concatenate(single_losses), rtol=1e-4)
    for name, value in _weights(single).items():
        torch.testing.assert_close(weights_0[name], value, rtol=1e-4, atol=1e-5)


def test_stop_on_one_process_stops_all_and_the_run_resumes_exactly(tmp_path):
    (straight, weights), _ = _two_processes(tmp_path / "a", "straight")
    (resumed, resumed_weights), _ = _two_processes(tmp_path / "b", "resume")
    np.testing.assert_allclose(np.concatenate(resumed), np.concatenate(straight), rtol=1e-5)
    for name, value in weights.items():
        torch.testing.assert_close(resumed_weights[name], value, rtol=1e-5, atol=1e-6)


def test_each_process_gets_its_share_and_a_batch_is_covered_once():
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    shares = [
        list(DeviceBatches(images, torch.device("cpu"), 8, (rank, 2)).epoch(order))
        for rank in range(2)
    ]
    assert [len(s) for s in shares] == [5, 5]
    for step, (mine, theirs) in enumerate(zip(*shares, strict=True)):
        assert len(mine) == len(theirs) == 4
        together = torch.cat([mine, theirs]).flatten()
        assert together.tolist() == order[step * 8 : (step + 1) * 8].tolist()
    with pytest.raises(ValueError, match="batch_size=9 must be divisible by the number of proc"):
        DeviceBatches(images, torch.device("cpu"), 9, (0, 2))


# -- torchrun, end to end ------------------------------------------------------------------------

FIT_DIGITS = ["fit", "digits", "--epochs", "8,2,4", "--batch-size", "128", "--backbone", "small"]
FIT_DIGITS += ["--device", "cpu", "--quiet", "--seed", "1"]


def _fit(out: Path, launcher: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*launcher, "-m", "picmap", *FIT_DIGITS, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def test_torchrun_fits_digits_as_well_as_one_process(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    two = _fit(tmp_path / "two", [*torchrun, "--nproc_per_node=2"])
    one = _fit(tmp_path / "one", [sys.executable])
    assert (two["processes"], one["processes"]) == (2, 1)
    assert two["knn_accuracy"] > 0.4  # chance is 0.1
    assert two["knn_accuracy"] > one["knn_accuracy"] - 0.08
    assert not (tmp_path / "two" / "checkpoint.safetensors").exists()
    assert len(np.load(tmp_path / "two" / "embedding.npy")) == 1797
    accuracies = two["knn_accuracy"], one["knn_accuracy"]
    print("\nkNN accuracy: 2 processes {:.3f}, 1 process {:.3f}".format(*accuracies))


def test_sync_batchnorm_on_cpus_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(picmap.distributed, "active", lambda: True)
    monkeypatch.setattr(picmap.distributed, "world_size", lambda: 2)
    monkeypatch.setattr(picmap.distributed, "rank", lambda: 0)
    config = TrainConfig(STAGES, BATCH, image_size=8, sync_batchnorm=True, verbose=False)
    net = EmbeddingNet(torch.nn.Sequential(torch.nn.BatchNorm2d(1), torch.nn.Flatten()), 64, 8, 8)
    with pytest.raises(ValueError, match="sync_batchnorm needs GPUs"):
        Trainer(net, torch.zeros(N_IMAGES, 1, 8, 8, dtype=torch.uint8), config, 0)
