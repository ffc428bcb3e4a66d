"""timm's networks (``pip install 'picmap[timm]'``), without their classifier.

timm fetches weights from the Hugging Face hub into its cache, preferring ``.safetensors`` and
reading other files with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from . import closest, first_line, require
from .weights import load_weights, read_state_dict


def _timm():
    return require("timm", "timm", "timm")


def load(name: str, weights: Path | None, verbose: bool) -> tuple[nn.Module, dict]:
    """The network ``name`` (``architecture`` or ``architecture.tag``) with its weights."""
    timm = _timm()
    _check_known(timm, name)
    if weights is None:
        network = _download(timm, name)
    else:
        network = timm.create_model(name, pretrained=False)
        state = _without_classifier(network, read_state_dict(weights))
        network.reset_classifier(0)
        load_weights(network, state, f"weights={str(weights)!r}")
    config = timm.data.resolve_data_config({}, model=network)
    size = config["input_size"]
    return network, {
        "input_size": int(size[-1]),
        "mean": [float(v) for v in config["mean"]],
        "std": [float(v) for v in config["std"]],
        "channels": int(size[0]),
    }


def architecture(name: str, description: dict) -> nn.Module:
    """The network without weights and without its classifier."""
    timm = _timm()
    _check_known(timm, name)
    return timm.create_model(name, pretrained=False, num_classes=0)


def _check_known(timm, name: str) -> None:
    if not timm.is_model(name):
        known = timm.list_models()
        raise ValueError(
            f"backbone='timm:{name}': timm has no network of that name; "
            f"{closest(name.split('.')[0], known)}"
        )


def _download(timm, name: str) -> nn.Module:
    """The network with the weights timm finds in its cache or downloads."""
    cfg = timm.create_model(name, pretrained=False).pretrained_cfg
    source = cfg.get("hf_hub_id") or cfg.get("url") or "its download address"
    try:
        return timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as err:  # the hub client, urllib and timm each raise their own errors
        from huggingface_hub.constants import HF_HUB_CACHE

        raise ValueError(
            f"timm's weights for {name} ({source}) are not in its cache ({HF_HUB_CACHE}) and "
            f"could not be downloaded ({first_line(err)}). Offline: download them on another "
            "machine and pass weights=FILE (--weights FILE), a .safetensors or .pth state dict"
        ) from None


def _without_classifier(network: nn.Module, state: dict) -> dict:
    """``state`` without the classifier tensors the pretrained config names."""
    classifier = network.pretrained_cfg.get("classifier") or ()
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return {k: v for k, v in state.items() if not any(k.startswith(f"{h}.") for h in heads)}
