"""The ``picmap`` command: from a folder (or a named dataset) to a map you can explore."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
import warnings
import webbrowser
from pathlib import Path

import click
import numpy as np

from . import outputs
from ._io import write_text_atomic
from .data import datasets
from .data.sources import to_store
from .data.store import ImageStore
from .estimator import TSimCNE, resolve_device
from .train import CHECKPOINT_FILE, Interrupted

RUN_JSON = "run.json"
RUN_LOG = "run.log"
CPU_EPOCHS = (60, 10, 30)
GPU_EPOCHS = (1000, 50, 450)


class CliError(click.ClickException):
    """An error shown as one line, without a traceback."""

    def show(self, file=None) -> None:
        click.echo(f"picmap: error: {self.message}", err=True)


def _load_source(source: str, root: str | None, split: str, download: bool, verbose: bool):
    """Turn SOURCE (a path or a dataset name) into an ImageStore."""
    path = Path(source)
    if path.suffix in (".npy", ".npz") and path.is_file():
        return _load_array_file(path, verbose)
    if path.exists():
        return to_store(path, verbose=verbose)
    if datasets.is_known(source):
        images, labels, names = datasets.load(
            source, root=root, split=split, download=download, return_class_names=True
        )
        store = to_store(images, labels, verbose=verbose)
        store.class_names = names
        return store
    raise CliError(
        f"SOURCE {source!r} is neither an existing file or folder nor a named dataset "
        "(see `picmap datasets`)"
    )


def _load_array_file(path: Path, verbose: bool) -> ImageStore:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise CliError(f"{path} is not a readable numpy file ({err})") from None
    if isinstance(loaded, np.ndarray):
        return to_store(loaded, verbose=verbose)
    with loaded:
        keys = set(loaded.files)
        image_key = next((k for k in ("images", "X", "x") if k in keys), None)
        label_key = next((k for k in ("labels", "y") if k in keys), None)
        if image_key is None:
            raise CliError(f"{path} holds {sorted(keys)}; name the image array 'images' (or 'X')")
        labels = loaded[label_key] if label_key else None
        return to_store(loaded[image_key], labels, verbose=verbose)


def _parse_epochs(text: str) -> tuple[int, int, int] | None:
    if text == "auto":
        return None
    try:
        epochs = tuple(int(v) for v in text.split(","))
    except ValueError:
        epochs = ()
    if len(epochs) != 3 or min(epochs) < 0:
        raise CliError(f"--epochs {text!r} must be three numbers like 60,10,30 (or 'auto')")
    return epochs


def _default_batch(n: int) -> int:
    """512, or for small data the largest power of two that leaves at least 4 steps per epoch."""
    batch = 512
    while batch > 2 and batch * 4 > n:
        batch //= 2
    return batch


@contextlib.contextmanager
def _warnings_as_messages():
    """Show Python warnings (e.g. skipped files) as one ``picmap: warning:`` line each."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        click.echo(f"picmap: warning: {message}", err=True)
        logging.getLogger("picmap").warning("%s", message)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield


def _start_log(out: Path) -> logging.Handler:
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / RUN_LOG, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger = logging.getLogger("picmap")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return handler


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="picmap")
def main() -> None:
    """picmap: a 2-D map of an image collection (t-SimCNE).

    Typical use: `picmap fit FOLDER --out DIR`, then open DIR/explorer.html
    (or `picmap explore DIR`).
    """


@main.command()
@click.argument("source")
@click.option(
    "--out", "out", required=True, type=click.Path(file_okay=False), help="Output folder."
)
@click.option(
    "--epochs",
    default="auto",
    show_default=True,
    help="Epochs of the three stages, e.g. 60,10,30. 'auto': 1000,50,450 on a GPU, "
    "60,10,30 on a CPU.",
)
@click.option(
    "--backbone",
    type=click.Choice(["auto", "resnet18", "small"]),
    default="auto",
    show_default=True,
    help="'auto': resnet18 on a GPU, small on a CPU.",
)
@click.option(
    "--batch-size",
    type=int,
    default=None,
    help="Images per step [default: 512, less for small data].",
)
@click.option(
    "--lr",
    "learning_rate",
    type=float,
    default=None,
    help="Learning rate [default: 0.03 × batch / 256].",
)
@click.option("--device", default="auto", show_default=True, help="cuda, mps, cpu or auto.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--image-size",
    type=int,
    default=None,
    help="Side of the square images [default: the data's own size].",
)
@click.option("--out-dim", type=click.IntRange(1, 3), default=2, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run whose checkpoint is in --out.")
@click.option("--root", default=None, help="Where named datasets are (or are downloaded to).")
@click.option(
    "--split",
    type=click.Choice(["all", "train", "test"]),
    default="all",
    show_default=True,
    help="Which part of a named dataset.",
)
@click.option("--download", is_flag=True, help="Download a named dataset if it is missing.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def fit(source: str, out: str, resume: bool, quiet: bool, **options) -> None:
    """Fit a map of SOURCE (a folder of images, a .npy/.npz file or a dataset name).

    DIR receives embedding.csv/.npy, model.safetensors + config.json, map.png,
    thumbnails.png, explorer.html, metrics.json and run.log. Ctrl-C saves a checkpoint;
    `--resume` continues from it.
    """
    out_dir = Path(out)
    if resume:
        settings = _resumed_settings(out_dir)
    else:
        if (out_dir / CHECKPOINT_FILE).exists():
            raise CliError(
                f"{out_dir} holds an unfinished run: add --resume, or choose a new --out"
            )
        settings = {"source": source, **options}
    handler = _start_log(out_dir)
    try:
        with _warnings_as_messages():
            _fit(out_dir, settings, verbose=not quiet)
    except Interrupted:
        click.echo(
            f"\npicmap: stopped; checkpoint saved. Continue with: "
            f"picmap fit {source} --out {out} --resume",
            err=True,
        )
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("\npicmap: stopped.", err=True)
        sys.exit(130)
    except (ValueError, TypeError, OSError) as err:
        raise CliError(str(err)) from None
    finally:
        logging.getLogger("picmap").removeHandler(handler)
        handler.close()


def _resumed_settings(out_dir: Path) -> dict:
    path = out_dir / RUN_JSON
    if not path.is_file():
        raise CliError(f"--resume: {out_dir} holds no run to resume ({RUN_JSON} is missing)")
    return json.loads(path.read_text(encoding="utf-8"))


def _fit(out_dir: Path, settings: dict, verbose: bool) -> None:
    store = _load_source(
        settings["source"], settings["root"], settings["split"], settings["download"], verbose
    )
    store = to_store(store, image_size=settings["image_size"], verbose=verbose)
    on_gpu = resolve_device(settings["device"]).type == "cuda"
    epochs = _parse_epochs(settings["epochs"]) or (GPU_EPOCHS if on_gpu else CPU_EPOCHS)
    backbone = settings["backbone"]
    if backbone == "auto":
        backbone = "resnet18" if on_gpu else "small"
    batch_size = settings["batch_size"] or _default_batch(len(store))
    write_text_atomic(out_dir / RUN_JSON, json.dumps(settings, indent=2))
    model = TSimCNE(
        backbone,
        out_dim=settings["out_dim"],
        total_epochs=list(epochs),
        batch_size=batch_size,
        learning_rate=settings["learning_rate"] or "auto",
        device=settings["device"],
        seed=settings["seed"],
        verbose=verbose,
        checkpoint_dir=out_dir,
    )
    started = time.perf_counter()
    Y = model.fit_transform(store)
    seconds = time.perf_counter() - started
    model.save(out_dir)
    _write_views(out_dir, Y, store, verbose)
    metrics = {
        "images": len(store),
        "image_size": store.image_size,
        "backbone": backbone,
        "total_epochs": list(epochs),
        "batch_size": batch_size,
        "device": str(model.device_),
        "fit_seconds": round(seconds, 2),
        **outputs.quality_metrics(Y, store),
    }
    outputs.write_metrics(out_dir / outputs.METRICS_JSON, metrics)
    (out_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
    logging.getLogger("picmap").info("finished: %s", json.dumps(metrics))
    if verbose:
        click.echo(f"picmap: map of {len(store)} images written to {out_dir}", err=True)


def _write_views(out_dir: Path, Y: np.ndarray, store: ImageStore, verbose: bool) -> None:
    """The coordinates, the figures and the explorer page."""
    from . import plot
    from .explore import write_explorer

    outputs.save_npy(out_dir / outputs.EMBEDDING_NPY, Y)
    outputs.write_embedding_csv(out_dir / outputs.EMBEDDING_CSV, Y, store)
    if Y.shape[1] != 2:
        return
    plot.scatter_map(Y, store.labels, store.class_names, path=out_dir / outputs.MAP_PNG)
    plot.thumbnail_map(Y, store.images, path=out_dir / outputs.THUMBNAILS_PNG)
    write_explorer(
        out_dir / outputs.EXPLORER_HTML,
        Y,
        labels=store.labels,
        class_names=store.class_names,
        file_names=store.file_names,
        images=store.images,
    )


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("source")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Output file: .csv or .npy.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def transform(run_dir: str, source: str, out: str, quiet: bool) -> None:
    """Place the images of SOURCE on the map fitted in RUN_DIR."""
    out_path = Path(out)
    if out_path.suffix not in (".csv", ".npy"):
        raise CliError(f"--out {out!r} must end in .csv or .npy")
    try:
        model = TSimCNE.load(run_dir)
        with _warnings_as_messages():
            store = _load_source(source, None, "all", False, not quiet)
        Y = model.transform(store)
    except (ValueError, TypeError, OSError) as err:
        raise CliError(str(err)) from None
    if out_path.suffix == ".npy":
        outputs.save_npy(out_path, Y)
    else:
        outputs.write_embedding_csv(out_path, Y, store)
    if not quiet:
        click.echo(f"picmap: placed {len(Y)} images; written to {out_path}", err=True)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def plot(run_dir: str) -> None:
    """Redraw map.png and thumbnails.png of the run in RUN_DIR."""
    out_dir = Path(run_dir)
    Y, store = _run_data(out_dir)
    from . import plot as plotting

    plotting.scatter_map(Y, store.labels, store.class_names, path=out_dir / outputs.MAP_PNG)
    plotting.thumbnail_map(Y, store.images, path=out_dir / outputs.THUMBNAILS_PNG)
    click.echo(f"picmap: figures written to {out_dir}", err=True)


def _run_data(out_dir: Path) -> tuple[np.ndarray, ImageStore]:
    """A finished run's coordinates and images (re-read from its source)."""
    try:
        Y = np.load(out_dir / outputs.EMBEDDING_NPY, allow_pickle=False)
        settings = _resumed_settings(out_dir)
        store = _load_source(
            settings["source"], settings["root"], settings["split"], False, verbose=False
        )
        store = to_store(store, image_size=settings["image_size"], verbose=False)
    except (ValueError, TypeError, OSError) as err:
        raise CliError(f"{out_dir} is not a finished picmap run ({err})") from None
    return Y, store


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--serve", is_flag=True, help="Serve the page on localhost instead of opening it.")
@click.option("--port", type=int, default=8000, show_default=True)
def explore(run_dir: str, serve: bool, port: int) -> None:
    """Open the interactive map (explorer.html) of the run in RUN_DIR."""
    page = Path(run_dir) / outputs.EXPLORER_HTML
    if not page.is_file():
        raise CliError(f"{page} does not exist; run `picmap fit` with --out {run_dir} first")
    if not serve:
        webbrowser.open(page.resolve().as_uri())
        click.echo(f"picmap: opened {page}", err=True)
        return
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(page.parent))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        click.echo(f"picmap: serving http://127.0.0.1:{port}/{page.name} (Ctrl-C stops)", err=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()


@main.command(name="datasets")
def list_datasets() -> None:
    """List the named datasets and whether they are available offline."""
    for info in datasets.available():
        state = "offline" if info["offline"] else "download"
        click.echo(f"{info['name']:14s} {state:9s} {info['description']}")
        click.echo(f"{'':24s} {info['location']}")


if __name__ == "__main__":
    main()
