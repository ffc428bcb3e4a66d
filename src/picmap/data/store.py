"""ImageStore: the one in-memory form every input is turned into before training."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ImageStore:
    """Decoded, resized images with optional labels and names.

    Attributes:
        images: ``uint8`` tensor ``N×C×H×W`` (C is 1 or 3), on the CPU.
        labels: ``int64`` array of length N, or ``None`` when the data has no labels.
        class_names: name of each label value (index = label), or ``None``.
        file_names: where each image came from (a path, or ``None`` for in-memory data).
    """

    images: torch.Tensor
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    file_names: list[str] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise TypeError(
                f"ImageStore needs a uint8 N×C×H×W tensor, got {self.images.dtype} "
                f"with shape {tuple(self.images.shape)}"
            )
        n = len(self.images)
        for name in ("labels", "file_names"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"{name} has {len(value)} entries but there are {n} images")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        """Number of colour channels (1 or 3)."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """Side length of the (square) images."""
        return int(self.images.shape[-1])
