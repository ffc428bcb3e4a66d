"""One recipe experiment on the Fashion-MNIST 10k subset: change one setting, measure the map.

Trains the three stages with the settings given on the command line and prints one JSON line:
the settings, the kNN accuracy (k=15, 5-fold) of the 128-D output after stage 1, of the 2-D
map after stage 2 and at the end, and the training wall time (evaluation excluded). Appends the
line to ``--log`` too, so a queue of experiments leaves one file to build a table from.

    python benchmarks/recipe_experiments.py --name baseline --recipe paper
    python benchmarks/recipe_experiments.py --name "stage 3 at lr/10" --finetune-lr-ratio 0.1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from quality import load_data

from picmap import TSimCNE
from picmap.evaluate import knn_accuracy
from picmap.recipes import resolve_recipe
from picmap.train import Trainer


def embed(net: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    """The network's output for every image, without augmentation."""
    was_training = net.training
    net.eval()
    with torch.no_grad():
        batches = [images[i : i + 1024] for i in range(0, len(images), 1024)]
        out = torch.cat([net(batch.float() / 255) for batch in batches])
    net.train(was_training)
    return out.numpy()


def _parse(items: list[str]) -> dict:
    return {k: json.loads(v) for k, v in (item.split("=", 1) for item in items)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="what this experiment changes")
    parser.add_argument("--recipe", default="picmap", help="the preset the changes start from")
    parser.add_argument("--epochs", default="12,2,6")
    parser.add_argument("--backbone", default="small")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None, help="[default: the recipe's]")
    parser.add_argument("--change", nargs="*", default=[], help="recipe settings, key=json")
    parser.add_argument("--set", nargs="*", default=[], help="other TSimCNE params, key=json")
    parser.add_argument("--subset", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log", default="benchmarks/recipe_experiments.jsonl")
    args = parser.parse_args()

    images, labels, _ = load_data(False, args.subset, args.seed)
    params = _parse(args.set)
    changes = _parse(args.change)
    recipe = resolve_recipe({**resolve_recipe(args.recipe).to_json(), **changes})
    model = TSimCNE(
        args.backbone,
        recipe=recipe,
        total_epochs=[int(e) for e in args.epochs.split(",")],
        seed=args.seed,
        verbose=False,
        device="cpu",
        **({"batch_size": args.batch_size} if args.batch_size else {}),
        **({"learning_rate": args.lr} if args.lr else {}),
        **params,
    )
    scores: dict[str, float] = {}
    eval_seconds = 0.0
    tensor_images = torch.from_numpy(images if images.ndim == 4 else images[:, None])

    def score_stage_ends(trainer: Trainer) -> None:
        nonlocal eval_seconds
        p = trainer.progress
        if p.epoch != trainer.config.stages[p.stage].epochs or p.stage == 2:
            return
        started = time.perf_counter()
        Y = embed(trainer.net, tensor_images.to(memory_format=torch.channels_last))
        scores["128-D" if p.stage == 0 else "2-D after stage 2"] = knn_accuracy(Y, labels)
        eval_seconds += time.perf_counter() - started

    started = time.perf_counter()
    Y = model.fit_transform(images, on_epoch_end=score_stage_ends)
    seconds = time.perf_counter() - started - eval_seconds
    scores["2-D final"] = knn_accuracy(Y, labels)
    record = {
        "name": args.name,
        "recipe": args.recipe,
        "epochs": args.epochs,
        "backbone": args.backbone,
        "batch_size": model.batch_size_,
        "changes": changes,
        "params": params,
        **{k: round(100 * v, 1) for k, v in scores.items()},
        "train_seconds": round(seconds),
        "threads": torch.get_num_threads(),
    }
    line = json.dumps(record)
    print(line)
    with Path(args.log).open("a") as log:
        log.write(line + "\n")


if __name__ == "__main__":
    main()
