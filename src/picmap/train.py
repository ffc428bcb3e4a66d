"""The three-stage t-SimCNE schedule: optimizer, learning-rate schedule, checkpoints.

Stage 1 pre-trains the network with a high-dimensional output; stage 2 swaps the readout
for a 2-D (or 3-D) one and trains only that layer; stage 3 fine-tunes everything.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from ._io import atomic_path, read_safetensors
from .augment import AugmentConfig, augment
from .data.batches import DeviceBatches
from .loss import info_nce
from .model import EmbeddingNet, state_mismatch

logger = logging.getLogger("picmap")

CHECKPOINT_FILE = "checkpoint.safetensors"
_SLOW_FIT_SECONDS = 3600


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


def largest_batch_size(try_step: Callable[[int], None], start: int) -> int:
    """The largest of ``start, start/2, …, 2`` for which ``try_step`` runs out of no GPU memory."""
    batch = start
    while batch > 2:
        try:
            try_step(batch)
            return batch
        except torch.OutOfMemoryError:
            batch //= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    try_step(batch)
    return batch


def _report(message: str, verbose: bool) -> None:
    logger.info(message)
    if verbose:
        tqdm.write(message, file=sys.stderr)


def _trainable(net: EmbeddingNet, stage: Stage) -> list[nn.Parameter]:
    for p in net.parameters():
        p.requires_grad_(not stage.readout_only)
    for p in net.head.readout.parameters():
        p.requires_grad_(True)
    return [p for p in net.parameters() if p.requires_grad]


def _format_duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


class Trainer:
    """Runs the stages on one device and keeps enough state to resume after a stop.

    A checkpoint holds the model, the optimizer, the random generator and the position down to
    the step, plus the generator state at the start of the epoch, from which the epoch's
    shuffling is re-drawn on resume: a resumed run continues exactly as if never stopped.
    """

    def __init__(
        self,
        net: EmbeddingNet,
        images: torch.Tensor,
        config: TrainConfig,
        generator: torch.Generator,
        checkpoint_dir: str | Path | None = None,
        checkpoint_interval: float = 60.0,
        device: torch.device | str | None = None,
    ) -> None:
        if config.batch_size > len(images):
            raise ValueError(
                f"batch_size={config.batch_size} is larger than the data ({len(images)} images); "
                f"pass batch_size={len(images)} or less"
            )
        self.net = net.to(memory_format=torch.channels_last) if config.channels_last else net
        self.images = images
        self.device = torch.device(device) if device is not None else images.device
        self.batches = DeviceBatches(images, self.device, config.batch_size)
        self._autocast = config.mixed_precision and self.device.type == "cuda"
        self._forward = torch.compile(self.net) if config.compile else self.net
        self.config = config
        self.generator = generator
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.checkpoint_interval = checkpoint_interval
        self.progress = Progress(losses=[[] for _ in config.stages])
        self.optimizer: torch.optim.Optimizer | None = None
        self.on_epoch_end: Callable[[Trainer], None] | None = None
        self.stop_requested = False
        self._epoch_rng = generator.get_state()
        self._last_save = time.monotonic()
        self._estimate_logged = False

    @property
    def steps_per_epoch(self) -> int:
        return len(self.batches)

    def run(self) -> list[list[float]]:
        """Train every remaining step of every stage; returns the loss per epoch per stage."""
        p = self.progress
        self._estimate_logged |= p.stage > 0 or p.epoch > 0 or p.step > 0
        while p.stage < len(self.config.stages):
            self._run_stage(p.stage)
            p.stage, p.epoch = p.stage + 1, 0
            self.optimizer = None
            self.save_checkpoint()
        return p.losses

    def _make_optimizer(self, stage: Stage) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            _trainable(self.net, stage),
            lr=stage.lr,
            momentum=self.config.momentum,
            weight_decay=self.config.weight_decay,
            fused=self.device.type == "cuda",
        )

    def _run_stage(self, index: int) -> None:
        stage = self.config.stages[index]
        if self.net.out_dim != stage.out_dim:
            self._new_readout(stage.out_dim)
        if self.optimizer is None:
            self.optimizer = self._make_optimizer(stage)
        self.net.train()
        p = self.progress
        bar = tqdm(
            total=stage.epochs * self.steps_per_epoch,
            initial=p.epoch * self.steps_per_epoch + p.step,
            desc=f"stage {index + 1}/{len(self.config.stages)}",
            unit="step",
            disable=not self.config.verbose,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        with bar:
            while p.epoch < stage.epochs:
                started = time.perf_counter()
                steps_before = p.step
                loss = self._run_epoch(index, stage, bar)
                seconds = time.perf_counter() - started
                p.losses[index].append(loss)
                p.epoch, p.step, p.epoch_loss_sum = p.epoch + 1, 0, 0.0
                images_done = (self.steps_per_epoch - steps_before) * self.config.batch_size
                bar.set_postfix(
                    epoch=f"{p.epoch}/{stage.epochs}",
                    loss=f"{loss:.4f}",
                    lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                    img_s=f"{images_done / seconds:.0f}",
                )
                if self.on_epoch_end:
                    self.on_epoch_end(self)

    def _new_readout(self, out_dim: int) -> None:
        """Replace the readout, initialised from the trainer's seeded generator."""
        seed = torch.randint(2**31, (1,), generator=self.generator, device=self.generator.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.net.replace_readout(out_dim)

    def _run_epoch(self, index: int, stage: Stage, bar: tqdm) -> float:
        cfg, B, p = self.config, self.config.batch_size, self.progress
        device = self.device
        good_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        resumed_rng = self.generator.get_state() if p.step else None
        if resumed_rng is not None:
            self.generator.set_state(self._epoch_rng)
        else:
            self._epoch_rng = self.generator.get_state()
        order = torch.randperm(
            len(self.images), generator=self.generator, device=self.generator.device
        )
        if resumed_rng is not None:
            self.generator.set_state(resumed_rng)
        total = torch.tensor(p.epoch_loss_sum, device=device)
        params = [q for group in self.optimizer.param_groups for q in group["params"]]
        for batch in self.batches.epoch(order, p.step):
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(
                    stage, p.epoch * self.steps_per_epoch + p.step, self.steps_per_epoch
                )
            views = torch.cat(
                [augment(batch, cfg.image_size, self.generator, cfg.augment) for _ in range(2)]
            )
            if cfg.channels_last:
                views = views.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, torch.bfloat16, enabled=self._autocast):
                z = self._forward(views)
            loss = info_nce(z[:B], z[B:], cfg.metric, cfg.temperature)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_value_(params, cfg.grad_clip)
            self.optimizer.step()
            total += loss.detach()
            p.step += 1
            bar.update(1)
            if not self._estimate_logged and p.step == min(5, self.steps_per_epoch):
                self._log_estimate(bar)
            if self.stop_requested or time.monotonic() - self._last_save > self.checkpoint_interval:
                p.epoch_loss_sum = float(total)
                self._check_finite(index, p.epoch_loss_sum, good_state)
                self.save_checkpoint()
                if self.stop_requested:
                    raise Interrupted(f"stopped in stage {index + 1}, epoch {p.epoch + 1}")
        mean = float(total) / self.steps_per_epoch
        self._check_finite(index, mean, good_state)
        return mean

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

    def _log_estimate(self, bar: tqdm) -> None:
        """After the first steps, say how long the whole fit will take (and if that is long)."""
        self._estimate_logged = True
        per_step = bar.format_dict["elapsed"] / max(1, bar.n)
        # Readout-only steps still run the forward pass but little of the backward pass.
        steps = sum(
            (0.4 if s.readout_only else 1.0) * s.epochs * self.steps_per_epoch
            for s in self.config.stages
        )
        estimate = per_step * steps
        _report(
            f"picmap: estimated training time {_format_duration(estimate)}", self.config.verbose
        )
        if self.device.type == "cpu" and estimate > _SLOW_FIT_SECONDS:
            _report(
                "picmap: that is long for a CPU. Faster options: backbone='small', fewer "
                "total_epochs, or a GPU (device='cuda').",
                self.config.verbose,
            )

    # -- checkpoints ---------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Write model, optimizer, random state and progress to one file, atomically."""
        self._last_save = time.monotonic()
        if self.checkpoint_dir is None:
            return
        tensors = {f"model.{k}": v.detach().contiguous() for k, v in self.net.state_dict().items()}
        if self.optimizer is not None:
            for i, param in enumerate(self.optimizer.param_groups[0]["params"]):
                buf = self.optimizer.state.get(param, {}).get("momentum_buffer")
                if buf is not None:
                    tensors[f"optim.{i}"] = buf.contiguous()
        tensors["rng"] = self.generator.get_state()
        tensors["epoch_rng"] = self._epoch_rng
        meta = {"progress": json.dumps(asdict(self.progress)), "readout": str(self.net.out_dim)}
        with atomic_path(self.checkpoint_dir / CHECKPOINT_FILE) as tmp:
            save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)

    def resume(self) -> bool:
        """Load the checkpoint in ``checkpoint_dir`` if there is one; True when resumed.

        Every part of the file is checked against this trainer's network, schedule and data
        before anything is loaded; a damaged or foreign checkpoint raises ``ValueError``.
        """
        path = self.checkpoint_dir / CHECKPOINT_FILE if self.checkpoint_dir else None
        if path is None or not path.exists():
            return False
        tensors, meta = read_safetensors(path, _START_AFRESH)
        if {"progress", "readout"} - set(meta) or {"rng", "epoch_rng"} - set(tensors):
            raise ValueError(f"{path} is not a picmap checkpoint; {_START_AFRESH}")
        progress, readout = self._checked_progress(path, meta)
        if readout != self.net.out_dim:
            self.net.replace_readout(readout)
        model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        wrong = state_mismatch(self.net, model_state)
        if wrong:
            raise _unfit(path, f"its network differs (tensors {wrong[:5]})")
        optimizer = None
        if progress.epoch or progress.step:  # mid-stage; at a stage's start, the stage makes it
            optimizer = self._make_optimizer(self.config.stages[progress.stage])
        params = optimizer.param_groups[0]["params"] if optimizer else []
        buffers = {f"optim.{i}": param for i, param in enumerate(params)}
        for name, value in tensors.items():
            known = name.startswith("model.") or name in ("rng", "epoch_rng")
            if not known and (name not in buffers or buffers[name].shape != value.shape):
                raise _unfit(path, f"its tensor {name!r} is unknown or of the wrong shape")
        scratch = torch.Generator(self.generator.device)
        for name in ("epoch_rng", "rng"):
            try:
                scratch.set_state(tensors[name])
            except RuntimeError as err:
                raise _unfit(path, f"its generator state {name!r} is damaged ({err})") from None
        self.net.load_state_dict(model_state)
        for name, param in buffers.items():
            if name in tensors:
                optimizer.state[param]["momentum_buffer"] = tensors[name].to(param.device)
        self.generator.set_state(tensors["rng"])
        self.optimizer, self.progress, self._epoch_rng = optimizer, progress, tensors["epoch_rng"]
        return True

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


def _unfit(path: Path, problem: str) -> ValueError:
    return ValueError(
        f"{path} does not fit this run: {problem}. Resume with the same settings and data, "
        f"or {_START_AFRESH}"
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
