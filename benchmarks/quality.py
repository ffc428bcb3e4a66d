"""Map quality on Fashion-MNIST (grey, or in colour): picmap's map and features against baselines.

Prints the protocol table of ``picmap evaluate --baselines`` (method, dimensions, kNN accuracy
with k=15, linear accuracy, wall time) for picmap's map, its backbone's features, t-SNE of
those features, and pixel-space PCA (50-D and 2-D), t-SNE and UMAP; then the neighbourhood
preservation of the map.

Default: a stratified 10,000-image subset, classifiers scored by 5-fold cross-validation.
``--full``: all 70,000 images embedded together, classifiers fitted on the 60,000 training
images and scored on the 10,000 test images; with ``--subset N``, a stratified N-image part of
the 70,000 that keeps the train/test proportions (to check the protocol quickly).

    python benchmarks/quality.py                      # 10k subset, picmap's defaults (10 min)
    python benchmarks/quality.py --recipes paper,picmap --backbone small --epochs 12,2,6 \
        --no-baselines                                # the recipes side by side
    python benchmarks/quality.py --full --subset 2000 --epochs 2,1,1   # a quick check
    python benchmarks/quality.py --full --device cuda --backbone resnet18 --epochs 200,10,40
    python benchmarks/quality.py --dataset colour-fashion   # colour images; adds "same item"
    python benchmarks/quality.py --export data.npz    # the chosen images, for a machine without
    python benchmarks/quality.py --data data.npz      # the Debian package; then read from there
"""

from __future__ import annotations

import argparse
import time

import colour_fashion
import numpy as np
from sklearn.model_selection import train_test_split

from picmap import TSimCNE, datasets
from picmap.baselines import run_baselines
from picmap.evaluate import Embedding, quality_report
from picmap.recipes import RECIPES

DEFAULT_SUBSET = 10_000


def load_data(
    full: bool, subset: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Images, labels and the held-out mask (None: cross-validate).

    ``subset`` images are drawn stratified by class (and, with ``full``, by train/test).
    """
    train_x, train_y = datasets.load("fashion-mnist", split="train")
    test_x, test_y = datasets.load("fashion-mnist", split="test")
    images, labels = np.concatenate([train_x, test_x]), np.concatenate([train_y, test_y])
    is_test = np.arange(len(images)) >= len(train_x)
    size = subset or (len(images) if full else DEFAULT_SUBSET)
    if size < len(images):
        keep, _ = train_test_split(
            np.arange(len(images)),
            train_size=size,
            stratify=labels * 2 + is_test,
            random_state=seed,
        )
        keep = np.sort(keep)
        images, labels, is_test = images[keep], labels[keep], is_test[keep]
    return images, labels, is_test if full else None


def read_data(
    path: str, subset: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """What ``--export`` wrote (images, labels, item ids, held-out mask), or a stratified
    ``subset`` of it."""
    with np.load(path, allow_pickle=False) as saved:
        arrays = {key: saved[key] for key in saved.files}
    images, labels = arrays.pop("images"), arrays.pop("labels")
    if subset and subset < len(images):
        keep, _ = train_test_split(
            np.arange(len(images)), train_size=subset, stratify=labels, random_state=seed
        )
        keep = np.sort(keep)
        images, labels = images[keep], labels[keep]
        arrays = {key: value[keep] for key, value in arrays.items()}
    return images, labels, arrays.get("items"), arrays.get("held_out")


def run_picmap(
    images: np.ndarray, recipe: str, args: argparse.Namespace
) -> tuple[Embedding, Embedding]:
    """Fit picmap with ``recipe``; return its map (timed) and its backbone's features."""
    model = TSimCNE(
        args.backbone,
        recipe=recipe,
        total_epochs=(
            "auto" if args.epochs == "auto" else [int(e) for e in args.epochs.split(",")]
        ),
        time_budget=args.time,
        batch_size=args.batch_size or "auto",
        learning_rate=args.lr or "auto",
        device=args.device,
        seed=args.seed,
        mixed_precision=not args.fp32,
        compile_network=args.compile,
        verbose=not args.quiet,
    )
    started = time.perf_counter()
    Y = model.fit_transform(images)
    seconds = time.perf_counter() - started
    precision = "fp32" if args.fp32 else "auto"
    recipe_name = _as_chosen(recipe, model.recipe_)
    backbone_name = _as_chosen(args.backbone, model.backbone_)
    epochs = ",".join(map(str, model.total_epochs_))
    name = f"picmap {recipe_name} recipe, {backbone_name} {epochs} {precision}"
    the_map = Embedding(name, Y, seconds)
    return the_map, Embedding("backbone features", model.features(images))


def _as_chosen(asked: str, chosen: object) -> str:
    """A setting as asked, followed by what "auto" chose."""
    return f"{asked} ({chosen})" if asked != chosen else asked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset",
        choices=["fashion-mnist", "colour-fashion"],
        default="fashion-mnist",
        help="colour-fashion: garments tinted, scaled and placed on textured colour "
        "backgrounds (benchmarks/colour_fashion.py), with the same-item score",
    )
    parser.add_argument("--full", action="store_true", help="all 70,000 images, train/test split")
    parser.add_argument(
        "--subset",
        type=int,
        default=None,
        help=f"images to use [default: {DEFAULT_SUBSET:,}, or all 70,000 with --full]",
    )
    parser.add_argument(
        "--epochs", default="auto", help="picmap's three stage lengths [default: picmap's own]"
    )
    parser.add_argument("--time", type=float, default=None, help="time budget in seconds")
    parser.add_argument(
        "--recipes",
        default="auto",
        help=f"comma-separated recipes to fit, side by side ({', '.join(RECIPES)}); the "
        "first one's features are the ones scored",
    )
    parser.add_argument("--backbone", default="auto")
    parser.add_argument("--batch-size", type=int, default=None, help="[default: picmap's]")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fp32", action="store_true", help="no bfloat16 autocast on CUDA")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument(
        "--no-baselines", action="store_true", help="only picmap's map and features"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--data",
        default=None,
        help="read the images from this .npz (as --export writes it) instead of the package",
    )
    parser.add_argument(
        "--export", default=None, help="write the chosen images to this .npz and stop"
    )
    args = parser.parse_args()

    name, images, labels, items, held_out = chosen_data(args)
    if args.export:
        extra = {"held_out": held_out, "items": items}
        extra = {key: value for key, value in extra.items() if value is not None}
        np.savez_compressed(args.export, images=images, labels=labels, **extra)
        print(f"wrote {len(images):,} images to {args.export}")
        return
    recipes = args.recipes.split(",")
    the_map, features = run_picmap(images, recipes[0], args)
    baselines = [run_picmap(images, recipe, args)[0] for recipe in recipes[1:]]
    if not args.no_baselines:
        baselines += run_baselines(images, features.coords, seed=args.seed)
    report = quality_report(
        the_map, features, labels, baselines=baselines, test_mask=held_out, seed=args.seed
    )
    print(f"\n{name}, {len(images):,} images")
    print(report.text())
    if items is not None:
        print("Same item: share of the garments drawn twice whose 5 nearest neighbours hold")
        print("the other drawing")
        for embedding in [the_map, features, *baselines]:
            share = colour_fashion.same_item_share(embedding.coords, items)
            print(f"  {embedding.method:44s} {100 * share:5.1f}%")


def chosen_data(
    args: argparse.Namespace,
) -> tuple[str, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The benchmark's images: name, images, labels, item ids (or None), held-out mask."""
    if args.data:
        return args.data, *read_data(args.data, args.subset, args.seed)
    if args.dataset == "colour-fashion":
        split = "full" if args.full else "subset"
        n = args.subset or DEFAULT_SUBSET
        return "Colour Fashion-MNIST", *colour_fashion.load(split, n, args.seed)
    images, labels, held_out = load_data(args.full, args.subset, args.seed)
    return "Fashion-MNIST", images, labels, None, held_out


if __name__ == "__main__":
    main()
