"""Colour Fashion-MNIST: colour images whose pixel distances mislead, made from Fashion-MNIST.

Each garment is tinted a random colour, scaled to 60–100 % of the canvas, placed at a random
position on a 32×32 canvas over a random smooth colour background with texture noise. The label
is the garment's class. One garment in ten is drawn twice, in two independent styles: the
"same item" score (:func:`same_item_share`) is the share of those images whose nearest map
neighbours include the other rendering — a map that groups by what is shown, not by colour or
place, finds them.

Deterministic: the same ``seed`` gives the same images. Needs Debian's dataset-fashion-mnist
(or ``root=``, see ``picmap.datasets``).

    python benchmarks/colour_fashion.py --show grid.png     # a look at the first 64 images
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from picmap import datasets

CANVAS = 32
SCALE = (0.6, 1.0)
TWICE = 0.1  # share of garments drawn twice
BACKGROUND_VARIATION = 0.25


def render(garments: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each grey ``28×28`` garment as a ``32×32×3`` uint8 colour image in a random style."""
    n = len(garments)
    out = np.empty((n, CANVAS, CANVAS, 3), np.uint8)
    # Smooth backgrounds: a random colour, varied by a random 3×3 colour field upsampled; then
    # grain and faint stripes.
    base = rng.uniform(0.1, 0.9, (n, 3, 1, 1))
    field = base + BACKGROUND_VARIATION * rng.uniform(-1, 1, (n, 3, 3, 3))
    field = torch.from_numpy(field.astype(np.float32))
    background = F.interpolate(field, size=CANVAS, mode="bicubic", align_corners=True).numpy()
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)
    for i in range(n):
        bg = background[i].transpose(1, 2, 0)
        angle, frequency = rng.uniform(0, np.pi), rng.uniform(0.3, 1.2)
        stripes = np.sin(frequency * (xx * np.cos(angle) + yy * np.sin(angle)))
        bg = bg + 0.06 * stripes[..., None] + rng.normal(0, 0.05, bg.shape)
        side = round(28 * rng.uniform(*SCALE) * CANVAS / 28)
        garment = torch.from_numpy(garments[i].astype(np.float32) / 255)[None, None]
        g = F.interpolate(garment, size=side, mode="bilinear", antialias=True)[0, 0].numpy()
        top, left = rng.integers(0, CANVAS - side + 1, size=2)
        shade = np.zeros((CANVAS, CANVAS), np.float32)
        shade[top : top + side, left : left + side] = g
        alpha = np.clip(2.5 * shade, 0, 1)[..., None]
        tint = rng.uniform(0.05, 1, 3).astype(np.float32)
        colour = tint * (0.45 + 0.55 * shade[..., None])
        image = alpha * colour + (1 - alpha) * bg
        out[i] = np.clip(np.round(255 * image), 0, 255).astype(np.uint8)
    return out


def make(
    garments: np.ndarray, labels: np.ndarray, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` images from ``garments``: images ``n×32×32×3``, labels, and item ids (the index of
    the source garment; two images with one id show the same garment in two styles)."""
    rng = np.random.default_rng(seed)
    twice = round(n * TWICE / (1 + TWICE))
    items = rng.choice(len(garments), size=n - twice, replace=False)
    items = np.concatenate([items, items[:twice]])
    items = items[rng.permutation(n)]
    return render(garments[items], rng), labels[items], items


def load(
    split: str = "subset", n: int = 10_000, seed: int = 0, root: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Images, labels, item ids and the held-out mask (None: cross-validate).

    ``"subset"``: ``n`` images made from the Fashion-MNIST training garments. ``"full"``: the
    60,000/10,000 protocol — 60,000 images from the training garments, then 10,000 from the
    test garments (the mask marks those).
    """
    train_x, train_y = datasets.load("fashion-mnist", split="train", root=root)
    if split == "subset":
        images, labels, items = make(train_x, train_y, n, seed)
        return images, labels, items, None
    if split != "full":
        raise ValueError(f"split={split!r} must be 'subset' or 'full'")
    test_x, test_y = datasets.load("fashion-mnist", split="test", root=root)
    a = make(train_x, train_y, 60_000, seed)
    b = make(test_x, test_y, 10_000, seed + 1)
    held_out = np.arange(70_000) >= 60_000
    items = np.concatenate([a[2], b[2] + len(train_x)])
    return np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]), items, held_out


def same_item_share(coords: np.ndarray, items: np.ndarray, k: int = 5) -> float:
    """Share of the images drawn twice whose ``k`` nearest neighbours (Euclidean, in
    ``coords``) include the other drawing of the same garment."""
    from sklearn.neighbors import NearestNeighbors

    _, first, counts = np.unique(items, return_inverse=True, return_counts=True)
    twice = np.flatnonzero(counts[first] == 2)
    neighbours = NearestNeighbors(n_neighbors=k + 1).fit(coords)
    _, found = neighbours.kneighbors(coords[twice])
    hits = [(items[row[1:]] == items[i]).any() for i, row in zip(twice, found, strict=True)]
    return float(np.mean(hits))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--show", default="colour_fashion.png", help="PNG of the first images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    images, _, items, _ = load(n=10_000, seed=args.seed)
    from PIL import Image

    grid = images[:64].reshape(8, 8, CANVAS, CANVAS, 3).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(8 * CANVAS, 8 * CANVAS, 3)
    Image.fromarray(grid).resize((8 * CANVAS * 3,) * 2, Image.NEAREST).save(args.show)
    pairs = len(items) - len(np.unique(items))
    print(f"{len(images):,} images, {pairs:,} garments drawn twice; first 64 in {args.show}")


if __name__ == "__main__":
    main()
