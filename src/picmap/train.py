"""The three-stage t-SimCNE schedule: optimizer, learning-rate schedule, checkpoints.

Stage 1 pre-trains the network with a high-dimensional output; stage 2 swaps the readout
for a 2-D (or 3-D) one and trains only that layer; stage 3 fine-tunes everything.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import safetensors
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from . import distributed
from ._io import atomic_path, read_safetensors
from .augment import AugmentConfig, augment
from .budget import format_duration
from .data.batches import DeviceBatches
from .loss import info_nce
from .model import EmbeddingNet, state_mismatch
from .neighbours import draw_partners, nearest_neighbours, principal_axes, root_pixel_pca

logger = logging.getLogger("picmap")

CHECKPOINT_FILE = "checkpoint.safetensors"
_SLOW_FIT_SECONDS = 3600
# Steps timed for the estimate of the training time.
_TIMED_STEPS = 5
# With several processes, they agree on stopping or checkpointing every this many steps (one
# tiny all-reduce, which makes the host wait for the device, so not on every step).
_AGREE_EVERY = 10
# The independent random streams of a run: each is seeded from (seed, stream, position).
_ORDER, _AUGMENT, _READOUT = range(3)
# Images whose outputs give the principal axes of a "pca" readout, and how many per forward pass.
_PCA_SAMPLE, _PCA_CHUNK = 4096, 256
# Images per forward pass when the neighbours are found in feature space.
_FEATURE_CHUNK = 1024


class DivergedError(ValueError):
    """The loss stopped being finite; the last good weights are kept in the model."""


@dataclass(frozen=True)
class Stage:
    """One stage of training."""

    epochs: int
    lr: float
    warmup_epochs: int
    out_dim: int
    readout_only: bool


@dataclass
class TrainConfig:
    """Everything the training loop needs besides the network and the data."""

    stages: list[Stage]
    batch_size: int
    image_size: int
    metric: str = "cauchy"
    temperature: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 5e-4
    grad_clip: float | None = 4.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # channels_last: 1.3× faster training steps of the small CNN on 2 CPU cores (measured).
    channels_last: bool = True
    # bfloat16 autocast on CUDA; the loss is always computed in float32.
    mixed_precision: bool = True
    # torch.compile the network (CUDA: fewer kernel launches; off by default on the CPU).
    compile: bool = False
    # With several processes on GPUs: BatchNorm statistics over the global batch.
    sync_batchnorm: bool = False
    # A new readout starts "random" (PyTorch's default) or as the "pca" of the current output.
    readout_init: str = "random"
    # Each image's second view comes, with this probability, from one of its ``neighbour_k``
    # nearest neighbours in pixel space instead of from the image itself (0: never).
    neighbour_share: float = 0.0
    neighbour_k: int = 15
    # Where the neighbours are found: "pixels" (once, before training) or "features": the
    # backbone's own features, first at the end of stage 1 (which trains on views of each image
    # alone), then again every ``neighbour_refresh`` epochs of the later stages (0: never).
    neighbour_space: str = "pixels"
    neighbour_refresh: int = 0
    # What the network is fed: "images" (uint8, augmented every step) or "features": float
    # rows of a frozen backbone's features, used as they are. Then "pixels" neighbours are
    # found by the cosine of those features.
    inputs: str = "images"
    # The backbone (a pretrained one, fine-tuned) learns at this fraction of the learning rate.
    backbone_lr_ratio: float = 1.0
    verbose: bool = True


@dataclass
class Progress:
    """Where training stands: the next (stage, epoch, step) to run and the loss so far."""

    stage: int = 0
    epoch: int = 0
    step: int = 0
    epoch_loss_sum: float = 0.0
    losses: list[list[float]] = field(default_factory=list)


class Interrupted(KeyboardInterrupt):
    """Training stopped on request after writing a checkpoint."""


def warmup_epochs_for(epochs: int, warmup: int) -> int:
    """Warm-up length: the requested epochs, but never more than a tenth of a short stage."""
    return min(warmup, math.ceil(0.1 * epochs))


def learning_rate(stage: Stage, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up from ``lr/warmup_steps`` to ``lr``, then cosine decay towards 0."""
    warmup_steps = stage.warmup_epochs * steps_per_epoch
    total = stage.epochs * steps_per_epoch
    if step < warmup_steps:
        return stage.lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    return stage.lr * 0.5 * (1 + math.cos(math.pi * progress))


def stream_seed(seed: int, *position: int) -> int:
    """A seed for one random stream of a run (e.g. the augmentations of one step of one
    process), statistically independent of every other position."""
    words = np.random.SeedSequence(seed, spawn_key=position).generate_state(2, np.uint32)
    return int(words[0]) << 31 | int(words[1]) >> 1


# How cuBLAS and cuDNN say they ran out of memory (as RuntimeError, not OutOfMemoryError).
_OUT_OF_MEMORY_TEXTS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says the device ran out of memory, whichever library raised it."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and any(t in str(err) for t in _OUT_OF_MEMORY_TEXTS)


def free_device_memory() -> None:
    """Return cached, unreferenced GPU memory (no-op without CUDA)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def largest_batch_size(try_step: Callable[[int], None], start: int) -> int:
    """The largest of ``start, start/2, …, 2`` for which ``try_step`` runs out of no memory."""
    batch = start
    while True:
        try:
            try_step(batch)
            return batch
        except RuntimeError as err:  # OutOfMemoryError is a RuntimeError
            if batch <= 2 or not is_out_of_memory(err):
                raise
        # Freed here, not in the except block, whose traceback still holds the step's tensors.
        free_device_memory()
        batch //= 2


@contextlib.contextmanager
def _exact_float32(enabled: bool) -> Iterator[None]:
    """With ``enabled``, float32 means float32 for the block: no TF32 in cuDNN convolutions
    (PyTorch's default) or CUDA matmuls. The flags are restored afterwards."""
    if not enabled:
        yield
        return
    backends = torch.backends
    saved = backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32
    backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = saved


def _report(message: str, verbose: bool) -> None:
    logger.info(message)
    if verbose:
        tqdm.write(message, file=sys.stderr)


def _parameter_groups(net: EmbeddingNet, stage: Stage, backbone_lr_ratio: float) -> list[dict]:
    """The parameters ``stage`` trains, as optimizer groups with their ``lr_scale``: one
    group, or with ``backbone_lr_ratio`` ≠ 1 the backbone's apart from the head's."""
    for p in net.parameters():
        p.requires_grad_(not stage.readout_only)
    for p in net.head.readout.parameters():
        p.requires_grad_(True)
    trained = [p for p in net.parameters() if p.requires_grad]
    if backbone_lr_ratio == 1:
        return [{"params": trained, "lr_scale": 1.0}]
    in_backbone = {id(p) for p in net.backbone.parameters()}
    groups = [
        {"params": [p for p in trained if id(p) in in_backbone], "lr_scale": backbone_lr_ratio},
        {"params": [p for p in trained if id(p) not in in_backbone], "lr_scale": 1.0},
    ]
    return [group for group in groups if group["params"]]


def _optimized(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    """The parameters of every group of ``optimizer``, in order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


class Trainer:
    """Runs the stages on one device and keeps enough state to resume after a stop.

    All randomness is drawn from generators seeded by ``seed`` and the position: the image
    order by (stage, epoch), the augmentations by (stage, epoch, step, process). So a
    checkpoint needs only the model, the optimizer, the seed and the position down to the
    step, and a resumed run continues exactly as if never stopped.

    Started by ``torchrun`` (:mod:`picmap.distributed`), each process trains on its share of
    every batch of ``config.batch_size`` images (which must divide by the number of processes),
    the network is wrapped in DistributedDataParallel, and only rank 0 writes checkpoints.
    """

    def __init__(
        self,
        net: EmbeddingNet,
        images: torch.Tensor,
        config: TrainConfig,
        seed: int,
        checkpoint_dir: str | Path | None = None,
        checkpoint_interval: float = 60.0,
        device: torch.device | str | None = None,
    ) -> None:
        if config.batch_size > len(images):
            raise ValueError(
                f"batch_size={config.batch_size} is larger than the data ({len(images)} images); "
                f"pass batch_size={len(images)} or less"
            )
        if config.neighbour_share > 0 and config.neighbour_k >= len(images):
            raise ValueError(
                f"neighbour_k={config.neighbour_k} needs more images than that ({len(images)} "
                "given); use a smaller neighbour_k in the recipe, or a recipe without neighbours"
            )
        self.net = net.to(memory_format=torch.channels_last) if config.channels_last else net
        self.images = images
        self.device = torch.device(device) if device is not None else images.device
        self.distributed = distributed.active()
        self.rank = distributed.rank() if self.distributed else 0
        self.world_size = distributed.world_size()
        if config.sync_batchnorm and self.world_size > 1:
            if self.device.type != "cuda":
                raise ValueError(
                    "sync_batchnorm needs GPUs (PyTorch's SyncBatchNorm runs on CUDA only); "
                    "turn it off to train on CPUs"
                )
            self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
        self.batches = DeviceBatches(
            images, self.device, config.batch_size, (self.rank, self.world_size)
        )
        self._partner_batches = (
            DeviceBatches(images, self.device, config.batch_size, (self.rank, self.world_size))
            if config.neighbour_share > 0
            else None
        )
        self._neighbours: torch.Tensor | None = None
        self._autocast = config.mixed_precision and self.device.type == "cuda"
        self._forward: nn.Module = self.net
        self.config = config
        self.seed = seed
        self._generator = torch.Generator(self.device)
        self._verbose = config.verbose and self.rank == 0
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.checkpoint_interval = checkpoint_interval
        self.progress = Progress(losses=[[] for _ in config.stages])
        self.optimizer: torch.optim.Optimizer | None = None
        self.on_epoch_end: Callable[[Trainer], None] | None = None
        self.stop_requested = False
        self._last_save = time.monotonic()
        self._estimate_logged = False
        # (time, steps) since the end of the run's first step, for the time estimate.
        self._timed: tuple[float, int] | None = None
        # With a time budget: the perf_counter() time training should end by. The last stage's
        # epochs are then set, when it starts, from the measured time of the epochs before.
        self.deadline: float | None = None
        self._epoch_seconds: list[float] = []  # of whole epochs that trained the whole network

    @property
    def steps_per_epoch(self) -> int:
        return len(self.batches)

    def run(self) -> list[list[float]]:
        """Train every remaining step of every stage; returns the loss per epoch per stage."""
        with _exact_float32(not self.config.mixed_precision):
            return self._run()

    def _run(self) -> list[list[float]]:
        p = self.progress
        self._estimate_logged |= p.stage > 0 or p.epoch > 0 or p.step > 0
        while p.stage < len(self.config.stages):
            last = p.stage == len(self.config.stages) - 1
            if self.deadline is not None and last and p.epoch == p.step == 0:
                self._fit_last_stage_to_deadline()
            self._run_stage(p.stage)
            p.stage, p.epoch = p.stage + 1, 0
            self.optimizer = None
            self.save_checkpoint()
        return p.losses

    def _make_optimizer(self, stage: Stage) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            _parameter_groups(self.net, stage, self.config.backbone_lr_ratio),
            lr=stage.lr,
            momentum=self.config.momentum,
            weight_decay=self.config.weight_decay,
            fused=self.device.type == "cuda",
        )

    def _wrap(self) -> nn.Module:
        """The network as the training steps call it: distributed and compiled as asked.

        Rebuilt for every stage, as DistributedDataParallel registers the parameters that
        require gradients when it is built.
        """
        net: nn.Module = self.net
        if self.distributed:
            on_gpu = self.device.type == "cuda"
            net = DistributedDataParallel(net, device_ids=[self.device] if on_gpu else None)
        return torch.compile(net) if self.config.compile else net

    def _run_stage(self, index: int) -> None:
        stage = self.config.stages[index]
        if self.net.out_dim != stage.out_dim:
            self._new_readout(index, stage.out_dim)
        if self.optimizer is None:
            self.optimizer = self._make_optimizer(stage)
        self._forward = self._wrap()
        self.net.train()
        p = self.progress
        bar = tqdm(
            total=stage.epochs * self.steps_per_epoch,
            initial=p.epoch * self.steps_per_epoch + p.step,
            desc=f"stage {index + 1}/{len(self.config.stages)}",
            unit="step",
            disable=not self._verbose,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        with bar:
            while p.epoch < stage.epochs:
                started = time.perf_counter()
                steps_before = p.step
                loss = self._run_epoch(index, stage, bar)
                seconds = time.perf_counter() - started
                if not stage.readout_only and steps_before == 0:
                    self._epoch_seconds.append(seconds)
                p.losses[index].append(loss)
                p.epoch, p.step, p.epoch_loss_sum = p.epoch + 1, 0, 0.0
                images_done = (self.steps_per_epoch - steps_before) * self.config.batch_size
                bar.set_postfix(
                    epoch=f"{p.epoch}/{stage.epochs}",
                    loss=f"{loss:.4f}",
                    lr=f"{self.optimizer.param_groups[-1]['lr']:.2e}",
                    img_s=f"{images_done / seconds:.0f}",
                )
                if self.on_epoch_end:
                    self.on_epoch_end(self)

    def _new_readout(self, index: int, out_dim: int) -> None:
        """Replace the readout, initialised from the run's seed (the same in every process).

        With ``readout_init="pca"`` the new readout maps to the principal axes of the current
        output, so the new map starts as the PCA of the old embedding instead of a random view.
        """
        pca = self._principal_readout(index, out_dim) if self.config.readout_init == "pca" else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed(self.seed, _READOUT, index))
            self.net.replace_readout(out_dim)
        if pca is not None:
            readout = self.net.head.readout
            with torch.no_grad():
                readout.weight.copy_(pca[0])
                readout.bias.copy_(pca[1])

    @torch.no_grad()
    def _principal_readout(self, index: int, out_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias that project the current output, centred, onto its top axes."""
        gen = self._generator.manual_seed(stream_seed(self.seed, _READOUT, index))
        sample = torch.randperm(len(self.images), generator=gen, device=self.device)[:_PCA_SAMPLE]
        was_training = self.net.training
        self.net.eval()
        outputs = [
            self.net(self._network_input(self.images[chunk.to(self.images.device)]))
            for chunk in sample.split(_PCA_CHUNK)
        ]
        self.net.train(was_training)
        z = torch.cat(outputs).float()
        centre, axes = principal_axes(z, out_dim)
        old = self.net.head.readout
        return axes @ old.weight, axes @ (old.bias - centre)

    def _run_epoch(self, index: int, stage: Stage, bar: tqdm) -> float:
        p, device, gen = self.progress, self.device, self._generator
        good_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        gen.manual_seed(stream_seed(self.seed, _ORDER, index, p.epoch))
        order = torch.randperm(len(self.images), generator=gen, device=device)
        batches = self.batches.epoch(order, p.step)
        share = self._neighbour_share(index)
        if share > 0:
            if self._graph_due(index):
                self._neighbours = self._feature_neighbours()
            partners = draw_partners(order, self.neighbours(), share, gen)
            second = self._partner_batches.epoch(partners, p.step)
        else:
            batches, second = itertools.tee(batches)
        # The loss summed over this epoch's steps (averaged over processes), in two parts: the
        # steps before a resume, and this process's steps since.
        resumed_sum, total = p.epoch_loss_sum, torch.zeros((), device=device)
        params = _optimized(self.optimizer)
        for batch, partner in zip(batches, second, strict=True):
            lr = learning_rate(stage, p.epoch * self.steps_per_epoch + p.step, self.steps_per_epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            gen.manual_seed(stream_seed(self.seed, _AUGMENT, index, p.epoch, p.step, self.rank))
            total += self._step(batch, partner, params)
            p.step += 1
            bar.update(1)
            if not self._estimate_logged:
                self._time_step()
            if self._checkpoint_due():
                p.epoch_loss_sum = resumed_sum + self._mean_over_processes(total)
                self._check_finite(index, p.epoch_loss_sum, good_state)
                self.save_checkpoint()
                resumed_sum, total = p.epoch_loss_sum, torch.zeros((), device=device)
                if self.stop_requested:
                    raise Interrupted(f"stopped in stage {index + 1}, epoch {p.epoch + 1}")
        mean = (resumed_sum + self._mean_over_processes(total)) / self.steps_per_epoch
        self._check_finite(index, mean, good_state)
        return mean

    def _step(self, batch: torch.Tensor, partner: torch.Tensor, params: list) -> torch.Tensor:
        """One optimizer step on the views of ``batch`` and ``partner``; returns the loss."""
        cfg, B = self.config, self.batches.share
        if cfg.inputs == "features":
            views = torch.cat([batch, partner])
        else:
            gen, pair = self._generator, (batch, partner)
            views = torch.cat([augment(x, cfg.image_size, gen, cfg.augment) for x in pair])
        if cfg.channels_last and views.ndim == 4:
            views = views.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self._autocast):
            z = self._forward(views)
        loss = info_nce(z[:B], z[B:], cfg.metric, cfg.temperature)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_value_(params, cfg.grad_clip)
        self.optimizer.step()
        return loss.detach()

    def seconds_per_step(self, min_seconds: float = 1.5) -> tuple[float, float]:
        """Seconds of a training step of the whole network and of one that trains only the
        readout (stage 2), each averaged over 3–30 steps (enough to take ``min_seconds``)
        after two warm-up steps.

        The network's weights and BatchNorm statistics are put back afterwards.
        """
        kept = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        timed = []
        for readout_only in (False, True):
            stage = Stage(1, 1e-3, 0, self.net.out_dim, readout_only)
            self.optimizer = self._make_optimizer(stage)
            params = _optimized(self.optimizer)
            self._forward = self._wrap()
            self.net.train()
            order = torch.randperm(len(self.images), generator=self._generator, device=self.device)
            batches = itertools.cycle(itertools.islice(self.batches.epoch(order), 4))
            self._timed_steps(batches, params, 1)  # also pays for allocations, kernel choices
            one = self._timed_steps(batches, params, 1)
            # Every process runs as many steps (DistributedDataParallel steps together).
            steps = min(30, max(3, math.ceil(min_seconds / one)))
            steps = int(distributed.agree(steps, self.device))
            timed.append(self._timed_steps(batches, params, steps) / steps)
        self.optimizer = None
        self.net.load_state_dict(kept)
        return timed[0], timed[1]

    def _fit_last_stage_to_deadline(self) -> None:
        """Give the last stage the epochs that end it by ``deadline``, at the time the epochs
        of the whole network have taken so far (the step-time probe's plan, corrected)."""
        last = self.config.stages[-1]
        if last.epochs == 0 or not self._epoch_seconds:
            return
        measured = self._epoch_seconds[1:] or self._epoch_seconds  # the first pays warm-up
        per_epoch = sum(measured) / len(measured)
        epochs = max(1, round((self.deadline - time.perf_counter()) / per_epoch))
        epochs = int(distributed.agree(epochs, self.device, "min"))
        if epochs == last.epochs:
            return
        warmup = warmup_epochs_for(epochs, last.warmup_epochs)
        stages = [*self.config.stages[:-1], replace(last, epochs=epochs, warmup_epochs=warmup)]
        self.config = replace(self.config, stages=stages)
        _report(
            f"picmap: stage {len(stages)} gets {epochs} epochs (planned {last.epochs}) to end "
            "within the time budget",
            self._verbose,
        )

    def _timed_steps(self, batches: Iterator[torch.Tensor], params: list, steps: int) -> float:
        """Seconds that ``steps`` optimizer steps on ``batches`` take, device work included."""
        self._synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            batch = next(batches)
            self._step(batch, batch, params)
        self._synchronize()
        return time.perf_counter() - started

    def reschedule(self, stages: list[Stage]) -> None:
        """Train ``stages`` instead of the configured ones (before training starts)."""
        if self.progress != Progress(losses=[[] for _ in self.config.stages]):
            raise RuntimeError("reschedule() only before training starts")
        self.config = replace(self.config, stages=list(stages))
        self.progress = Progress(losses=[[] for _ in stages])

    def _synchronize(self) -> None:
        """Wait for the device (a host clock says nothing about queued CUDA work)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _neighbour_share(self, index: int) -> float:
        """How often an image's positive is a neighbour in stage ``index``."""
        features = self.config.neighbour_space == "features"
        return 0.0 if features and index == 0 else self.config.neighbour_share

    def _graph_due(self, index: int) -> bool:
        """Whether this epoch starts by finding the neighbours anew in feature space.

        Never mid-epoch: a run resumed there keeps the graph its checkpoint holds.
        """
        cfg, p = self.config, self.progress
        if cfg.neighbour_space != "features" or p.step:
            return False
        first = self._neighbours is None
        every = cfg.neighbour_refresh
        return first or (index == len(cfg.stages) - 1 and every > 0 and p.epoch % every == 0)

    @torch.no_grad()
    def _feature_neighbours(self) -> torch.Tensor:
        """Each image's nearest neighbours by the cosine of the backbone's features now."""
        _report(
            f"picmap: finding each image's {self.config.neighbour_k} nearest neighbours in "
            "the network's feature space",
            self._verbose,
        )
        was_training = self.net.training
        self.net.eval()
        chunks = torch.arange(len(self.images), device=self.images.device).split(_FEATURE_CHUNK)
        features = torch.cat(
            [self.net.backbone(self._network_input(self.images[chunk])).float() for chunk in chunks]
        )
        self.net.train(was_training)
        features = torch.nn.functional.normalize(features, dim=1)
        return nearest_neighbours(features, self.config.neighbour_k)

    def _network_input(self, inputs: torch.Tensor) -> torch.Tensor:
        """A batch of the training inputs as the network takes it, on the device: images
        scaled to [0, 1]; features as they are."""
        inputs = inputs.to(self.device)
        return inputs if self.config.inputs == "features" else inputs.float() / 255

    def neighbours(self) -> torch.Tensor:
        """Each image's nearest neighbours: in pixel space (or by the cosine of frozen
        features) found once per run; in the network's feature space, those found last."""
        if self._neighbours is None:
            space = "frozen feature" if self.config.inputs == "features" else "pixel"
            _report(
                f"picmap: finding each image's {self.config.neighbour_k} nearest neighbours "
                f"in {space} space",
                self._verbose,
            )
            if self.config.inputs == "features":
                points = torch.nn.functional.normalize(self.images.to(self.device).float(), dim=1)
            else:
                points = root_pixel_pca(self.images, self.device)
            self._neighbours = nearest_neighbours(points, self.config.neighbour_k)
        return self._neighbours

    def _checkpoint_due(self) -> bool:
        """Whether to checkpoint now: on a stop request or when the interval has passed.

        With several processes, they decide together (every ``_AGREE_EVERY`` steps and at the
        end of an epoch), so that all of them stop or check their weights at the same step.
        """
        due = self.stop_requested or time.monotonic() - self._last_save > self.checkpoint_interval
        if not self.distributed:
            return due
        step = self.progress.step
        if step % _AGREE_EVERY and step != self.steps_per_epoch:
            return False
        stop, due = distributed.agree_all([self.stop_requested, due], self.device)
        self.stop_requested |= bool(stop)
        return bool(due)

    def _mean_over_processes(self, value: torch.Tensor) -> float:
        return distributed.agree(float(value), self.device, "sum") / self.world_size

    def _check_finite(self, index: int, loss: float, good_state: dict[str, torch.Tensor]) -> None:
        """Raise DivergedError, restoring ``good_state``, once the loss or a weight is not finite.

        Runs before every checkpoint, so a checkpoint never holds a diverged network.
        """
        values = [v for v in self.net.state_dict().values() if v.is_floating_point()]
        weights_finite = bool(torch.stack([torch.isfinite(v).all() for v in values]).all())
        if math.isfinite(loss) and weights_finite:
            return
        self.net.load_state_dict(good_state)
        p = self.progress
        p.step, p.epoch_loss_sum = 0, 0.0
        what = f"the loss became {loss}" if weights_finite else "the weights became inf or NaN"
        raise DivergedError(
            f"training diverged in stage {index + 1}, epoch {p.epoch + 1} ({what}); it stopped "
            "and kept the last good weights and checkpoint. Try a lower learning rate or "
            "gradient clipping (grad_clip)."
        )

    def _time_step(self) -> None:
        """Time the steps after the first (which also pays for warm-up and the neighbour search)
        and, after ``_TIMED_STEPS`` of them, say how long the whole fit will take."""
        self._synchronize()
        now = time.perf_counter()
        if self._timed is None:
            self._timed = (now, 0)
            return
        start, steps = self._timed[0], self._timed[1] + 1
        self._timed = (start, steps)
        if steps == _TIMED_STEPS:
            self._log_estimate((now - start) / steps)

    def _log_estimate(self, per_step: float) -> None:
        """Say how long the whole fit will take at ``per_step`` seconds a step (and if that is
        long)."""
        self._estimate_logged = True
        # Readout-only steps still run the forward pass but little of the backward pass.
        steps = sum(
            (0.4 if s.readout_only else 1.0) * s.epochs * self.steps_per_epoch
            for s in self.config.stages
        )
        estimate = per_step * steps
        _report(f"picmap: estimated training time {format_duration(estimate)}", self._verbose)
        if self.device.type == "cpu" and estimate > _SLOW_FIT_SECONDS:
            _report(
                "picmap: that is long for a CPU. Faster options: a time budget (time_budget=, "
                "--time) or fewer total_epochs, or a GPU (device='cuda').",
                self._verbose,
            )

    # -- checkpoints ---------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Write model, optimizer, seed and progress to one file, atomically (rank 0 only)."""
        self._last_save = time.monotonic()
        if self.checkpoint_dir is None or self.rank != 0:
            return
        tensors = {f"model.{k}": v.detach().contiguous() for k, v in self.net.state_dict().items()}
        if self.optimizer is not None:
            for i, param in enumerate(_optimized(self.optimizer)):
                buf = self.optimizer.state.get(param, {}).get("momentum_buffer")
                if buf is not None:
                    tensors[f"optim.{i}"] = buf.contiguous()
        if self.config.neighbour_space == "features" and self._neighbours is not None:
            tensors["neighbours"] = self._neighbours.to(torch.int32)
        meta = {
            "progress": json.dumps(asdict(self.progress)),
            "readout": str(self.net.out_dim),
            "seed": str(self.seed),
            "epochs": json.dumps([s.epochs for s in self.config.stages]),
        }
        with atomic_path(self.checkpoint_dir / CHECKPOINT_FILE) as tmp:
            save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)

    def resume(self) -> bool:
        """Load the checkpoint in ``checkpoint_dir`` if there is one; True when resumed.

        Every part of the file is checked against this trainer's network, schedule and data
        before anything is loaded; a damaged or foreign checkpoint raises ``ValueError``. With
        several processes, each reads the file, so on several nodes the folder must be shared.
        """
        path = self.checkpoint_dir / CHECKPOINT_FILE if self.checkpoint_dir else None
        resumed = path is not None and path.exists()
        if resumed:
            self._load(path)
        p = self.progress
        position = (resumed, p.stage, p.epoch, p.step, self.seed)
        if any(
            distributed.agree(v, self.device, "min") != distributed.agree(v, self.device, "max")
            for v in position
        ):
            raise ValueError(
                f"the processes found different checkpoints in {self.checkpoint_dir}: with "
                "several nodes, the output folder must be on a file system that all of them share"
            )
        return resumed

    def _load(self, path: Path) -> None:
        tensors, meta = read_safetensors(path, _START_AFRESH)
        if {"progress", "readout", "seed"} - set(meta):
            raise ValueError(f"{path} is not a picmap checkpoint; {_START_AFRESH}")
        progress, readout = self._checked_progress(path, meta)
        seed = meta["seed"]
        if not seed.isdecimal() or int(seed) >= 2**63:
            raise _unfit(path, f"its seed {seed!r} is not a whole number below 2**63")
        if readout != self.net.out_dim:
            self.net.replace_readout(readout)
        model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        wrong = state_mismatch(self.net, model_state)
        if wrong:
            raise _unfit(path, f"its network differs (tensors {wrong[:5]})")
        optimizer = None
        if progress.epoch or progress.step:  # mid-stage; at a stage's start, the stage makes it
            optimizer = self._make_optimizer(self.config.stages[progress.stage])
        params = _optimized(optimizer) if optimizer else []
        buffers = {f"optim.{i}": param for i, param in enumerate(params)}
        graph = tensors.pop("neighbours", None)
        if graph is not None:
            self._neighbours = self._checked_graph(path, graph)
        for name, value in tensors.items():
            known = name.startswith("model.")
            if not known and (name not in buffers or buffers[name].shape != value.shape):
                raise _unfit(path, f"its tensor {name!r} is unknown or of the wrong shape")
        self.net.load_state_dict(model_state)
        for name, param in buffers.items():
            if name in tensors:
                optimizer.state[param]["momentum_buffer"] = tensors[name].to(param.device)
        self.optimizer, self.progress, self.seed = optimizer, progress, int(seed)

    def _checked_graph(self, path: Path, graph: torch.Tensor) -> torch.Tensor:
        """A saved feature-space neighbour graph, refused unless it fits these images."""
        shape = (len(self.images), self.config.neighbour_k)
        fits = self.config.neighbour_space == "features" and tuple(graph.shape) == shape
        if not fits or graph.dtype != torch.int32:
            raise _unfit(path, "its neighbour graph does not fit these images and settings")
        if len(graph) and not (int(graph.min()) >= 0 and int(graph.max()) < len(self.images)):
            raise _unfit(path, "its neighbour graph names images that do not exist")
        return graph.to(self.device, torch.int64)

    def _checked_progress(self, path: Path, meta: dict[str, str]) -> tuple[Progress, int]:
        """The position a checkpoint stopped at, refused unless this schedule has it."""
        stages = self.config.stages
        try:
            p = Progress(**json.loads(meta["progress"]))
            readout = int(meta["readout"])
        except (ValueError, TypeError) as err:  # also bad JSON, and JSON that is not an object
            raise _unfit(path, f"its progress record is damaged ({err})") from None
        well_typed = (
            all(_is_int(v) for v in (p.stage, p.epoch, p.step))
            and _is_finite(p.epoch_loss_sum)
            and isinstance(p.losses, list)
            and all(isinstance(x, list) and all(map(_is_finite, x)) for x in p.losses)
        )
        if not well_typed:
            raise _unfit(path, "its progress record is damaged")
        if len(p.losses) != len(stages):
            raise _unfit(path, f"it was written for {len(p.losses)} stages, not {len(stages)}")
        here = stages[p.stage].epochs if 0 <= p.stage < len(stages) else 0
        lengths = [
            s.epochs if i < p.stage else p.epoch if i == p.stage else 0
            for i, s in enumerate(stages)
        ]
        if (
            not 0 <= p.stage <= len(stages)
            or not 0 <= p.epoch <= here
            or not 0 <= p.step <= (self.steps_per_epoch if p.epoch < here else 0)
            or [len(x) for x in p.losses] != lengths
        ):
            raise _unfit(
                path,
                f"it stopped at stage {p.stage + 1}, epoch {p.epoch + 1}, step {p.step}, which "
                f"this schedule ({[s.epochs for s in stages]} epochs of "
                f"{self.steps_per_epoch} steps) does not have",
            )
        if p.epoch or p.step:  # mid-stage: the stage's own readout
            allowed = {stages[p.stage].out_dim}
        else:  # at a stage's start: the previous stage's readout, or the network's first one
            allowed = {s.out_dim for s in stages} | {self.net.out_dim}
        if readout not in allowed:
            raise _unfit(path, f"its readout size {readout} does not fit its stage")
        return p, readout


_START_AFRESH = "delete it to start afresh"


def saved_epochs(checkpoint_dir: str | Path | None) -> list[int] | None:
    """The stage lengths of the checkpoint in ``checkpoint_dir``, if it has one that says so.

    A fit whose epochs follow from a time budget resumes with the epochs it chose; a damaged
    file gives None here and its clear error when the trainer loads it.
    """
    path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir else None
    if path is None or not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as checkpoint:
            epochs = json.loads((checkpoint.metadata() or {})["epochs"])
    except (OSError, ValueError, KeyError, TypeError, safetensors.SafetensorError):
        return None
    valid = isinstance(epochs, list) and len(epochs) == 3
    return epochs if valid and all(_is_int(e) and e >= 0 for e in epochs) else None


def _unfit(path: Path, problem: str) -> ValueError:
    return ValueError(
        f"{path} does not fit this run: {problem}. Resume with the same settings and data, "
        f"or {_START_AFRESH}"
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
