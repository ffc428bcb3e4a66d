import math

import pytest
import torch
import torchvision.transforms.functional as TF
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.transforms import RandomResizedCrop

from picmap import augment as aug


def _images(n=16, c=3, size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=gen)


@pytest.mark.parametrize(
    ("ours", "theirs", "factor"),
    [
        (aug.adjust_brightness, TF.adjust_brightness, 1.3),
        (aug.adjust_contrast, TF.adjust_contrast, 0.7),
        (aug.adjust_saturation, TF.adjust_saturation, 1.4),
        (aug.adjust_hue, TF.adjust_hue, 0.08),
        (aug.adjust_hue, TF.adjust_hue, -0.1),
    ],
)
def test_colour_ops_match_torchvision(ours, theirs, factor):
    x = _images(4)
    got = ours(x, torch.full((4,), factor))
    want = torch.stack([theirs(img, factor) for img in x])
    assert torch.allclose(got, want, atol=1e-5)


def test_hue_rotation_of_pure_red():
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1
    green = aug.adjust_hue(red, torch.tensor([1 / 3]))
    assert torch.allclose(green[0, :, 0, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)


def test_grayscale_matches_torchvision():
    x = _images(3)
    assert torch.allclose(aug.grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6)


def test_colour_ops_leave_grey_images_grey():
    x = _images(4, c=1)
    shift = torch.full((4,), 0.1)
    assert torch.equal(aug.adjust_hue(x, shift), x)
    assert torch.equal(aug.adjust_saturation(x, shift), x)


def test_crop_boxes_follow_random_resized_crop():
    gen = torch.Generator().manual_seed(0)
    cfg = aug.AugmentConfig()
    n, size = 20000, 32
    cx, cy, w, h = aug.sample_crop_boxes(n, size, size, cfg, gen, "cpu").unbind(1)
    area = w * h / size**2
    ratio = w / h
    assert (w >= 1).all() and (w <= size).all() and (h <= size).all()
    assert (cx - w / 2 >= 0).all() and (cx + w / 2 <= size).all()
    assert (cy - h / 2 >= 0).all() and (cy + h / 2 <= size).all()
    # Rounding to whole pixels widens the ranges slightly, as in torchvision.
    assert area.min() >= 0.18 and area.max() <= 1.0
    assert ratio.min() >= 0.70 and ratio.max() <= 1.42
    torch.manual_seed(0)
    ref = torch.tensor(
        [
            RandomResizedCrop.get_params(torch.empty(3, size, size), [0.2, 1.0], [3 / 4, 4 / 3])
            for _ in range(n)
        ],
        dtype=torch.float,
    )
    ref_area = ref[:, 2] * ref[:, 3] / size**2
    assert area.mean().item() == pytest.approx(ref_area.mean().item(), abs=0.01)
    assert area.std().item() == pytest.approx(ref_area.std().item(), abs=0.01)


@pytest.mark.parametrize(("height", "width"), [(32, 32), (10, 40), (40, 10)])
def test_crop_boxes_fall_back_to_the_centred_box(height, width):
    cfg = aug.AugmentConfig(crop_scale=(5.0, 6.0))  # no try can fit
    boxes = aug.sample_crop_boxes(3, height, width, cfg, torch.Generator().manual_seed(0), "cpu")
    w = min(width, height * 4 / 3)
    h = min(height, width * 4 / 3)
    assert torch.allclose(boxes, torch.tensor([[width / 2, height / 2, w, h]] * 3))


def test_full_box_is_identity_and_flip_mirrors():
    x = _images(2)
    full = torch.tensor([[16.0, 16.0, 32.0, 32.0]] * 2)
    same = aug.crop_resize_flip(x, full, torch.tensor([False, False]), 32)
    flipped = aug.crop_resize_flip(x, full, torch.tensor([True, True]), 32)
    assert torch.allclose(same, x, atol=1e-5)
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)


def test_pixel_aligned_crop_equals_slice():
    x = _images(1)
    box = torch.tensor([[4 + 8.0, 8 + 8.0, 16.0, 16.0]])  # left 4, top 8, 16×16
    got = aug.crop_resize_flip(x, box, torch.tensor([False]), 16)
    assert torch.allclose(got, x[:, :, 8:24, 4:20], atol=1e-5)


def test_probabilities_of_flip_jitter_and_grayscale():
    n = 4000
    gen = torch.Generator().manual_seed(1)
    # Strongly coloured images: only the grayscale step can make all channels equal.
    x = torch.zeros(n, 3, 4, 4)
    x[:, 0] = 0.9
    x[:, 2] = 0.1
    out = aug.random_grayscale(x, 0.2, gen)
    grey = (out[:, 0] == out[:, 1]).all(dim=(1, 2))
    assert grey.float().mean().item() == pytest.approx(0.2, abs=0.03)
    jittered = aug.color_jitter(x, aug.AugmentConfig(), gen)
    changed = (jittered - x).abs().amax(dim=(1, 2, 3)) > 1e-6
    assert changed.float().mean().item() == pytest.approx(0.8, abs=0.03)


def test_jitter_factors_stay_in_range():
    cfg = aug.AugmentConfig(contrast=0, saturation=0, hue=0, jitter_p=1.0)
    x = torch.full((2000, 1, 2, 2), 0.5)
    out = aug.color_jitter(x, cfg, torch.Generator().manual_seed(2))
    factor = out[:, 0, 0, 0] / 0.5
    assert factor.min() >= 0.6 - 1e-6 and factor.max() <= 1.4 + 1e-6
    assert factor.mean().item() == pytest.approx(1.0, abs=0.02)


def test_augment_shapes_range_and_seeding():
    x = (_images(8) * 255).to(torch.uint8)
    a = aug.augment(x, 24, torch.Generator().manual_seed(3))
    b = aug.augment(x, 24, torch.Generator().manual_seed(3))
    c = aug.augment(x, 24, torch.Generator().manual_seed(4))
    assert a.shape == (8, 3, 24, 24) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_jitter_order_is_random_per_sample():
    # Brightness then contrast differs from contrast then brightness once values clip.
    cfg = aug.AugmentConfig(brightness=0.4, contrast=0.4, saturation=0, hue=0, jitter_p=1.0)
    x = torch.linspace(0, 1, 16).view(1, 1, 4, 4).repeat(3000, 1, 1, 1)
    gen = torch.Generator().manual_seed(5)
    out = aug.color_jitter(x, cfg, gen)
    means = out.mean(dim=(1, 2, 3))
    assert math.isfinite(means.std().item()) and means.std().item() > 0.01


def test_jitter_implementations_agree():
    x = _images(64)
    cfg = aug.AugmentConfig()
    selected = aug.color_jitter(x, cfg, torch.Generator().manual_seed(6), select=True)
    masked = aug.color_jitter(x, cfg, torch.Generator().manual_seed(6), select=False)
    assert torch.allclose(selected, masked, atol=1e-6)
    assert not torch.allclose(selected, x)


def test_jitter_implementations_agree_on_grey_images():
    x = _images(64, c=1)
    cfg = aug.AugmentConfig()
    selected = aug.color_jitter(x, cfg, torch.Generator().manual_seed(7), select=True)
    masked = aug.color_jitter(x, cfg, torch.Generator().manual_seed(7), select=False)
    assert torch.allclose(selected, masked, atol=1e-6)
    assert not torch.allclose(selected, x)


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


# Ops that make the host wait for the GPU: a data-dependent size, a value read back, or a tensor
# built from Python data (copied to the GPU).
_HOST_WAITS = {
    "aten::nonzero",
    "aten::_local_scalar_dense",
    "aten::index.Tensor",
    "aten::lift_fresh",
}
# aten ops of one whole-batch augment call, 64 RGB 32×32: 900 looping, 242 batched (crop, jitter).
_OPS_BEFORE = 900


def test_whole_batch_augment_dispatches_few_ops_and_never_waits():
    x = (_images(64) * 255).to(torch.uint8)
    with _CountOps() as ops:
        masked = aug.augment(x, 32, torch.Generator().manual_seed(8), select=False)
    assert len(ops.names) <= _OPS_BEFORE // 3
    assert not _HOST_WAITS & set(ops.names)
    selected = aug.augment(x, 32, torch.Generator().manual_seed(8), select=True)
    assert torch.allclose(selected, masked, atol=1e-6)
