"""Transfer: a map that starts from a pretrained picmap backbone, against one from scratch.

Needs no download: both collections are colour Fashion-MNIST (``colour_fashion.py``).

- Source: images of the training garments of classes 0–4 (T-shirt, trouser, pullover, dress,
  coat). picmap pretrains a map on them (default settings, ``--pretrain-time``); the model is
  saved in ``--pretrained`` and reused by later runs.
- Target: images of the *test* garments of classes 5–9 (sandal, shirt, sneaker, bag, ankle
  boot): garments and classes the backbone never saw.

On the target, each with the same ``--time``: picmap from scratch (the defaults), the
pretrained backbone frozen, and fine-tuned; pixel t-SNE, the yardstick; and for reference the
backbone's own features and their t-SNE (not parametric). Then frozen mode on the 10,000 test
images of all classes: the feature pass and the map, timed apart. kNN accuracy (k=15, 10-fold
cross-validation) of each map, and its seconds.

    python benchmarks/transfer.py                     # about 25 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import colour_fashion
import numpy as np

from picmap import TSimCNE, datasets
from picmap.baselines import pixels
from picmap.budget import parse_duration
from picmap.evaluate import knn_accuracy


def collections(source_n: int, target_n: int, seed: int) -> dict[str, tuple]:
    """Source, target and all-class test images (``N×32×32×3``) with their labels."""
    train_x, train_y = datasets.load("fashion-mnist", split="train")
    test_x, test_y = datasets.load("fashion-mnist", split="test")
    first, second = train_y < 5, test_y >= 5
    source = colour_fashion.make(train_x[first], train_y[first], source_n, seed)
    target = colour_fashion.make(test_x[second], test_y[second], target_n, seed + 1)
    everything = colour_fashion.make(test_x, test_y, 10_000, seed + 2)
    return {"source": source[:2], "target": target[:2], "all": everything[:2]}


def pretrain(images: np.ndarray, folder: Path, budget: float, seed: int) -> float:
    """Fit and save the source map unless ``folder`` holds one; its training seconds."""
    if (folder / "config.json").is_file():
        print(f"pretrained model reused from {folder}")
        return float("nan")
    started = time.perf_counter()
    model = TSimCNE(time_budget=budget, seed=seed, verbose=False).fit(images)
    seconds = time.perf_counter() - started
    model.save(folder)
    return seconds


def timed_map(images: np.ndarray, labels: np.ndarray, **params) -> tuple[float, float, TSimCNE]:
    """kNN accuracy and seconds of a map fitted with ``params``."""
    started = time.perf_counter()
    model = TSimCNE(verbose=False, **params)
    Y = model.fit_transform(images)
    return knn_accuracy(Y, labels), time.perf_counter() - started, model


def tsne(X: np.ndarray, labels: np.ndarray, seed: int, pca: bool) -> tuple[float, float]:
    """kNN accuracy and seconds of t-SNE of the rows of ``X`` (after a 50-D PCA if ``pca``)."""
    from openTSNE import TSNE
    from sklearn.decomposition import PCA

    started = time.perf_counter()
    X = PCA(50, random_state=seed).fit_transform(X) if pca else X
    Y = np.asarray(TSNE(random_state=seed, n_jobs=-1).fit(X.astype(np.float64)))
    return knn_accuracy(Y, labels), time.perf_counter() - started


def reference_rows(images: np.ndarray, labels: np.ndarray, backbone: str, seed: int) -> list:
    """Pixel t-SNE, and the pretrained backbone's features (kNN, and t-SNE of them)."""
    import torch

    from picmap.features import compute_features
    from picmap.pretrained import load_backbone

    started = time.perf_counter()
    network = load_backbone(backbone, verbose=False)
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    features = compute_features(network, batch, torch.device("cpu"), verbose=False).numpy()
    seconds = time.perf_counter() - started
    return [
        ("pixel t-SNE", *tsne(pixels(images), labels, seed, pca=True)),
        ("backbone features (no map)", knn_accuracy(features, labels), seconds),
        ("backbone features + t-SNE", *tsne(features, labels, seed, pca=False)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained", default="benchmarks/transfer_source_model")
    parser.add_argument("--pretrain-time", default="10m")
    parser.add_argument("--time", default="2m", help="training budget of each target map")
    parser.add_argument("--source-n", type=int, default=15_000)
    parser.add_argument("--target-n", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = collections(args.source_n, args.target_n, args.seed)
    folder = Path(args.pretrained)
    source_seconds = pretrain(data["source"][0], folder, parse_duration(args.pretrain_time), 0)
    print(f"source: {args.source_n:,} images, pretrained in {source_seconds:.0f} s")

    images, labels = data["target"]
    budget, backbone = parse_duration(args.time), f"picmap:{folder}"
    rows = reference_rows(images, labels, backbone, args.seed)
    for name, params in [
        ("picmap from scratch", {}),
        ("picmap backbone, frozen", {"backbone": backbone, "backbone_mode": "frozen"}),
        ("picmap backbone, fine-tuned", {"backbone": backbone, "backbone_mode": "finetune"}),
    ]:
        knn, seconds, _ = timed_map(images, labels, time_budget=budget, seed=args.seed, **params)
        rows.append((name, knn, seconds))
    print(f"\ntarget: {len(images):,} images of unseen garments and classes, --time {args.time}")
    print(f"{'map':32} {'kNN':>7} {'seconds':>8}")
    for name, knn, seconds in rows:
        print(f"{name:32} {knn:7.1%} {seconds:8.0f}")

    images, labels = data["all"]
    for name, knn, seconds in reference_rows(images, labels, backbone, args.seed):
        print(f"10,000 test images of all 10 classes: {name} kNN {knn:.1%} ({seconds:.0f} s)")
    with tempfile.TemporaryDirectory() as cache:
        params = {"backbone": backbone, "backbone_mode": "frozen", "feature_cache": cache}
        params["seed"] = args.seed
        _, first, _ = timed_map(images, labels, total_epochs=[1, 0, 0], **params)
        knn, seconds, model = timed_map(images, labels, **params)
    print(
        f"\nfrozen, 10,000 test images of all 10 classes: features and a 1-epoch fit {first:.0f} s;"
        f" then the default map (features from the cache) {seconds:.0f} s, kNN {knn:.1%}, "
        f"epochs {list(model.total_epochs_)}"
    )


if __name__ == "__main__":
    main()
