"""The backbone of a saved picmap map: pretrain once on a large collection, map many others.

The backbone takes the images at the size and channels it was trained on (others are resized
and converted); its features are those the saved map was built from.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..model import BACKBONES, make_backbone


def load(name: str, weights: Path | None, verbose: bool) -> tuple[nn.Module, dict]:
    """The backbone of the model saved in the folder ``name``, and its description."""
    from ..estimator import TSimCNE  # the estimator builds on this package

    try:
        saved = TSimCNE.load(name, device="cpu")
    except ValueError as err:
        raise ValueError(f"backbone='picmap:{name}': {err}") from None
    network = saved.model_.backbone
    inner = getattr(network, "description", saved.backbone_)
    if not isinstance(inner, dict) and inner not in BACKBONES:
        raise ValueError(f"backbone='picmap:{name}' was fitted with a custom backbone")
    channels = saved.channels_
    return network, {
        "input_size": saved.image_size_,
        "mean": [0.0] * channels,
        "std": [1.0] * channels,
        "channels": channels,
        "backbone": inner,
    }


def architecture(name: str, description: dict) -> nn.Module:
    """The saved backbone's architecture, from the description alone (the folder may be gone)."""
    from . import build_backbone

    inner = description.get("backbone")
    if isinstance(inner, dict):
        return build_backbone(inner)
    if inner not in BACKBONES:
        raise ValueError(f"the picmap backbone's description names no backbone ({inner!r})")
    return make_backbone(inner, description["channels"], description["input_size"])[0]
