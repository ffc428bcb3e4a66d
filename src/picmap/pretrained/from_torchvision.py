"""torchvision's classification networks, with the weights of their weights enums.

torchvision ships its weights as pickles (``.pth``); they are read with
``torch.load(weights_only=True)``, which loads tensors and nothing else.
"""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from . import closest, first_line
from .weights import load_weights, read_state_dict

# Where torchvision's networks keep their classifier (the first that a network has is removed).
_CLASSIFIERS = ("fc", "classifier", "heads", "head")
# Auxiliary classifiers (Inception, GoogLeNet) that change the output in training mode.
_AUXILIARY = ("AuxLogits", "aux1", "aux2")
_IMAGENET = {"input_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def load(name: str, weights: Path | None, verbose: bool) -> tuple[nn.Module, dict]:
    """The network ``ARCH`` or ``ARCH/WEIGHTS`` with its weights, and its description."""
    arch, _, tag = name.partition("/")
    member = _weights_member(arch, tag)
    network = architecture(arch, {})
    state = read_state_dict(weights) if weights else _download(arch, member, verbose)
    what = f"weights={str(weights)!r}" if weights else f"torchvision's {member}"
    load_weights(network, _without_classifier(network, state), what)
    return network, _preprocessing(member)


def architecture(name: str, description: dict) -> nn.Module:
    """The network without weights and without its classifier."""
    arch = name.partition("/")[0]
    classification = torchvision.models.list_models(module=torchvision.models)
    if arch not in classification:
        raise ValueError(
            f"backbone='torchvision:{arch}': torchvision has no classification network of that "
            f"name; {closest(arch, classification)}"
        )
    network = torchvision.models.get_model(arch, weights=None)
    for attribute in _AUXILIARY:
        if hasattr(network, attribute):
            setattr(network, attribute, None)
    if hasattr(network, "aux_logits"):
        network.aux_logits = False
    for attribute in _CLASSIFIERS:
        if isinstance(getattr(network, attribute, None), nn.Module):
            setattr(network, attribute, nn.Identity())
            break
    return network


def _weights_member(arch: str, tag: str):
    """The member of ``arch``'s weights enum that ``tag`` names (``DEFAULT`` when empty)."""
    architecture(arch, {})  # a clear error for an unknown name first
    enum = torchvision.models.get_model_weights(arch)
    members = [member.name for member in enum]
    try:
        return enum[tag or "DEFAULT"]
    except KeyError:
        raise ValueError(
            f"backbone='torchvision:{arch}/{tag}': {arch} has no weights {tag!r}; "
            f"it has {', '.join(members)} (or leave it out for DEFAULT)"
        ) from None


def _without_classifier(network: nn.Module, state: dict[str, torch.Tensor]) -> dict:
    """``state`` without the tensors of the classifier and auxiliary heads ``network`` lost."""
    dropped = (*_CLASSIFIERS, *_AUXILIARY)
    kept = network.state_dict().keys()
    return {
        name: value
        for name, value in state.items()
        if name in kept or name.split(".")[0] not in dropped
    }


def _download(arch: str, member, verbose: bool) -> dict[str, torch.Tensor]:
    """The weights of ``member``, from torch hub's cache or downloaded into it."""
    file_name = Path(urlparse(member.url).path).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    try:
        return torch.hub.load_state_dict_from_url(
            member.url, map_location="cpu", progress=verbose, check_hash=True, weights_only=True
        )
    except (URLError, OSError, RuntimeError) as err:
        raise ValueError(
            f"torchvision's {member} for {arch} is not in its cache ({cached}) and could not be "
            f"downloaded ({first_line(err)}). Offline: fetch {member.url} on another machine and "
            f"put it at {cached}, or pass weights=FILE (--weights FILE)"
        ) from None


def _preprocessing(member) -> dict:
    """Input size, mean and standard deviation that ``member``'s transforms use."""
    transforms = member.transforms()
    crop = getattr(transforms, "crop_size", None)
    mean, std = getattr(transforms, "mean", None), getattr(transforms, "std", None)
    if not crop or mean is None or std is None:
        return dict(_IMAGENET, channels=3)
    return {"input_size": int(crop[0]), "mean": list(mean), "std": list(std), "channels": 3}
