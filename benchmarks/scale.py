"""How picmap's steps grow with the collection: 10⁴, 10⁵ and 10⁶ images on this machine.

Makes a synthetic packed collection (16×16 colour images of 10 classes: a coarse colour pattern
per class, shifted, brightened and noised per image), written once into ``--data`` and reused,
then runs each step in a fresh process and prints its wall time and peak memory (the process's
maximum resident set, which counts the pages of the memory-mapped images it touched):

- neighbours: the pixel-space neighbour search training uses (PCA of square-rooted pixels, the
  15 nearest of every image), and its recall against exact search on 1,000 images;
- train: a fit of one epoch per stage; the time of the stage-3 epoch (the whole network);
- place: the fitted network's map of every image;
- evaluate: what ``picmap evaluate`` computes without baselines (the backbone's features, kNN
  and linear accuracy, neighbourhood preservation, outliers, label errors, near-duplicates);
- explore: writing the explorer (the single file up to its limit; the served view's index
  beyond), and with ``--browser`` opening it in headless Chromium: time to the first drawn
  frame and the median pan and zoom frame.

Then the growth exponent of each step's time between sizes (1 = linear, 2 = quadratic).

    python benchmarks/scale.py                       # 10⁴, 10⁵, 10⁶ (about 40 min on 2 cores)
    python benchmarks/scale.py --sizes 10000,100000  # a quick look
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
STEPS = ("neighbours", "train", "place", "evaluate", "explore")
SIDE, CLASSES, CHUNK = 16, 10, 50_000


# -- the collection ------------------------------------------------------------------------------


def collection(data: Path, n: int, seed: int = 0) -> Path:
    """The packed file of the first ``n`` synthetic images (made once; the same images for
    every size, so larger collections contain the smaller ones)."""
    from numpy.lib.format import open_memmap

    from picmap.data.packed import _sidecar, sidecar_path

    path = data / f"synthetic-{n}.npy"
    if path.is_file() and sidecar_path(path).is_file():
        return path
    data.mkdir(parents=True, exist_ok=True)
    labels = np.random.default_rng(seed).integers(CLASSES, size=n)
    tmp = path.with_suffix(".tmp.npy")
    images = open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 3, SIDE, SIDE))
    prototypes = _prototypes(seed)
    for start in range(0, n, CHUNK):
        rng = np.random.default_rng([seed, start])
        images[start : start + CHUNK] = _draw(prototypes, labels[start : start + CHUNK], rng)
    images.flush()
    del images
    os.replace(tmp, path)
    names = [f"class {c}" for c in range(CLASSES)]
    sidecar_path(path).write_text(_sidecar((n, 3, SIDE, SIDE), labels, names, None))
    return path


def _prototypes(seed: int) -> np.ndarray:
    """Per class a 3×(SIDE+8)² colour pattern of 4-pixel blocks."""
    coarse = np.random.default_rng(seed + 1).uniform(
        30, 225, (CLASSES, 3, SIDE // 4 + 2, SIDE // 4 + 2)
    )
    return np.kron(coarse, np.ones((1, 1, 4, 4)))


def _draw(prototypes: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Images of the given classes: a random SIDE² window of the class pattern, brightness
    ×0.6–1.4, Gaussian noise of σ 40."""
    n = len(labels)
    dy, dx = rng.integers(0, 9, (2, n))
    rows = dy[:, None] + np.arange(SIDE)
    cols = dx[:, None] + np.arange(SIDE)
    windows = prototypes[
        labels[:, None, None, None],
        np.arange(3)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    bright = rng.uniform(0.6, 1.4, (n, 1, 1, 1))
    noisy = windows * bright + rng.normal(0, 40, windows.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


# -- the steps, each in its own process ----------------------------------------------------------


def run_step(step: str, path: Path, run_dir: Path, browser: bool) -> dict:
    """One step on the collection at ``path``; returns its figures."""
    import torch

    from picmap.data.packed import open_packed

    torch.manual_seed(0)
    store = open_packed(path)
    started = time.perf_counter()
    figures = globals()[f"_{step}"](store, run_dir, browser)
    figures.setdefault("seconds", time.perf_counter() - started)
    figures["peak_mb"] = peak_mb()
    return figures


def peak_mb() -> float:
    """This process's peak resident memory in MiB. VmHWM, not getrusage's ru_maxrss: Linux
    carries ru_maxrss over from the parent through fork and exec."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def _neighbours(store, run_dir: Path, browser: bool) -> dict:
    import torch

    from picmap.neighbours import knn_graph, nearest_neighbours, root_pixel_pca

    started = time.perf_counter()
    points = root_pixel_pca(store.images, torch.device("cpu"))
    pca = time.perf_counter() - started
    found = nearest_neighbours(points, 15).numpy()
    seconds = time.perf_counter() - started
    rows = np.random.default_rng(0).choice(len(points), min(1000, len(points)), replace=False)
    _, exact = knn_graph(points.numpy(), 15, rows=rows, exact=True)
    recall = np.mean([len(set(a) & set(b)) / 15 for a, b in zip(found[rows], exact, strict=True)])
    return {"seconds": seconds, "pca_seconds": pca, "recall": float(recall)}


def _train(store, run_dir: Path, browser: bool) -> dict:
    from picmap import TSimCNE

    ends: list[float] = []
    model = TSimCNE(total_epochs=(1, 1, 1), verbose=False, seed=0)
    started = time.perf_counter()
    model.fit(store, on_epoch_end=lambda trainer: ends.append(time.perf_counter()))
    fit_seconds = time.perf_counter() - started
    model.save(run_dir)
    return {
        "seconds": ends[2] - ends[1],
        "fit_seconds": fit_seconds,
        "backbone": model.backbone_,
        "recipe": model.recipe_,
    }


def _place(store, run_dir: Path, browser: bool) -> dict:
    from picmap import TSimCNE

    model = TSimCNE.load(run_dir)
    started = time.perf_counter()
    Y = model.transform(store)
    seconds = time.perf_counter() - started
    np.save(run_dir / "embedding.npy", Y)
    return {"seconds": seconds}


def _evaluate(store, run_dir: Path, browser: bool) -> dict:
    from picmap import TSimCNE
    from picmap.discover import discover
    from picmap.evaluate import Embedding, quality_report

    Y = np.load(run_dir / "embedding.npy")
    started = time.perf_counter()
    features = TSimCNE.load(run_dir).features(store)
    report = quality_report(Embedding("map", Y), Embedding("features", features), store.labels)
    discover(Y, features, store.labels)
    return {
        "seconds": time.perf_counter() - started,
        "knn_accuracy": report.scores[0].knn_accuracy,
        "features_knn_accuracy": report.scores[1].knn_accuracy,
        "preservation": report.neighborhood_preservation,
    }


def _explore(store, run_dir: Path, browser: bool) -> dict:
    from picmap.explore import SINGLE_FILE_UP_TO, write_explorer
    from picmap.explore.tiles import TileMap

    Y = np.load(run_dir / "embedding.npy")
    data = {"labels": store.labels, "class_names": store.class_names, "images": store.images}
    started = time.perf_counter()
    if len(Y) <= SINGLE_FILE_UP_TO:
        page = write_explorer(run_dir / "explorer.html", Y, **data)
        figures = {"view": "single file", "file_mb": page.stat().st_size / 2**20}
    else:
        view = TileMap(Y, **data)
        figures = {"view": "served tiles"}
    figures["seconds"] = time.perf_counter() - started
    if browser:
        view = TileMap(Y, **data)
        figures["peak_mb_before_browser"] = peak_mb()
        figures.update(_in_browser(view, Y))
    return figures


def _in_browser(view, Y: np.ndarray) -> dict:
    """The served view in headless Chromium (software rendering): seconds until the first
    view is drawn; median and slowest pan and zoom frame; the seconds until a zoomed-in view's
    tiles are all drawn; and whether hovering a point shows that point."""
    import shutil

    from playwright.sync_api import sync_playwright

    with view.serve() as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"))
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        started = time.perf_counter()
        page.goto(url)
        page.wait_for_function("() => window.picmap && window.picmap.ready", timeout=120_000)
        first = time.perf_counter() - started
        frames = page.evaluate("window.picmap.frameTimes(30)")
        started = time.perf_counter()
        page.evaluate("window.picmap.ready = false; window.picmap.zoomAt(640, 400, 3)")
        page.wait_for_function("() => window.picmap.ready", timeout=120_000)
        settled = time.perf_counter() - started
        target = int(np.argmin(np.linalg.norm(Y - np.median(Y, axis=0), axis=1)))
        page.click("#fit")
        box = page.locator("#map").bounding_box()
        x, y = page.evaluate("([x, y]) => window.picmap.toPage(x, y)", Y[target].tolist())
        page.evaluate("([x, y]) => window.picmap.zoomAt(x, y, 6)", [x - box["x"], y - box["y"]])
        page.mouse.move(x, y)
        page.wait_for_function("() => window.picmap.hovered() >= 0", timeout=10_000)
        hovered = page.evaluate("window.picmap.hovered()")
        browser.close()
    gap = float(np.linalg.norm(Y[hovered] - Y[target]))
    return {
        "open_seconds": first,
        "pan_ms": [float(np.median(frames["pan"])), float(max(frames["pan"]))],
        "zoom_ms": [float(np.median(frames["zoom"])), float(max(frames["zoom"]))],
        "zoomed_in_drawn_seconds": settled,
        "hovered_the_point": hovered == target,
        "hover_distance": gap,
    }


# -- the table -----------------------------------------------------------------------------------


def _exponent(small: tuple[int, float], large: tuple[int, float]) -> float | None:
    (n1, t1), (n2, t2) = small, large
    return math.log(t2 / t1) / math.log(n2 / n1) if t1 > 0 and t2 > 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--data", type=Path, default=HERE / "scale_data")
    parser.add_argument("--browser", action="store_true", help="also time the explorer in Chromium")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(run_step(args.step, args.path, args.run_dir, args.browser)))
        return
    sizes = [int(size) for size in args.sizes.split(",")]
    results: dict[str, dict[int, dict]] = {}
    for n in sizes:
        started = time.perf_counter()
        path = collection(args.data, n)
        size_mb = path.stat().st_size / 2**20
        print(f"N = {n}: {path.name}, {size_mb:.0f} MB ({time.perf_counter() - started:.0f} s)")
        run_dir = args.data / f"run-{n}"
        run_dir.mkdir(exist_ok=True)
        for step in args.steps.split(","):
            command = [
                sys.executable,
                __file__,
                "--step",
                step,
                "--path",
                str(path),
                "--run-dir",
                str(run_dir),
            ] + (["--browser"] if args.browser else [])
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                print(f"  {step}: failed\n{done.stderr[-3000:]}")
                continue
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            results.setdefault(step, {})[n] = figures
            extra = {k: v for k, v in figures.items() if k not in ("seconds", "peak_mb")}
            print(
                f"  {step:10s} {figures['seconds']:8.1f} s  {figures['peak_mb']:7.0f} MB  "
                f"{json.dumps(extra)}",
                flush=True,
            )
    print("\nGrowth exponent of each step's time (log time ratio / log size ratio):")
    for step, by_size in results.items():
        known = sorted(by_size)
        pairs = [
            f"{a}→{b}: {_exponent((a, by_size[a]['seconds']), (b, by_size[b]['seconds'])):.2f}"
            for a, b in itertools.pairwise(known)
        ]
        print(f"  {step:10s} " + ", ".join(pairs))


if __name__ == "__main__":
    main()
