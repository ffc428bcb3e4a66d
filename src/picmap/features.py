"""Features of a frozen backbone: computed once, in batches with progress, cached on disk.

The cache file is named by a digest of everything the features depend on — the backbone's
description and weights, and the images' bytes and shape — so a rerun, or a second map of the
same images with the same backbone, reads them back, and a change to either computes them
anew. Files are written atomically; a damaged one is computed again.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from ._io import atomic_path, read_safetensors

CACHE_PREFIX = "features-"
# Images hashed per chunk.
_HASH_CHUNK = 4096


def batch_size_for(device: torch.device) -> int:
    """Images per forward pass of a pretrained backbone (at its input size, often 224 px)."""
    return 256 if device.type == "cuda" else 64


def cache_key(backbone: nn.Module, description: dict, images: torch.Tensor) -> str:
    """A digest of the backbone (description and every tensor) and of the images."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(json.dumps(description, sort_keys=True).encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    digest.update(f"images:{images.dtype}:{tuple(images.shape)}".encode())
    for start in range(0, len(images), _HASH_CHUNK):
        digest.update(images[start : start + _HASH_CHUNK].contiguous().numpy())
    return digest.hexdigest()


def cache_path(folder: str | Path, key: str) -> Path:
    """Where the features of ``key`` are kept in ``folder``."""
    return Path(folder) / f"{CACHE_PREFIX}{key[:16]}.safetensors"


@torch.no_grad()
def compute_features(
    backbone: nn.Module, images: torch.Tensor, device: torch.device, verbose: bool = True
) -> torch.Tensor:
    """``backbone``'s features of uint8 ``images`` (``N×D`` float32 on the CPU), in eval mode."""
    batch = batch_size_for(device)
    was_training = backbone.training
    backbone.eval()
    chunks = []
    with tqdm(
        total=len(images),
        desc="backbone features",
        unit="img",
        disable=not verbose,
        dynamic_ncols=True,
        file=sys.stderr,
    ) as bar:
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch].to(device).float() / 255
            chunks.append(backbone(chunk).float().cpu())
            bar.update(len(chunk))
    backbone.train(was_training)
    return torch.cat(chunks)


def frozen_features(
    backbone: nn.Module,
    description: dict,
    images: torch.Tensor,
    device: torch.device,
    cache: str | Path | None,
    verbose: bool = True,
    write: bool = True,
) -> torch.Tensor:
    """The features of ``images``: read from the cache folder ``cache`` when it holds them,
    else computed (and written there when ``write``)."""
    if cache is None:
        return compute_features(backbone, images, device, verbose)
    key = cache_key(backbone, description, images)
    path = cache_path(cache, key)
    cached = _read(path, key, len(images))
    if cached is not None:
        if verbose:
            tqdm.write(f"picmap: backbone features read from {path}", file=sys.stderr)
        return cached
    features = compute_features(backbone, images, device, verbose)
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"features": features.contiguous()}, str(tmp), metadata={"key": key})
    return features


def _read(path: Path, key: str, count: int) -> torch.Tensor | None:
    """The cached features, or None when the file is missing, damaged or for other inputs."""
    if not path.is_file():
        return None
    try:
        tensors, meta = read_safetensors(path, "it is computed again")
    except ValueError:
        return None
    features = tensors.get("features")
    fits = features is not None and features.ndim == 2 and len(features) == count
    if meta.get("key") != key or not fits or features.dtype != torch.float32:
        return None
    return features
