"""open_clip's image towers (``pip install 'picmap[open_clip]'``): CLIP, SigLIP and others.

open_clip fetches weights from the Hugging Face hub into its cache, preferring
``.safetensors`` and reading other files with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from . import closest, first_line, require
from .weights import load_weights, read_state_dict

_OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
_OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def _open_clip():
    return require("open_clip", "open_clip", "open_clip_torch")


def load(name: str, weights: Path | None, verbose: bool) -> tuple[nn.Module, dict]:
    """The image tower of ``ARCH/TAG`` (or of ``ARCH`` with ``weights``), and its description."""
    open_clip = _open_clip()
    arch, _, tag = name.partition("/")
    _check_known(open_clip, arch)
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag and tag not in tags:
        raise ValueError(
            f"backbone='open_clip:{name}': {arch} has no pretrained weights {tag!r}; "
            f"it has {', '.join(tags) or 'none'}"
        )
    if weights is not None:
        model = open_clip.create_model(arch, pretrained=None)
        state = read_state_dict(weights)
        # A whole CLIP model's state dict, or its image tower's alone.
        whole = any(key.startswith("visual.") for key in state)
        load_weights(model if whole else model.visual, state, f"weights={str(weights)!r}")
    elif not tag:
        raise ValueError(
            f"backbone='open_clip:{arch}' names no weights: write open_clip:{arch}/TAG with TAG "
            f"one of {', '.join(tags) or '(none published)'}, or pass weights=FILE"
        )
    else:
        model = _download(open_clip, arch, tag)
    visual = model.visual
    size = visual.image_size
    mean, std = _statistics(open_clip, arch, tag, visual)
    return visual, {
        "input_size": int(size if isinstance(size, int) else size[-1]),
        "mean": mean,
        "std": std,
        "channels": 3,
    }


def architecture(name: str, description: dict) -> nn.Module:
    """The image tower without weights."""
    open_clip = _open_clip()
    arch = name.partition("/")[0]
    _check_known(open_clip, arch)
    return open_clip.create_model(arch, pretrained=None).visual


def _check_known(open_clip, arch: str) -> None:
    known = open_clip.list_models()
    if arch not in known:
        raise ValueError(
            f"backbone='open_clip:{arch}': open_clip has no architecture of that name; "
            f"{closest(arch, known)}"
        )


def _download(open_clip, arch: str, tag: str) -> nn.Module:
    try:
        return open_clip.create_model(arch, pretrained=tag, weights_only=True)
    except Exception as err:  # the hub client, urllib and open_clip each raise their own errors
        from huggingface_hub.constants import HF_HUB_CACHE

        source = (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub") or "its address"
        raise ValueError(
            f"open_clip's weights {arch}/{tag} ({source}) are not in its cache ({HF_HUB_CACHE}) "
            f"and could not be downloaded ({first_line(err)}). Offline: download them on "
            "another machine and pass weights=FILE (--weights FILE)"
        ) from None


def _statistics(open_clip, arch: str, tag: str, visual: nn.Module) -> tuple[list, list]:
    """The normalisation the weights were trained with (CLIP's own by default)."""
    cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    mean = cfg.get("mean") or getattr(visual, "image_mean", None) or _OPENAI_MEAN
    std = cfg.get("std") or getattr(visual, "image_std", None) or _OPENAI_STD
    return [float(v) for v in mean], [float(v) for v in std]
