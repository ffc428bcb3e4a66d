"""Pretrained networks as backbones: torchvision, timm and open_clip models, and picmap's own.

A backbone name says where the network comes from:

- ``"torchvision:resnet50"``, optionally with a member of its weights enum:
  ``"torchvision:resnet50/IMAGENET1K_V2"`` (default: ``DEFAULT``);
- ``"timm:convnext_tiny.fb_in22k"`` (timm's own ``architecture.tag`` names);
- ``"open_clip:ViT-B-32/laion2b_s34b_b79k"`` (architecture / pretrained tag); the image tower;
- ``"picmap:FOLDER"``: the backbone of a map saved by ``TSimCNE.save`` or ``picmap fit``.

Library weights download through each library's own cache (torch hub's for torchvision, the
Hugging Face hub's for timm and open_clip), or come from a local file, ``weights=``: a
``.safetensors`` state dict, or a ``.pth`` one read with ``torch.load(weights_only=True)``.
Every backbone takes picmap's images (float ``N×C×H×W`` in [0, 1], any size, grey or colour)
and resizes and normalises them as its network expects; its feature size is measured.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import grayscale

LIBRARIES = ("torchvision", "timm", "open_clip", "picmap")
# The libraries whose networks come with weights files (picmap's come with their folder).
WEIGHT_LIBRARIES = LIBRARIES[:3]
EXTRAS = {"torchvision": None, "timm": "timm", "open_clip": "open_clip"}


def library_of(name: object) -> str | None:
    """The library a backbone name points into (``"timm"`` for ``"timm:…"``), else None."""
    if not isinstance(name, str):
        return None
    library, sep, _ = name.partition(":")
    return library if sep and library in LIBRARIES else None


def check_name(name: str) -> tuple[str, str]:
    """``(library, rest)`` of a pretrained backbone name; ``ValueError`` when malformed."""
    library = library_of(name)
    rest = name.partition(":")[2].strip()
    if library is None or not rest:
        raise ValueError(
            f"backbone={name!r} names no pretrained network; write LIBRARY:NAME with LIBRARY one "
            f"of {LIBRARIES}, e.g. 'torchvision:resnet18', 'timm:resnet50.a1_in1k', "
            "'open_clip:ViT-B-32/laion2b_s34b_b79k' or 'picmap:path/to/model'"
        )
    return library, rest


class PretrainedBackbone(nn.Module):
    """A pretrained network fed picmap's images: float ``N×C×H×W`` in [0, 1] of any size.

    Grey images are repeated into three channels (colour ones turned grey for a one-channel
    network), resized to ``input_size`` and normalised with the network's mean and standard
    deviation. ``description`` (JSON) rebuilds the architecture without its weights.
    """

    def __init__(self, network: nn.Module, description: dict) -> None:
        super().__init__()
        self.network = network
        self.input_size = int(description["input_size"])
        self.channels = int(description["channels"])
        shape = (1, self.channels, 1, 1)
        mean = torch.tensor(description["mean"], dtype=torch.float32).reshape(shape)
        std = torch.tensor(description["std"], dtype=torch.float32).reshape(shape)
        # Not in the state dict: the description holds them.
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        if "feature_dim" not in description:
            description = {**description, "feature_dim": _measure_features(self)}
        self.description = description
        self.feature_dim = int(description["feature_dim"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != self.channels:
            images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else grayscale(images)
        size = self.input_size
        if tuple(images.shape[-2:]) != (size, size):
            shrink = min(images.shape[-2:]) > size
            images = F.interpolate(
                images.float(), size=(size, size), mode="bilinear", antialias=shrink
            )
        return self.network((images - self.mean) / self.std).flatten(1)


@torch.no_grad()
def _measure_features(backbone: PretrainedBackbone) -> int:
    network = backbone.network
    was_training = network.training
    network.eval()
    try:
        probe = torch.zeros(1, backbone.channels, backbone.input_size, backbone.input_size)
        return int(backbone(probe).shape[1])
    finally:
        network.train(was_training)


def load_backbone(
    name: str, weights: str | Path | None = None, verbose: bool = True
) -> PretrainedBackbone:
    """The pretrained network ``name`` with its weights (downloaded, cached or from
    ``weights``), ready to take picmap's images."""
    library, rest = check_name(name)
    if weights is not None and library not in WEIGHT_LIBRARIES:
        raise ValueError(
            f"weights= is for {', '.join(WEIGHT_LIBRARIES)} backbones; the weights of "
            f"backbone={name!r} are the model.safetensors in its folder"
        )
    network, description = _source(library).load(rest, Path(weights) if weights else None, verbose)
    return PretrainedBackbone(network, {"name": name, **description})


def build_backbone(description: dict) -> PretrainedBackbone:
    """The architecture ``description`` gives (from :attr:`PretrainedBackbone.description`),
    with no weights loaded and nothing downloaded."""
    _check_description(description)
    library, rest = check_name(description["name"])
    return PretrainedBackbone(_source(library).architecture(rest, description), description)


def _check_description(description: object) -> None:
    """Refuse a description (read from a config file) whose fields are not plausible."""
    fields = ("name", "input_size", "channels", "mean", "std", "feature_dim")
    if not isinstance(description, dict) or not set(fields) <= set(description):
        raise ValueError(f"the pretrained backbone's description lacks some of {fields}")
    sizes_valid = all(
        isinstance(description[key], int) and 0 < description[key] <= limit
        for key, limit in (("input_size", 4096), ("channels", 4), ("feature_dim", 2**20))
    )
    stats = [description["mean"], description["std"]]
    stats_valid = all(
        isinstance(values, list)
        and len(values) == description["channels"]
        and all(isinstance(v, int | float) and math.isfinite(v) for v in values)
        for values in stats
    )
    if not sizes_valid or not stats_valid or not isinstance(description["name"], str):
        raise ValueError(
            f"the pretrained backbone's description is not valid: {json.dumps(description)[:200]}"
        )


def _source(library: str):
    """The module that loads networks of ``library`` (imported only when used)."""
    return importlib.import_module(f".from_{library}", __name__)


def require(module: str, library: str, pip_name: str) -> object:
    """Import the optional library ``module``, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(library)
        how = f"pip install 'picmap[{extra}]'" if extra else f"pip install {pip_name}"
        raise ValueError(
            f"backbone='{library}:…' needs the {pip_name} package, which is not installed: {how}"
        ) from None


def closest(name: str, known: list[str]) -> str:
    """A hint naming the known names closest to ``name``."""
    import difflib

    near = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
    return f"did you mean {', '.join(near)}?" if near else f"e.g. {', '.join(known[:4])}"


def first_line(err: BaseException) -> str:
    """The first line of an error's message (library errors can run to pages)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
