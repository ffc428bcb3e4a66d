"""TSimCNE: the scikit-learn style estimator that fits a 2-D map of images and places new ones."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import numbers
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from ._io import atomic_path, read_safetensors, write_text_atomic
from .augment import augment, grayscale
from .budget import (
    check_budget,
    default_budget,
    epochs_for_budget,
    format_duration,
)
from .data.sources import to_store
from .data.store import ImageStore
from .features import batch_size_for, frozen_features
from .loss import METRICS, info_nce
from .model import BACKBONES, EmbeddingNet, make_backbone, state_mismatch
from .pretrained import (
    WEIGHT_LIBRARIES,
    PretrainedBackbone,
    build_backbone,
    check_name,
    library_of,
    load_backbone,
)
from .recipes import AUTO, Recipe, recipe_for_images, resolve_recipe
from .train import (
    Stage,
    TrainConfig,
    Trainer,
    free_device_memory,
    largest_batch_size,
    saved_epochs,
    warmup_epochs_for,
)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
_PRETRAIN_DIM = 128
# "auto" batch sizes stop at the paper's largest batch: the learning rate grows with the batch
# (0.12 × 8192/256 = 3.84 at 8192), and nothing larger has been measured.
_MAX_AUTO_BATCH = 1024
_MAX_CPU_BATCH = 512
# The paper's schedule: what CUDA gets without epochs or a budget.
_PAPER_EPOCHS = (1000, 50, 450)
# On a CPU, larger images are downscaled to this side unless image_size= is given: the CPU
# recipes were measured at 28–32 px, and each step costs in proportion to the pixels.
_CPU_IMAGE_SIZE = 32
# Share of the free GPU memory that the batch probe's step may peak at (headroom for the
# allocator's fragmentation, cuDNN workspaces and the evaluation passes).
_PROBE_SHARE = 0.8
# How a backbone is used: its features computed once and only the head trained ("frozen");
# everything trained, the backbone at the recipe's pretrained_lr_ratio ("finetune"); or
# everything at one learning rate ("train", a network trained from scratch).
BACKBONE_MODES = ("auto", "frozen", "finetune", "train")


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then the CPU; anything else is taken as given."""
    if str(device) != "auto":
        try:
            return torch.device(device)
        except RuntimeError as err:
            raise ValueError(f"device={device!r} is not a device torch knows ({err})") from None
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class TSimCNE(BaseEstimator):
    """t-SimCNE: a parametric 2-D map of images learned by contrastive learning.

    A network is trained so that two random augmentations of one image (or, in the
    "neighbours" recipe, of an image and a pixel-space neighbour) land close together and all
    other images lie apart, under the Cauchy similarity ``1/(1+d²)`` of the map. It
    trains in three stages: (1) pre-training with a 128-D output, (2) a new 2-D readout layer
    trained alone, (3) the whole network fine-tuned at a fraction of the learning rate (the
    recipe's: 1/10 in picmap's, 1/1000 in the paper's).

    Parameters
    ----------
    backbone : "auto", "resnet18", "small", "tiny", "mlp" or nn.Module
        "auto" (default): "resnet18" on CUDA; on other devices "mlp" for images the recipe pairs
        with pixel neighbours (up to 64×64 grey), else "small". "resnet18" is the paper's CIFAR
        ResNet-18 (GPU recommended). "small" is a five-layer CNN that makes CPU training
        practical for small images; "tiny" is the same CNN at half the width, 2.5× faster per
        training step on a CPU. "mlp" is two hidden layers on the pixels, for small aligned
        images (digits, clothing, cell crops) with ``recipe="neighbours"``: the best map of
        Fashion-MNIST measured, and the fastest; no backbone for photographs. Any module mapping
        a float batch ``N×C×H×W`` in [0, 1] to ``N×feature_dim`` features may be passed.

        A pretrained network is named ``"LIBRARY:NAME"`` (:mod:`picmap.pretrained`):
        ``"torchvision:resnet50"`` (``/IMAGENET1K_V2`` picks the weights),
        ``"timm:convnext_tiny.fb_in22k"``, ``"open_clip:ViT-B-32/laion2b_s34b_b79k"`` (needing
        the extras ``picmap[timm]``, ``picmap[open_clip]``), or ``"picmap:FOLDER"``, the
        backbone of a saved map: pretrain once on a large collection, then map others from it.
        Images are resized to the network's input size and normalised as it expects.
    weights : path, optional
        A local weights file for a torchvision, timm or open_clip backbone, instead of the
        library's download: a ``.safetensors`` state dict, or a ``.pth`` one (read with
        ``torch.load(weights_only=True)``). For machines with no internet.
    backbone_mode : "auto", "frozen", "finetune" or "train"
        How the backbone learns. "frozen": its features are computed once (cached, see
        ``feature_cache``) and only the projection head trains, through the same three stages;
        as no augmentation can vary a fixed feature vector, the positives are each image's
        neighbours by the cosine of those features (recipe "neighbours"). Minutes on a CPU.
        "finetune": the three stages on the whole network with augmented views, the pretrained
        part at the recipe's ``pretrained_lr_ratio`` (0.1) of the learning rate. "train": the
        whole network at one learning rate (what a network from scratch gets). "auto"
        (default): "frozen" for a torchvision, timm or open_clip network (fine-tuning
        ResNet-18 at 224 px takes 6 s a step of 64 images on 2 CPU cores), "finetune" for a
        picmap backbone (the better map measured), else "train".
    feature_cache : path, optional
        Folder for the frozen backbone's features (default: ``checkpoint_dir``; none without
        either). A file there is named by a digest of the backbone and the images, so a rerun or
        another map of the same images reuses it, and changed images or weights do not.
    feature_dim : int, optional
        Output size of a custom backbone (required then; known for named ones).
    hidden_dim : int
        Width of the projection head's hidden layer (1024 in the paper).
    out_dim : int
        Dimensions of the map: 2 (default) or 3.
    metric : "cauchy" or "cosine"
        "cauchy" is t-SimCNE's similarity and the one that makes sense for a map; "cosine" is
        SimCLR's loss (with ``temperature``), useful for high-dimensional features.
    total_epochs : three ints or "auto"
        Epochs of stages 1, 2 and 3. The paper uses ``[1000, 50, 450]``; fewer still give a
        useful map, more give a cleaner one. "auto" (default): set by ``time_budget`` when one
        is given; else the paper's on CUDA, and on other devices the default budget.
    time_budget : float, optional
        Seconds of training: the step time is measured on this machine first, and the three
        stages get the epochs that fill the budget, in the recipe's proportions. With
        ``total_epochs="auto"`` on a CPU the default is 10 minutes for 10,000 images, growing
        as N^1.5 (46 s for the 1,797 digits), at least 20 s and at most 30 minutes. Loading the
        images and placing them on the map come on top.
    batch_size : int or "auto"
        Images per step (each gives two views). Larger batches give more negatives. "auto"
        (default): a power of two that leaves at least 4 steps per epoch; on CUDA the largest
        whose training step peaks within 80 % of the free GPU memory, at most 1024 (the
        paper's batch); elsewhere at most 512.
    learning_rate : float or "auto"
        Stage-1 and stage-2 learning rate; "auto" is the recipe's ``lr_per_256 × batch_size /
        256`` (0.03 × batch_size / 256 in the paper's recipe).
    warmup_epochs : int
        Linear warm-up at the start of stages 1 and 3, capped at a tenth of the stage.
    image_size : int, optional
        Side of the square images the network sees. By default the data's own size when all
        images share it, else the median of their shorter sides.
    device : "auto" or a torch device
        "auto" picks CUDA, then Apple MPS, then the CPU.
    seed : int, optional
        Seeds initialisation, shuffling and augmentation: the same seed on the same device
        gives the same map.
    verbose : bool
        Progress bars and the time estimate on standard error.
    checkpoint_dir : path, optional
        Where training writes a checkpoint (every ``checkpoint_interval`` seconds, at the end
        of each stage and on Ctrl-C); a fit finds it there and resumes exactly where it stopped.
    checkpoint_interval : float
        Seconds between checkpoints: a crash loses at most this much training.
    mixed_precision : bool
        On CUDA, run the network in bfloat16 autocast (the loss stays in float32).
    compile_network : bool
        Run the network through ``torch.compile``.
    recipe : "auto", "picmap", "paper", "neighbours" or Recipe
        The learning-rate rule, the stage-3 learning rate, the augmentation strength and the
        positive pairs (:mod:`picmap.recipes`). "paper" is the published t-SimCNE recipe;
        "picmap" is tuned for short runs; "neighbours" pairs each image with a pixel-space
        neighbour, for aligned images. "auto" (default): "neighbours" for single-channel
        images, "picmap" for colour ones and for fewer than 16 images (see
        ``benchmarks/RESULTS.md``).
    sync_batchnorm : bool
        When training on several GPUs (``torchrun``), compute BatchNorm statistics over the
        global batch instead of each GPU's share.
    """

    def __init__(
        self,
        backbone: str | nn.Module = AUTO,
        *,
        weights: str | Path | None = None,
        backbone_mode: str = AUTO,
        feature_cache: str | Path | None = None,
        feature_dim: int | None = None,
        hidden_dim: int = 1024,
        out_dim: int = 2,
        metric: str = "cauchy",
        temperature: float = 0.5,
        total_epochs: Sequence[int] | str = AUTO,
        time_budget: float | None = None,
        batch_size: int | str = AUTO,
        learning_rate: float | str = "auto",
        warmup_epochs: int = 10,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        grad_clip: float | None = 4.0,
        image_size: int | None = None,
        device: str | torch.device = "auto",
        seed: int | None = None,
        verbose: bool = True,
        checkpoint_dir: str | Path | None = None,
        checkpoint_interval: float = 60.0,
        mixed_precision: bool = True,
        compile_network: bool = False,
        recipe: str | Recipe = AUTO,
        sync_batchnorm: bool = False,
    ) -> None:
        self.backbone = backbone
        self.weights = weights
        self.backbone_mode = backbone_mode
        self.feature_cache = feature_cache
        self.feature_dim = feature_dim
        self.hidden_dim = hidden_dim
        self.out_dim = out_dim
        self.metric = metric
        self.temperature = temperature
        self.total_epochs = total_epochs
        self.time_budget = time_budget
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.warmup_epochs = warmup_epochs
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip
        self.image_size = image_size
        self.device = device
        self.seed = seed
        self.verbose = verbose
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_interval = checkpoint_interval
        self.mixed_precision = mixed_precision
        self.compile_network = compile_network
        self.recipe = recipe
        self.sync_batchnorm = sync_batchnorm

    # -- fitting -------------------------------------------------------------------------------

    def fit(self, X, y=None, *, on_epoch_end: Callable[[Trainer], None] | None = None) -> TSimCNE:
        """Learn the map of ``X`` (arrays, tensors, a Dataset, a folder or a list of files).

        ``y`` optionally gives labels; they are kept with the embedding but do not affect it.
        ``on_epoch_end`` is called with the :class:`~picmap.train.Trainer` after every epoch
        (its ``progress`` and ``net`` say where training stands), e.g. to log or evaluate.

        In processes started by ``torchrun`` the fit is data-parallel (:mod:`picmap.distributed`):
        ``batch_size`` is the global batch, split evenly among the processes, and every process
        ends with the same fitted model; only rank 0 writes checkpoints and shows progress.
        """
        self._check_params()
        # Loaded first: a wrong name or a missing weights file is said before images load.
        self._pretrained = self._load_pretrained()
        store = to_store(X, labels=y, image_size=self.image_size, verbose=self._talks())
        if len(store) < 2:
            raise ValueError(
                f"X holds {len(store)} image; a map needs at least 2 (and enough for a batch)"
            )
        self.device_ = distributed.process_device(resolve_device(self.device))
        on_gpu = self.device_.type == "cuda"
        store = self._sized_for_network(store, on_gpu)
        with distributed.process_group(self.device_):
            seed = self.seed if self.seed is not None else random.randrange(2**31)
            self.seed_ = distributed.same_everywhere(seed, self.device_)
            self.image_size_, self.channels_ = store.image_size, store.channels
            self.backbone_mode_ = self._choose_mode()
            frozen = self.backbone_mode_ == "frozen"
            self.recipe_ = recipe_for_images(
                self.recipe, store.channels, len(store), on_gpu, frozen
            )
            self.backbone_ = self._choose_backbone()
            self.model_ = self._build_net(store.channels, self.device_)
            if frozen:
                self._check_frozen_recipe()
                inputs = self._frozen_features(store).to(self.device_)
                trained = self.model_.head_on_features()
            else:  # placed before the batch probe
                inputs, trained = _place_images(store.images, self.device_), self.model_
            self.batch_size_ = self._choose_batch_size(len(store))
            self.total_epochs_ = self._fixed_epochs()
            trainer = Trainer(
                trained,
                inputs,
                self._train_config(self.total_epochs_ or (1, 1, 1)),
                self.seed_,
                checkpoint_dir=self.checkpoint_dir,
                checkpoint_interval=self.checkpoint_interval,
                device=self.device_,
            )
            if self.total_epochs_ is None:
                self.total_epochs_ = self._budget_epochs(trainer, store)
                trainer.reschedule(self._train_config(self.total_epochs_).stages)
            trainer.on_epoch_end = on_epoch_end
            trainer.resume()
            self.seed_ = trainer.seed  # a resumed run keeps the seed it started with
            with _stop_on_signal(trainer):
                self.loss_history_ = trainer.run()
            self.total_epochs_ = tuple(stage.epochs for stage in trainer.config.stages)
        self._pretrained = None  # its weights live on in model_
        self._keep_data_info(store)
        self.embedding_ = self._run(inputs, trained) if frozen else self._embed(store)
        return self

    def fit_transform(
        self, X, y=None, *, on_epoch_end: Callable[[Trainer], None] | None = None
    ) -> np.ndarray:
        """Fit, and return the map coordinates of ``X`` (``N×out_dim`` float32)."""
        return self.fit(X, y, on_epoch_end=on_epoch_end).embedding_

    def _check_params(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric={self.metric!r} is not known; use one of {METRICS}")
        library = library_of(self.backbone)
        if library is not None:
            check_name(self.backbone)
        elif isinstance(self.backbone, str) and self.backbone not in (AUTO, *BACKBONES):
            raise ValueError(
                f"backbone={self.backbone!r} is not known; use one of {(AUTO, *BACKBONES)}, a "
                "pretrained network ('torchvision:resnet18', 'timm:…', 'open_clip:…', "
                "'picmap:FOLDER') or an nn.Module"
            )
        if isinstance(self.backbone, nn.Module) and not self.feature_dim:
            raise ValueError("a custom backbone needs feature_dim= (the size of its output)")
        if self.weights is not None and library not in WEIGHT_LIBRARIES:
            raise ValueError(
                f"weights={str(self.weights)!r} is for a torchvision, timm or open_clip backbone "
                f"(backbone={self.backbone!r} is none)"
            )
        if self.backbone_mode not in BACKBONE_MODES:
            raise ValueError(f"backbone_mode={self.backbone_mode!r} is not one of {BACKBONE_MODES}")
        untrained = library is None and not isinstance(self.backbone, nn.Module)
        if untrained and self.backbone_mode in ("frozen", "finetune"):
            raise ValueError(
                f"backbone_mode={self.backbone_mode!r} needs a pretrained backbone "
                f"(backbone={self.backbone!r} starts from random weights): name one, e.g. "
                "'torchvision:resnet18' or 'picmap:FOLDER', or pass an nn.Module"
            )
        epochs = [] if isinstance(self.total_epochs, str) else list(self.total_epochs)
        if self.total_epochs != AUTO and (
            len(epochs) != 3 or any(not isinstance(e, int) or e < 0 for e in epochs)
        ):
            raise ValueError(
                f"total_epochs={self.total_epochs!r} must be three whole numbers ≥ 0 "
                "(epochs of stages 1, 2, 3), e.g. [1000, 50, 450], or 'auto'"
            )
        if self.time_budget is not None:
            check_budget(self.time_budget)
            if self.total_epochs != AUTO:
                raise ValueError(
                    f"time_budget={self.time_budget!r} and total_epochs={self.total_epochs!r} "
                    "both set the length of training; give one of them"
                )
        if not isinstance(self.out_dim, int) or self.out_dim < 1:
            raise ValueError(f"out_dim={self.out_dim!r} must be a positive int (2 for a map)")
        if self.batch_size != "auto" and (
            not isinstance(self.batch_size, int) or self.batch_size < 2
        ):
            raise ValueError(f"batch_size={self.batch_size!r} must be an int ≥ 2 or 'auto'")
        lr = self.learning_rate
        if lr != "auto" and not (isinstance(lr, int | float) and lr > 0 and math.isfinite(lr)):
            raise ValueError(f"learning_rate={lr!r} must be a positive number or 'auto'")
        if self.recipe != AUTO:
            resolve_recipe(self.recipe)
        for name, whole, positive, optional in _NUMERIC_PARAMS:
            _check_number(name, getattr(self, name), whole, positive, optional)

    def _build_net(self, channels: int, device: torch.device) -> EmbeddingNet:
        pretrained = getattr(self, "_pretrained", None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed_)
            if isinstance(self.backbone, nn.Module):
                # A copy: fitting never changes the module the user passed in.
                backbone, feature_dim = copy.deepcopy(self.backbone), int(self.feature_dim)
            elif pretrained is not None:
                backbone, feature_dim = copy.deepcopy(pretrained), pretrained.feature_dim
            else:
                backbone, feature_dim = make_backbone(self.backbone_, channels, self.image_size_)
            net = EmbeddingNet(backbone, feature_dim, self.hidden_dim, _PRETRAIN_DIM)
        return net.to(device)

    def _train_config(self, epochs: Sequence[int]) -> TrainConfig:
        batch, recipe = self.batch_size_, resolve_recipe(self.recipe_)
        auto_lr = self.learning_rate == "auto"
        lr = recipe.lr_per_256 * batch / 256 if auto_lr else self.learning_rate
        e1, e2, e3 = epochs
        stages = [
            Stage(e1, lr, warmup_epochs_for(e1, self.warmup_epochs), _PRETRAIN_DIM, False),
            Stage(e2, lr, 0, self.out_dim, True),
            Stage(
                e3,
                lr * recipe.finetune_lr_ratio,
                warmup_epochs_for(e3, self.warmup_epochs),
                self.out_dim,
                False,
            ),
        ]
        return TrainConfig(
            stages=stages,
            batch_size=batch,
            image_size=self.image_size_,
            metric=self.metric,
            temperature=self.temperature,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            grad_clip=self.grad_clip,
            augment=recipe.augment_config(),
            readout_init=recipe.readout_init,
            neighbour_share=recipe.neighbour_share,
            neighbour_k=recipe.neighbour_k,
            neighbour_space=recipe.neighbour_space,
            neighbour_refresh=recipe.neighbour_refresh,
            inputs="features" if self.backbone_mode_ == "frozen" else "images",
            backbone_lr_ratio=(
                recipe.pretrained_lr_ratio if self.backbone_mode_ == "finetune" else 1.0
            ),
            mixed_precision=self.mixed_precision,
            compile=self.compile_network,
            sync_batchnorm=self.sync_batchnorm,
            verbose=self._talks(),
        )

    def _fixed_epochs(self) -> tuple[int, int, int] | None:
        """The epochs asked for, or those of the checkpoint this fit resumes, or the paper's on
        CUDA without a budget; None when the budget decides."""
        if self.total_epochs != AUTO:
            return tuple(self.total_epochs)
        saved = saved_epochs(self.checkpoint_dir)
        if saved is not None:
            return tuple(saved)
        if self.time_budget is None and self.device_.type == "cuda":
            return _PAPER_EPOCHS
        return None

    def _budget_epochs(self, trainer: Trainer, store: ImageStore) -> tuple[int, int, int]:
        """Epochs that fill the time budget at the step time measured with ``trainer``."""
        given = self.time_budget is not None
        frozen = self.backbone_mode_ == "frozen"
        budget = check_budget(self.time_budget) if given else default_budget(len(store), frozen)
        started = time.perf_counter()
        trainer.deadline = started + budget
        config = trainer.config
        if config.neighbour_share > 0 and config.neighbour_space == "pixels":
            trainer.neighbours()  # found once; the fit reuses them
        per_step = trainer.seconds_per_step()
        per_step = distributed.agree_all(per_step, self.device_)  # the slowest process
        left = budget - (time.perf_counter() - started)
        shares = resolve_recipe(self.recipe_).epoch_shares
        epochs = epochs_for_budget(left, shares, per_step, trainer.steps_per_epoch)
        if self._talks():
            message = self._budget_message(budget, given, epochs, per_step[0], len(store))
            tqdm.write(message, file=sys.stderr)
        return epochs

    def _budget_message(
        self, budget: float, given: bool, epochs: Sequence[int], per_step: float, n_images: int
    ) -> str:
        """What the budget bought, and what more time or a GPU would buy."""
        source = "asked for" if given else f"the default for {n_images:,} images"
        backbone = self.backbone_ if isinstance(self.backbone_, str) else "custom"
        if self.backbone_mode_ == "frozen":
            backbone = f"head on the frozen {backbone}"
        lines = [
            f"picmap: training for {format_duration(budget)} ({source}; time_budget= or "
            f"--time sets it): {per_step:.2f} s per step of {self.batch_size_} images, so "
            f"epochs {', '.join(map(str, epochs))} of the {self.recipe_!s} recipe with the "
            f"{backbone} backbone."
        ]
        if self.device_.type != "cuda":
            lines.append(
                "picmap: more time gives a cleaner map (the paper trains 1,500 epochs); a GPU "
                "trains ResNet-18 at full size, tens of times faster."
            )
        return "\n".join(lines)

    def _choose_backbone(self) -> str | nn.Module:
        """The backbone asked for; for "auto" resnet18 on CUDA, else a CPU-sized network.

        On a CPU, images that the recipe pairs with pixel neighbours get the MLP when they have at
        most ``_MLP_MAX_INPUTS`` pixel values (the best Fashion-MNIST map, benchmarks/RESULTS.md);
        colour images the tiny CNN (2.7× the small CNN's steps per second on 32×32 colour
        images: 20 epochs of colour Fashion-MNIST in under 4 minutes); all others the small CNN.
        """
        if self.backbone != AUTO:
            return self.backbone
        if self.device_.type == "cuda":
            return "resnet18"
        inputs = self.channels_ * self.image_size_**2
        recipe = resolve_recipe(self.recipe_)
        pixel_pairs = recipe.neighbour_share > 0 and recipe.neighbour_space == "pixels"
        if pixel_pairs and inputs <= _MLP_MAX_INPUTS:
            return "mlp"
        return "tiny" if self.channels_ > 1 else "small"

    def _load_pretrained(self) -> PretrainedBackbone | None:
        """The pretrained network the backbone names, with its weights; None for the others."""
        if library_of(self.backbone) is None:
            return None
        return load_backbone(self.backbone, self.weights, verbose=self._talks())

    def _choose_mode(self) -> str:
        """The backbone mode asked for; with "auto", a library's network is frozen, picmap's
        own fine-tuned, and the others trained.

        A torchvision, timm or open_clip network sees 224-px images: fine-tuning ResNet-18 on
        2 CPU cores takes 6.4 s per step of 64 images, about 16 minutes an epoch of 10,000
        images, while its frozen features take one pass. picmap's backbones are networks sized
        for a CPU: fine-tuned, the map of unseen colour Fashion-MNIST classes scored 48.0 %
        kNN in 2 minutes, frozen 42.5 %, from scratch 38.1 % (benchmarks/RESULTS.md).
        """
        if self.backbone_mode != AUTO:
            return self.backbone_mode
        library = library_of(self.backbone)
        if library is None:
            return "train"
        return "finetune" if library == "picmap" else "frozen"

    def _sized_for_network(self, store: ImageStore, on_gpu: bool) -> ImageStore:
        """The images at most as large as a pretrained network's input (it resizes them to
        that anyway) or, on a CPU, as ``_CPU_IMAGE_SIZE`` — unless image_size= is given."""
        if self.image_size is not None:
            return store
        if self._pretrained is not None:
            largest, reason = self._pretrained.input_size, "the backbone's input size"
        elif not on_gpu:
            largest, reason = _CPU_IMAGE_SIZE, "for the CPU"
        else:
            return store
        if store.image_size <= largest:
            return store
        if self._talks():
            tqdm.write(
                f"picmap: images downscaled from {store.image_size} to {largest} px, {reason} "
                "(image_size= sets the size).",
                file=sys.stderr,
            )
        return to_store(store, image_size=largest, verbose=self._talks())

    def _check_frozen_recipe(self) -> None:
        recipe = resolve_recipe(self.recipe_)
        if recipe.neighbour_share == 0 or recipe.neighbour_space != "pixels":
            raise ValueError(
                f"recipe={self.recipe!r} pairs views of one image, which a frozen backbone's "
                "fixed features cannot vary: with backbone_mode='frozen' use recipe='neighbours' "
                "(the 'auto' choice) or one whose positives are neighbours (neighbour_share > 0, "
                "neighbour_space='pixels')"
            )

    def _frozen_features(self, store: ImageStore) -> torch.Tensor:
        """The frozen backbone's features of the images, from the cache when it has them."""
        backbone = self.model_.backbone
        return frozen_features(
            backbone,
            getattr(backbone, "description", {"name": "custom"}),
            store.images,
            self.device_,
            self.feature_cache or self.checkpoint_dir,
            verbose=self._talks(),
            write=distributed.rank() == 0,
        )

    def _talks(self) -> bool:
        """Whether this process shows progress and warnings (with several, only rank 0)."""
        return self.verbose and distributed.rank() == 0

    def _choose_batch_size(self, n_images: int) -> int:
        """The batch size asked for, or with "auto" the largest that fits (CUDA) or 512.

        With several processes, "auto" is what fits on the smallest device, times their number.
        """
        if self.batch_size != "auto":
            return self.batch_size
        frozen = self.backbone_mode_ == "frozen"  # the head alone: no memory to probe
        processes = distributed.world_size()
        on_gpu = self.device_.type == "cuda"
        largest = _MAX_AUTO_BATCH if on_gpu else _MAX_CPU_BATCH
        # At least 4 steps an epoch: fewer leave a small collection too few updates.
        cap = 2
        while cap * 2 <= min(largest, n_images // 4):
            cap *= 2
        cap = max(1, cap // processes)
        if not on_gpu or frozen:
            return cap * processes
        fits = self._probe_batch_size(max(2, cap))
        free_device_memory()  # what the probe held, before training starts
        return int(distributed.agree(fits, self.device_, "min")) * processes

    def _probe_batch_size(self, cap: int) -> int:
        """The largest power-of-two batch up to ``cap`` whose whole training step (augmented
        views, the (2B)² logits, backward, momentum buffers) peaks within ``_PROBE_SHARE`` of
        the GPU memory free now, with the images already placed."""
        probe = self._build_net(self.channels_, self.device_)
        optimizer = torch.optim.SGD(probe.parameters(), lr=0.0, momentum=0.9)
        free, _ = torch.cuda.mem_get_info(self.device_)
        budget = torch.cuda.memory_allocated(self.device_) + _PROBE_SHARE * free
        size, gen = self.image_size_, torch.Generator(self.device_).manual_seed(0)

        def one_step(batch: int) -> None:
            torch.cuda.reset_peak_memory_stats(self.device_)
            shape = (2 * batch, self.channels_, size, size)
            images = torch.randint(0, 256, shape, generator=gen, device=self.device_)
            views = augment(images.to(torch.uint8), size, gen)
            with torch.autocast("cuda", torch.bfloat16, enabled=self.mixed_precision):
                z = probe(views)
            info_nce(z[:batch], z[batch:]).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if torch.cuda.max_memory_allocated(self.device_) > budget:
                raise torch.OutOfMemoryError(
                    f"a step of batch {batch} needs over {_PROBE_SHARE:.0%} of the free memory"
                )

        return largest_batch_size(one_step, cap)

    def _keep_data_info(self, store: ImageStore) -> None:
        self.labels_ = store.labels
        self.class_names_ = store.class_names
        self.file_names_ = store.file_names

    # -- placing images ------------------------------------------------------------------------

    def transform(self, X) -> np.ndarray:
        """Place images on the fitted map (no augmentation): ``N×out_dim`` float32."""
        return self._embed(self._fitted_store(X))

    def features(self, X) -> np.ndarray:
        """The backbone's high-dimensional features of ``X`` (what the map is built from)."""
        return self._embed(self._fitted_store(X), self.model_.backbone)

    def _fitted_store(self, X) -> ImageStore:
        if not hasattr(self, "model_"):
            raise NotFittedError(
                "this TSimCNE is not fitted yet: call fit(X) (or load a saved one)"
            )
        return to_store(X, image_size=self.image_size_, verbose=self.verbose)

    def _embed(self, store: ImageStore, network: nn.Module | None = None) -> np.ndarray:
        images = _match_channels(store.images, self.channels_)
        pretrained = isinstance(self.model_.backbone, PretrainedBackbone)
        batch_size = batch_size_for(self.device_) if pretrained else 1024
        return self._run(images, network or self.model_, batch_size)

    @torch.no_grad()
    def _run(self, inputs: torch.Tensor, network: nn.Module, batch_size: int = 1024) -> np.ndarray:
        """``network``'s outputs for uint8 images (scaled to [0, 1]) or feature rows."""
        self.model_.eval()
        network.eval()
        out = None  # one array, filled batch by batch: no list of small tensors to concatenate
        for start in tqdm(
            range(0, len(inputs), batch_size),
            desc="placing images",
            unit="batch",
            disable=not self._talks() or len(inputs) <= 10 * batch_size,
        ):
            batch = inputs[start : start + batch_size].to(self.device_)
            batch = batch.float() / 255 if batch.dtype == torch.uint8 else batch
            result = network(batch).float().cpu()
            if out is None:
                out = torch.empty((len(inputs), *result.shape[1:]))
            out[start : start + len(result)] = result
        return out.numpy()

    # -- saving --------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write ``model.safetensors`` and ``config.json`` into the folder ``path``."""
        if not hasattr(self, "model_"):
            raise NotFittedError("nothing to save: this TSimCNE is not fitted yet")
        folder = Path(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model_.state_dict().items()}
        with atomic_path(folder / MODEL_FILE) as tmp:
            save_file(state, str(tmp))
        params = self.get_params()
        params["backbone"] = self.backbone_ if isinstance(self.backbone_, str) else "custom"
        recipe = self.recipe_
        params["recipe"] = recipe if isinstance(recipe, str) else resolve_recipe(recipe).to_json()
        params["device"] = str(params["device"])
        params["total_epochs"] = list(self.total_epochs_)  # as trained
        params["time_budget"] = None
        params["checkpoint_dir"] = None
        params["weights"] = params["feature_cache"] = None  # the weights are in MODEL_FILE
        params["backbone_mode"] = self.backbone_mode_
        config = {
            "format_version": FORMAT_VERSION,
            "params": params,
            "image_size": self.image_size_,
            "channels": self.channels_,
            "seed": self.seed_,
            "class_names": self.class_names_,
        }
        if isinstance(self.model_.backbone, PretrainedBackbone):
            config["pretrained"] = self.model_.backbone.description
        write_text_atomic(folder / CONFIG_FILE, json.dumps(config, indent=2))

    @classmethod
    def load(
        cls, path: str | Path, *, backbone: nn.Module | None = None, device: str = "auto"
    ) -> TSimCNE:
        """Load a map saved with :meth:`save`. A custom backbone must be passed again."""
        folder = Path(path)
        config = _read_config(folder)
        params = config["params"]
        if params.get("backbone") == "custom":
            if backbone is None:
                raise ValueError(f"{path} was fitted with a custom backbone: pass backbone=")
            params["backbone"] = backbone
        params.update(device=device, verbose=False)
        model = cls(**params)
        try:
            model._check_params()
        except ValueError as err:
            raise ValueError(f"{folder / CONFIG_FILE}: {err}; re-save the model") from None
        model.device_ = resolve_device(device)
        model.backbone_, model.recipe_ = model.backbone, model.recipe
        model.backbone_mode_ = "train" if model.backbone_mode == AUTO else model.backbone_mode
        if "pretrained" in config:
            try:
                model._pretrained = build_backbone(config["pretrained"])
            except ValueError as err:
                raise ValueError(f"{folder / CONFIG_FILE}: {err}; re-save the model") from None
        model.seed_ = config["seed"]
        model.image_size_, model.channels_ = config["image_size"], config["channels"]
        model.class_names_ = config["class_names"]
        weights, _ = read_safetensors(folder / MODEL_FILE, "re-save the model")
        _check_weights_match(folder / MODEL_FILE, weights, model)
        model.model_ = model._build_net(model.channels_, model.device_)
        model.model_.replace_readout(model.out_dim)
        model.model_.load_state_dict(weights)
        model._pretrained = None
        return model


# The most pixel values per image (channels × side²) for which "auto" picks the MLP on a CPU:
# its first layer has 512 weights per value (64×64 grey: 2.1M).
_MLP_MAX_INPUTS = 64 * 64

# Further numeric parameters: (name, whole number?, > 0 (else ≥ 0)?, None allowed?)
_NUMERIC_PARAMS = (
    ("feature_dim", True, True, True),
    ("hidden_dim", True, True, False),
    ("warmup_epochs", True, False, False),
    ("temperature", False, True, False),
    ("momentum", False, False, False),
    ("weight_decay", False, False, False),
    ("grad_clip", False, True, True),
    ("image_size", True, True, True),
    ("seed", True, False, True),
    ("checkpoint_interval", False, False, False),
)


def _check_number(name: str, value: object, whole: bool, positive: bool, optional: bool) -> None:
    """Refuse a parameter that is not a finite number of the right kind and sign."""
    if optional and value is None:
        return
    kind = numbers.Integral if whole else numbers.Real
    valid = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    if not valid or value < 0 or (positive and value == 0):
        what = ("a positive " if positive else "a non-negative ") + ("int" if whole else "number")
        raise ValueError(f"{name}={value!r} must be {what}{' or None' if optional else ''}")


def _read_config(folder: Path) -> dict:
    """Read and check ``config.json``: known keys only, values of the right kind."""
    path = folder / CONFIG_FILE
    if not path.is_file() or not (folder / MODEL_FILE).is_file():
        raise ValueError(f"{folder} holds no saved picmap model ({CONFIG_FILE} + {MODEL_FILE})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); re-save the model") from None
    expected = {"format_version", "params", "image_size", "channels", "seed", "class_names"}
    # A map on a pretrained backbone also describes that backbone's architecture.
    if not isinstance(config, dict) or not expected <= set(config) <= expected | {"pretrained"}:
        raise ValueError(f"{path} does not have the keys of a picmap config: {sorted(expected)}")
    if config["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {config['format_version']!r}; "
            f"this picmap reads version {FORMAT_VERSION}"
        )
    known = set(TSimCNE().get_params())
    params = config["params"]
    if not isinstance(params, dict) or not set(params) <= known:
        unknown = sorted(set(params) - known) if isinstance(params, dict) else params
        raise ValueError(f"{path}: unknown parameters {unknown}")
    for key in ("image_size", "channels"):
        if not isinstance(config[key], int) or not 0 < config[key] <= 4096:
            raise ValueError(f"{path}: {key}={config[key]!r} is not a plausible value")
    if not isinstance(config["seed"], int) or isinstance(config["seed"], bool):
        raise ValueError(f"{path}: seed={config['seed']!r} is not an int")
    names = config["class_names"]
    listed = isinstance(names, list) and all(isinstance(name, str) for name in names)
    if names is not None and not listed:
        raise ValueError(f"{path}: class_names must be a list of strings or null")
    return config


def _check_weights_match(path: Path, weights: dict[str, torch.Tensor], model: TSimCNE) -> None:
    """Compare the tensors read from ``path`` with the network the config describes.

    The network is built on the "meta" device (no memory), so a config with absurd sizes is
    refused before anything large is allocated (a pretrained backbone's architecture, built
    from its library's own description, is already built).
    """
    with torch.device("meta"):
        net = model._build_net(model.channels_, torch.device("meta"))
        net.replace_readout(model.out_dim)
    wrong = state_mismatch(net, weights)
    if wrong:
        raise ValueError(
            f"{path} does not match its {CONFIG_FILE} (tensors differ: {wrong[:5]}); "
            "the files were changed or come from different models"
        )


@contextlib.contextmanager
def _stop_on_signal(trainer: Trainer) -> Iterator[None]:
    """With a checkpoint folder, Ctrl-C or SIGTERM asks the trainer to save and stop.

    SIGTERM is what torchrun sends its processes on Ctrl-C (and batch schedulers on
    preemption), some seconds before it kills them. A second signal stops at once.
    """
    if trainer.checkpoint_dir is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum, frame) -> None:
        trainer.stop_requested = True
        signal.signal(signum, _IMMEDIATE[signum])

    previous = {signum: signal.signal(signum, request_stop) for signum in _IMMEDIATE}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


_IMMEDIATE = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}


def _place_images(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The images on ``device`` when they take at most half its free memory, else on the host.

    Data left on the host is streamed to the device batch by batch (see DeviceBatches) and is
    not copied: DeviceBatches gathers each batch into its own pinned buffers, and a packed
    (memory-mapped) store may not even fit in host memory.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if images.nbytes > free // 2:
            return images
    return images.to(device)


def _match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Bring images to the channel count the map was fitted on (grey ↔ RGB)."""
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1)
    return grayscale(images.float()).round().to(torch.uint8)
