"""Map quality on Fashion-MNIST: picmap's 2-D kNN accuracy against pixel-space t-SNE and UMAP.

Default: a stratified 10,000-image subset, kNN accuracy (k=15) by 5-fold cross-validation.
``--full``: all 70,000 images embedded together, kNN fitted on the 60,000 training images and
scored on the 10,000 test images. Prints one table: method, dimensions, kNN accuracy, wall time.

    python benchmarks/quality.py                      # 10k subset, CPU-sized schedule
    python benchmarks/quality.py --epochs 12,2,6 --baselines tsne
    python benchmarks/quality.py --full --device cuda --backbone resnet18 --epochs 200,10,40
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.model_selection import train_test_split

from picmap import TSimCNE, datasets
from picmap.evaluate import knn_accuracy


def load_data(full: bool, subset: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, labels and the held-out mask (all False for the cross-validated subset)."""
    train_x, train_y = datasets.load("fashion-mnist", split="train")
    test_x, test_y = datasets.load("fashion-mnist", split="test")
    images, labels = np.concatenate([train_x, test_x]), np.concatenate([train_y, test_y])
    if full:
        return images, labels, np.arange(len(images)) >= len(train_x)
    keep, _ = train_test_split(
        np.arange(len(images)), train_size=subset, stratify=labels, random_state=seed
    )
    return images[keep], labels[keep], np.zeros(subset, dtype=bool)


def score(Y: np.ndarray, labels: np.ndarray, held_out: np.ndarray) -> float:
    """kNN accuracy (k=15): on the held-out split when there is one, else 5-fold CV."""
    return knn_accuracy(Y, labels, k=15, test_mask=held_out if held_out.any() else None)


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def run_picmap(images: np.ndarray, args: argparse.Namespace) -> np.ndarray:
    model = TSimCNE(
        args.backbone,
        total_epochs=[int(e) for e in args.epochs.split(",")],
        batch_size=args.batch_size,
        learning_rate=args.lr or "auto",
        device=args.device,
        seed=args.seed,
    )
    return model.fit_transform(images)


def pixels(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32) / 255


def run_tsne(images: np.ndarray, seed: int) -> np.ndarray:
    from openTSNE import TSNE

    return np.asarray(TSNE(n_jobs=-1, random_state=seed).fit(pixels(images)))


def run_umap(images: np.ndarray, seed: int) -> np.ndarray:
    import umap

    return umap.UMAP(random_state=seed).fit_transform(pixels(images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="all 70,000 images, train/test split")
    parser.add_argument("--subset", type=int, default=10_000)
    parser.add_argument("--epochs", default="12,2,6", help="picmap's three stage lengths")
    parser.add_argument("--backbone", default="small")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--baselines", default="tsne,umap", help="comma list of tsne, umap, pixels ('' for none)"
    )
    args = parser.parse_args()

    images, labels, held_out = load_data(args.full, args.subset, args.seed)
    rows = []
    Y, seconds = timed(run_picmap, images, args)
    rows.append((f"picmap {args.backbone} {args.epochs}", 2, score(Y, labels, held_out), seconds))
    for name in filter(None, args.baselines.split(",")):
        if name == "pixels":
            rows.append(("raw pixels", images[0].size, score(pixels(images), labels, held_out), 0))
            continue
        runner = {"tsne": run_tsne, "umap": run_umap}[name]
        Y, seconds = timed(runner, images, args.seed)
        rows.append((f"pixel {name}", 2, score(Y, labels, held_out), seconds))

    protocol = "70k, train/test" if args.full else f"{len(images)} images, 5-fold"
    print(f"\nFashion-MNIST ({protocol}), kNN accuracy k=15")
    print(f"{'method':32s} {'dims':>5s} {'kNN acc':>8s} {'time':>9s}")
    for name, dims, acc, seconds in rows:
        print(f"{name:32s} {dims:5d} {100 * acc:7.1f}% {seconds:8.0f}s")


if __name__ == "__main__":
    main()
