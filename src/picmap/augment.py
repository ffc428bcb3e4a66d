"""Batched SimCLR augmentations with per-sample random parameters, on any device.

Follows torchvision's definitions (RandomResizedCrop, RandomHorizontalFlip, ColorJitter applied
in a random order with probability 0.8, RandomGrayscale) but works on a whole uint8 batch at once
on the training device, so no per-image Python runs in the training loop. Crop, resize and flip
are one ``affine_grid``/``grid_sample`` (bilinear) call.

On the GPU path, the number of ops per call is fixed and small, and nothing makes the host wait
for the GPU: no selection by mask, and no tensor built from Python numbers (copying one to the
GPU synchronises), so constants stay Python scalars or are made on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_LUMA = (0.2989, 0.587, 0.114)  # as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the SimCLR augmentations (the paper's defaults)."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    grayscale_p: float = 0.2


def _uniform(
    shape: int | tuple[int, ...], low: float, high: float, gen: torch.Generator, device
) -> torch.Tensor:
    return torch.rand(shape, generator=gen, device=device) * (high - low) + low


_CROP_TRIES = 10  # as torchvision


def sample_crop_boxes(
    n: int, height: int, width: int, cfg: AugmentConfig, gen: torch.Generator, device
) -> torch.Tensor:
    """Per-sample crop boxes ``(cx, cy, w, h)`` in pixels, as RandomResizedCrop draws them.

    Like torchvision, an area fraction and a log-uniform aspect ratio are drawn up to 10 times
    until the box fits; samples that never fit fall back to the largest centred box whose
    aspect ratio is clamped to the allowed range.
    """
    # All tries are drawn at once and each sample keeps its first fitting one: the same
    # distribution as torchvision's loop, in a fixed number of whole-batch ops.
    tries = (_CROP_TRIES, n)
    area = height * width
    log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    target = _uniform(tries, area * cfg.crop_scale[0], area * cfg.crop_scale[1], gen, device)
    ratio = torch.exp(_uniform(tries, log_lo, log_hi, gen, device))
    # torchvision rounds to whole pixels; so do we, to keep the same distribution.
    tw = torch.round(torch.sqrt(target * ratio))
    th = torch.round(torch.sqrt(target / ratio))
    fits = (tw > 0) & (th > 0) & (tw <= width) & (th <= height)
    # Uniform over the valid positions; meaningless for boxes that do not fit, never kept.
    left = torch.floor(torch.rand(tries, generator=gen, device=device) * (width + 1 - tw))
    top = torch.floor(torch.rand(tries, generator=gen, device=device) * (height + 1 - th))
    boxes = torch.stack([left + tw / 2, top + th / 2, tw, th])  # 4 × tries × n
    # argmax returns the first maximum: the first try that fits (try 0 where none does).
    first = fits.to(torch.uint8).argmax(0, keepdim=True)
    picked = boxes.gather(1, first.expand(4, 1, n)).squeeze(1)
    fallback_w, fallback_h = float(width), float(height)
    in_ratio = width / height
    if in_ratio < cfg.crop_ratio[0]:
        fallback_h = width / cfg.crop_ratio[0]
    elif in_ratio > cfg.crop_ratio[1]:
        fallback_w = height * cfg.crop_ratio[1]
    fallback = (width / 2, height / 2, fallback_w, fallback_h)
    any_fits = fits.any(0)
    columns = [torch.where(any_fits, v, f) for v, f in zip(picked, fallback, strict=True)]
    return torch.stack(columns, dim=1)


def crop_resize_flip(
    images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int
) -> torch.Tensor:
    """Cut each box out of its image, resize it to ``size``², and mirror where ``flip``."""
    n, _, height, width = images.shape
    cx, cy, w, h = boxes.unbind(1)
    zero = torch.zeros_like(cx)
    scale_x = (w / width) * torch.where(flip, -1.0, 1.0)
    shift_x, shift_y = 2 * cx / width - 1, 2 * cy / height - 1
    theta = torch.stack([scale_x, zero, shift_x, zero, h / height, shift_y], 1)
    theta = theta.view(n, 2, 3).to(images.dtype)
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luminance ``N×1×H×W`` of RGB images (identity for one-channel images)."""
    if images.shape[1] == 1:
        return images
    r, g, b = images.unbind(1)  # weighted as torchvision does, with Python scalars
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor.view(-1, 1, 1, 1) * images + (1 - factor.view(-1, 1, 1, 1)) * other).clamp(0, 1)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale intensities by a per-sample factor."""
    return _blend(images, torch.zeros_like(images), factor)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with its mean grey level."""
    mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean.expand_as(images), factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with its greyscale version (no-op for one-channel images)."""
    if images.shape[1] == 1:
        return images
    return _blend(images, grayscale(images).expand_as(images), factor)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by a per-sample ``shift`` in turns, ``[-0.5, 0.5]``; HSV round trip."""
    if images.shape[1] == 1:
        return images
    maxc, argmax = images.max(1)
    delta = maxc - images.min(1).values
    spread = delta > 0
    # Hue in sixths of a turn: (G−B)/Δ, (B−R)/Δ + 2 or (R−G)/Δ + 4 as R, G or B is largest.
    # Where Δ = 0 the saturation is 0, so the hue found there does not matter.
    diffs = images.roll(-1, 1) - images.roll(-2, 1)  # G−B, B−R, R−G
    sixths = diffs.gather(1, argmax.unsqueeze(1)).squeeze(1) / torch.where(spread, delta, 1.0)
    sixths = sixths + 2 * argmax + 6 * shift.view(-1, 1, 1)
    # Δ > 0 implies max > 0; elsewhere Δ = 0 gives saturation 0.
    sat = delta / torch.where(spread, maxc, 1.0)
    return _hsv_to_rgb(sixths, sat, maxc)


def _hsv_to_rgb(sixths: torch.Tensor, sat: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """RGB from hue (in sixths of a turn, any real), saturation and value, each ``N×H×W``."""
    # Each channel is v·(1 − s·clamp(min(k, 4−k), 0, 1)) with k = (n + 6h) mod 6, n = 5, 3, 1.
    n = torch.arange(5, 0, -2, device=sixths.device, dtype=sixths.dtype).view(1, 3, 1, 1)
    k = (n + sixths.unsqueeze(1)) % 6
    ramp = torch.minimum(k, 4 - k).clamp(0, 1)
    return value.unsqueeze(1) * (1 - sat.unsqueeze(1) * ramp)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
_SATURATION, _HUE, _SKIP = 2, 3, 4  # indices into _JITTER_OPS; _SKIP: no op (whole-batch form)


def color_jitter(
    images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator, select: bool | None = None
) -> torch.Tensor:
    """ColorJitter with probability ``jitter_p``: the four adjustments in a per-sample random order.

    Factors: brightness, contrast and saturation uniform in ``[1−s, 1+s]``; hue in ``[−h, h]``.
    ``select`` picks the implementation (both give the same result on images in ``[0, 1]``);
    None chooses by device.
    """
    n, device = len(images), images.device
    factors = torch.stack(
        [
            _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, gen, device),
            _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, gen, device),
            _uniform(n, 1 - cfg.saturation, 1 + cfg.saturation, gen, device),
            _uniform(n, -cfg.hue, cfg.hue, gen, device),
        ]
    )
    apply = torch.rand(n, generator=gen, device=device) < cfg.jitter_p
    order = torch.rand(n, 4, generator=gen, device=device).argsort(dim=1)
    # On a GPU, the whole batch goes through every step: selecting the images (nonzero +
    # indexing) would make the GPU wait at every call. On the CPU, selecting is faster, as each
    # op then runs on only the images whose turn it is.
    select = images.device.type == "cpu" if select is None else select
    if not select:
        return _jitter_whole_batch(images, factors, apply, order)
    out = images.clone()
    for step in range(4):
        for op_index, op in enumerate(_JITTER_OPS):
            # Each image gets each op exactly once, at the step its random order says.
            chosen = torch.nonzero(apply & (order[:, step] == op_index)).squeeze(1)
            out[chosen] = op(out[chosen], factors[op_index, chosen])
    return out


def _jitter_whole_batch(
    images: torch.Tensor, factors: torch.Tensor, apply: torch.Tensor, order: torch.Tensor
) -> torch.Tensor:
    """color_jitter on every image at once, in a fixed sequence of ops (no host waits)."""
    n, channels = images.shape[:2]
    # Each image's four steps go to slots s + 3 − (its hue step) of seven, so that every hue
    # falls on slot 3: one hue pass instead of four. Brightness, contrast and saturation are
    # all f·x + (1 − f)·other, so each remaining slot is one blend, with f = 1 where it is
    # empty; the identity blend keeps images in [0, 1] exactly as they are.
    device = images.device
    hue_step = order.argsort(dim=1)[:, _HUE]
    slots = torch.arange(4, device=device).unsqueeze(1) + (3 - hue_step)  # 4 × n
    slot_op = torch.full((7, n), _SKIP, device=device).scatter(0, slots, order.t())
    slot_op = torch.where(apply, slot_op, _SKIP)
    if channels == 1:
        slot_op = torch.where(slot_op == _SATURATION, _SKIP, slot_op)  # a no-op on grey
    # Per op (brightness, contrast, saturation, hue, none): the weight of the image (f; 1 for
    # the last two) and of the other term (1 − f; 0 for brightness, whose other term is black).
    scale = torch.cat([factors[:3], factors.new_ones(2, n)])
    weight = torch.cat([factors.new_zeros(1, n), 1 - scale[1:]])
    scales = scale.gather(0, slot_op).view(7, n, 1, 1, 1).unbind(0)
    weights = weight.gather(0, slot_op).view(7, n, 1, 1, 1).unbind(0)
    saturate = (slot_op == _SATURATION).view(7, n, 1, 1, 1).unbind(0)
    out = images
    for slot in range(7):
        if slot == 3:
            if channels > 1:
                shifted = adjust_hue(out, factors[_HUE])
                out = torch.where(apply.view(-1, 1, 1, 1), shifted, out)
            continue
        gray = grayscale(out)
        other = torch.where(saturate[slot], gray, gray.mean(dim=(1, 2, 3), keepdim=True))
        out = (scales[slot] * out + weights[slot] * other).clamp(0, 1)
    return out


def random_grayscale(images: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Replace each RGB image by its luminance (kept as 3 channels) with probability ``p``."""
    if images.shape[1] == 1:
        return images
    chosen = torch.rand(len(images), generator=gen, device=images.device) < p
    gray = grayscale(images).expand_as(images)
    return torch.where(chosen.view(-1, 1, 1, 1), gray, images)


def augment(
    images: torch.Tensor,
    size: int,
    gen: torch.Generator,
    cfg: AugmentConfig | None = None,
    *,
    select: bool | None = None,
) -> torch.Tensor:
    """One random SimCLR view of each image: uint8 ``N×C×H×W`` in, float ``N×C×size×size`` out.

    ``select`` picks color_jitter's implementation; None chooses by device.
    """
    cfg = cfg or AugmentConfig()
    x = images.float() / 255
    n, _, height, width = x.shape
    boxes = sample_crop_boxes(n, height, width, cfg, gen, x.device)
    flip = torch.rand(n, generator=gen, device=x.device) < cfg.flip_p
    x = crop_resize_flip(x, boxes, flip, size)
    x = color_jitter(x, cfg, gen, select)
    return random_grayscale(x, cfg.grayscale_p, gen)
