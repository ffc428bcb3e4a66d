"""Networks: a backbone that maps images to features, and the projection head on top."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torchvision
from torch import nn

BACKBONES = ("resnet18", "small", "tiny", "mlp")


def cifar_resnet18(in_channels: int = 3) -> nn.Module:
    """ResNet-18 for small images: 3×3 stride-1 first convolution, no max-pool, 512-D output."""
    net = torchvision.models.resnet18(weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


def small_cnn(in_channels: int = 3, width: int = 32) -> nn.Module:
    """A five-layer CNN (≈0.3 M parameters) that makes training on a CPU practical.

    Output: ``4 * width`` features (128 by default) after global average pooling.
    """
    return nn.Sequential(
        *_conv_block(in_channels, width),
        *_conv_block(width, width),
        nn.MaxPool2d(2),
        *_conv_block(width, 2 * width),
        *_conv_block(2 * width, 2 * width),
        nn.MaxPool2d(2),
        *_conv_block(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def pixel_mlp(in_features: int, width: int = 512) -> nn.Module:
    """Two hidden layers (Linear → BatchNorm → ReLU) on the flattened pixels; ``width`` features.

    For small aligned images (digits, clothing, cell crops) with the "neighbours" recipe, whose
    positives are pixel-space neighbours anyway: on Fashion-MNIST it gives the best map measured
    here, at under a quarter of the tiny CNN's time per epoch (``benchmarks/RESULTS.md``). It
    sees pixels, not shapes, so it is no backbone for photographs.
    """
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, width),
        nn.BatchNorm1d(width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.BatchNorm1d(width),
        nn.ReLU(),
    )


def make_backbone(name: str, in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    """Build a named backbone for ``in_channels × image_size × image_size`` images; return it
    with its feature size."""
    if name == "resnet18":
        return cifar_resnet18(in_channels), 512
    if name == "small":
        return small_cnn(in_channels), 128
    if name == "tiny":
        return small_cnn(in_channels, width=16), 64
    if name == "mlp":
        return pixel_mlp(in_channels * image_size * image_size), 512
    raise ValueError(f"backbone={name!r} is not known; use one of {BACKBONES} or pass an nn.Module")


class ProjectionHead(nn.Module):
    """Linear → ReLU → Linear. Only ``readout`` (the last layer) changes between stages."""

    def __init__(self, feature_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(feature_dim, hidden_dim), nn.ReLU())
        self.readout = nn.Linear(hidden_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden(features)
        if not torch.amp.is_autocast_available(hidden.device.type):
            return self.readout(hidden)
        # The readout in float32 even under bf16 autocast: bf16 steps are 0.25–0.5 at the map's
        # magnitudes, as large as neighbour distances under the Cauchy kernel; and it is cheap.
        with torch.autocast(hidden.device.type, enabled=False):
            return self.readout(hidden.float())


class EmbeddingNet(nn.Module):
    """Backbone followed by the projection head; the output is the embedding."""

    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.backbone = backbone
        self.head = ProjectionHead(feature_dim, hidden_dim, out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    @property
    def out_dim(self) -> int:
        """Size of the embedding."""
        return self.head.readout.out_features

    def head_on_features(self) -> EmbeddingNet:
        """A network that shares this one's head and takes the backbone's features as input:
        it trains the head on features a frozen backbone computed once."""
        shell = EmbeddingNet(nn.Identity(), 1, 1, 1)
        shell.head = self.head
        return shell

    def replace_readout(self, out_dim: int) -> None:
        """Swap the last linear layer for a fresh one with ``out_dim`` outputs (stage 2)."""
        old = self.head.readout
        self.head.readout = nn.Linear(old.in_features, out_dim).to(old.weight.device)


def state_mismatch(net: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of tensors missing from ``state``, not in ``net``, or of another shape than there.

    Checking this before ``load_state_dict`` turns a damaged or foreign file into a clear error
    (``net`` may live on the "meta" device, so absurd sizes cost no memory).
    """
    expected = {name: tuple(value.shape) for name, value in net.state_dict().items()}
    found = {name: tuple(value.shape) for name, value in state.items()}
    differ = {name for name in found.keys() & expected.keys() if found[name] != expected[name]}
    return sorted(found.keys() ^ expected.keys() | differ)
