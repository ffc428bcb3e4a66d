"""The ``picmap`` command: from a folder (or a named dataset) to a map you can explore."""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import sys
import threading
import time
import warnings
import webbrowser
from pathlib import Path

import click
import numpy as np

from . import distributed, outputs
from ._folder_lock import FolderBusyError, exclusive_folder
from ._io import displayable, remove_stale_temporary_files, write_text_atomic
from .baselines import check_installed, run_baselines
from .budget import parse_duration
from .data import datasets
from .data.packed import is_packed, open_packed, pack
from .data.sources import to_store
from .data.store import ImageStore
from .discover import DUPLICATE_THRESHOLD, Discoveries, discover
from .estimator import BACKBONE_MODES, TSimCNE
from .evaluate import Embedding, K, Report, Score, quality_report
from .model import BACKBONES
from .pretrained import check_name, library_of
from .recipes import AUTO, RECIPES
from .train import CHECKPOINT_FILE, DivergedError, Interrupted

RUN_JSON = "run.json"
RUN_LOG = "run.log"


class BackboneName(click.ParamType):
    """A named backbone, "auto", or LIBRARY:NAME for a pretrained network."""

    name = "backbone"

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            self.fail(f"{value!r} is not a backbone name", param, ctx)
        if value in (AUTO, *BACKBONES):
            return value
        if library_of(value) is None:
            self.fail(
                f"{value!r} is not one of {', '.join((AUTO, *BACKBONES))}, nor LIBRARY:NAME "
                "(torchvision:resnet18, timm:NAME, open_clip:ARCH/TAG, picmap:DIR)",
                param,
                ctx,
            )
        try:
            check_name(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)
        return value


class CliError(click.ClickException):
    """An error shown as one line, without a traceback."""

    def show(self, file=None) -> None:
        click.echo(f"picmap: error: {displayable(self.message)}", err=True)


def _error_text(err: Exception) -> str:
    """An exception as one line: OSErrors without their ``[Errno N]`` prefix."""
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    return str(err)


def _load_source(source: str, root: str | None, split: str, download: bool, verbose: bool):
    """Turn SOURCE (a path or a dataset name) into an ImageStore."""
    path = Path(source)
    if is_packed(path):
        return open_packed(path)
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


def _parse_time(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as err:
        raise CliError(f"--time {err}") from None


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


@contextlib.contextmanager
def _warnings_as_messages():
    """Show Python warnings (e.g. skipped files) as one ``picmap: warning:`` line each."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = displayable(str(message))
        click.echo(f"picmap: warning: {text}", err=True)
        logging.getLogger("picmap").warning("%s", text)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield


def _unwritable(out: Path, err: OSError) -> CliError:
    return CliError(f"cannot write to --out {out} ({_error_text(err)}); choose a writable folder")


def _hold_folder(stack: contextlib.ExitStack, out: Path, command: str) -> None:
    """Hold ``out`` until ``stack`` closes; one error line if another process writes there."""
    try:
        stack.enter_context(exclusive_folder(out, command))
    except FolderBusyError as err:
        raise CliError(str(err)) from None
    except OSError as err:
        raise _unwritable(out, err) from None


def _start_log(out: Path) -> logging.Handler:
    """Create the output folder, clear what killed writers left there, and log to run.log.

    Call it only while holding the folder (``_hold_folder``): the temporary files it removes
    would otherwise be those of a writer that is still alive.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporary_files(out)
        handler = logging.FileHandler(out / RUN_LOG, encoding="utf-8", errors="replace")
    except OSError as err:
        raise _unwritable(out, err) from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger = logging.getLogger("picmap")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return handler


def _stop_log(handler: logging.Handler) -> None:
    logging.getLogger("picmap").removeHandler(handler)
    handler.close()


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
    help="Epochs of the three stages, e.g. 60,10,30. 'auto': from --time if given; else "
    "1000,50,450 on a GPU and the default time budget on a CPU.",
)
@click.option(
    "--time",
    "time_budget",
    default=None,
    metavar="DURATION",
    help="Train for this long, e.g. 10m, 90s or 1h (the step time is measured, and the "
    "stages get the epochs that fill it). [default on a CPU: 10m for 10,000 images, "
    "growing as N^1.5, 20s to 30m]",
)
@click.option(
    "--backbone",
    type=BackboneName(),
    default="auto",
    show_default=True,
    help="'auto': resnet18 on a GPU; on a CPU mlp with the neighbours recipe (images up to "
    "64x64 grey), tiny for colour images, else small. tiny: half the small CNN's width, 2.5x "
    "faster per step. mlp: two layers on the pixels, for small aligned images with --recipe "
    "neighbours. Or a pretrained network: torchvision:resnet50, timm:NAME, "
    "open_clip:ARCH/TAG, or picmap:DIR (the backbone of an earlier map).",
)
@click.option(
    "--weights",
    type=click.Path(dir_okay=False),
    default=None,
    help="A local weights file for a torchvision, timm or open_clip --backbone (.safetensors, "
    "or .pth read with weights_only=True), for machines without internet.",
)
@click.option(
    "--backbone-mode",
    type=click.Choice(BACKBONE_MODES),
    default=AUTO,
    show_default=True,
    help="frozen: the pretrained backbone's features once, then only the head trains (on "
    "neighbours in that feature space; minutes on a CPU). finetune: the whole network, the "
    "pretrained part at a tenth of the learning rate. 'auto': frozen for torchvision, timm and "
    "open_clip networks, finetune for picmap:DIR.",
)
@click.option(
    "--feature-cache",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for the frozen backbone's features, to share them between maps [default: --out].",
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
    help="Learning rate [default: the recipe's, proportional to the batch size].",
)
@click.option(
    "--recipe",
    type=click.Choice([AUTO, *sorted(RECIPES)]),
    default=AUTO,
    show_default=True,
    help="'picmap': tuned for short runs; 'paper': the published t-SimCNE recipe; "
    "'colour': augmentations that take the colour away, for colour images; "
    "'neighbours': positives from pixel-space neighbours, for aligned images such as digits. "
    "'auto': on a CPU neighbours for grey images, colour for colour ones; paper on a GPU.",
)
@click.option("--device", default="auto", show_default=True, help="cuda, mps, cpu or auto.")
@click.option(
    "--sync-batchnorm",
    is_flag=True,
    help="Under torchrun on GPUs: BatchNorm statistics over the global batch.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--image-size",
    type=int,
    default=None,
    help="Side of the square images [default: the data's own size].",
)
@click.option("--out-dim", type=click.IntRange(1, 3), default=2, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run whose checkpoint is in --out.")
@click.option(
    "--checkpoint-every",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="How often training writes a checkpoint (a crash loses at most this much).",
)
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
    thumbnails.png, explorer.html, metrics.json and run.log. A checkpoint is written every
    --checkpoint-every seconds and on Ctrl-C; `--resume` continues from it.

    Under `torchrun --nproc_per_node=N` the fit runs data-parallel on N devices, with
    --batch-size as the global batch; only rank 0 writes to DIR.
    """
    out_dir = Path(out)
    writer = distributed.rank() == 0
    with contextlib.ExitStack() as stack:
        if writer:  # only rank 0 writes to the folder
            _hold_folder(stack, out_dir, "picmap fit")
        _fit_command(source, out, resume, quiet, options, writer)


def _fit_command(
    source: str, out: str, resume: bool, quiet: bool, options: dict, writer: bool
) -> None:
    """`picmap fit`, while this process holds the output folder (or is not rank 0)."""
    out_dir = Path(out)
    if resume:
        settings = _resumed_settings(out_dir)
        finished = (out_dir / outputs.METRICS_JSON).exists()
        if finished and not (out_dir / CHECKPOINT_FILE).exists():
            if writer:
                click.echo(f"picmap: the run in {out_dir} is already finished; nothing to resume")
            return
    else:
        if (out_dir / CHECKPOINT_FILE).exists():
            raise CliError(
                f"{out_dir} holds an unfinished run: add --resume, or choose a new --out"
            )
        settings = {"source": source, **options}
    handler = _start_log(out_dir) if writer else None
    try:
        with _warnings_as_messages():
            _fit(out_dir, settings, verbose=not quiet and writer, writer=writer)
    except Interrupted:
        again = shlex.join(["picmap", "fit", source, "--out", out, "--resume"])
        if distributed.launched():
            again = f"torchrun [the same options] -m {again}"
        if writer:
            click.echo(
                f"\npicmap: stopped; checkpoint saved. Continue with: {displayable(again)}",
                err=True,
            )
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("\npicmap: stopped.", err=True)
        sys.exit(130)
    except DivergedError as err:
        kept = (out_dir / CHECKPOINT_FILE).is_file()
        note = f" The last good checkpoint is kept in {out_dir / CHECKPOINT_FILE}." if kept else ""
        raise CliError(f"{err}{note}") from None
    except (ValueError, TypeError, OSError) as err:
        raise CliError(_error_text(err)) from None
    finally:
        if handler:
            _stop_log(handler)


def _resumed_settings(out_dir: Path) -> dict:
    """The settings saved in run.json, checked as if given on the command line again."""
    path = out_dir / RUN_JSON
    if not path.is_file():
        raise CliError(f"--resume: {out_dir} holds no run to resume ({RUN_JSON} is missing)")
    damaged = f"{path} is damaged; start afresh without --resume (or with a new --out)"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CliError(f"{damaged} ({_error_text(err)})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("source"), str):
        raise CliError(damaged)
    # The defaults as `picmap fit` itself parses them, for keys run.json lacks (click's own
    # `Parameter.default` is no use here: since click 8.3 it can be a sentinel, not a value).
    defaults = fit.make_context("fit", ["--out", str(out_dir), "--", saved["source"]]).params
    settings = {"source": saved["source"]}
    for param in fit.params:  # also when `plot` or `evaluate` re-read a finished run
        if param.name in ("source", "out", "resume", "quiet"):
            continue
        if param.name not in saved:
            settings[param.name] = defaults[param.name]
            continue
        value = saved[param.name]
        try:
            settings[param.name] = param.type_cast_value(click.get_current_context(), value)
        except click.BadParameter as err:
            raise CliError(f"{damaged} ({param.name}={value!r}: {err.message})") from None
    return settings


def _fit(out_dir: Path, settings: dict, verbose: bool, writer: bool) -> None:
    """Fit and write every output; a process other than rank 0 (``writer``) only trains."""
    epochs = _parse_epochs(settings["epochs"])
    budget = _parse_time(settings["time_budget"])
    if epochs and budget:
        raise CliError("--epochs and --time both set the length of training; give one of them")
    store = _load_source(
        settings["source"], settings["root"], settings["split"], settings["download"], verbose
    )
    store = to_store(store, image_size=settings["image_size"], verbose=verbose)
    if writer:
        write_text_atomic(out_dir / RUN_JSON, json.dumps(settings, indent=2))
    model = TSimCNE(
        settings["backbone"],
        weights=settings["weights"],
        backbone_mode=settings["backbone_mode"],
        feature_cache=settings["feature_cache"],
        out_dim=settings["out_dim"],
        total_epochs=list(epochs) if epochs else "auto",
        time_budget=budget,
        batch_size=settings["batch_size"] or "auto",
        learning_rate=settings["learning_rate"] or "auto",
        recipe=settings["recipe"],
        device=settings["device"],
        sync_batchnorm=settings["sync_batchnorm"],
        seed=settings["seed"],
        verbose=verbose,
        checkpoint_dir=out_dir,
        checkpoint_interval=settings["checkpoint_every"],
    )
    started = time.perf_counter()
    Y = model.fit_transform(store)
    seconds = time.perf_counter() - started
    if not writer:
        return
    model.save(out_dir)
    _write_views(out_dir, Y, store, verbose)
    metrics = {
        "images": len(store),
        "image_size": store.image_size,
        "backbone": model.backbone_,
        "backbone_mode": model.backbone_mode_,
        "recipe": model.recipe_,
        "total_epochs": list(model.total_epochs_),
        "time_budget": budget,
        "batch_size": model.batch_size_,
        "device": str(model.device_),
        "processes": distributed.launched_processes(),
        "fit_seconds": round(seconds, 2),
        "loss_per_epoch": model.loss_history_,
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

    outputs.save_npy(out_dir / outputs.EMBEDDING_NPY, Y)
    outputs.write_embedding_csv(out_dir / outputs.EMBEDDING_CSV, Y, store)
    if Y.shape[1] != 2:
        return
    plot.scatter_map(Y, store.labels, store.class_names, path=out_dir / outputs.MAP_PNG)
    plot.thumbnail_map(Y, store.images, path=out_dir / outputs.THUMBNAILS_PNG)
    from .explore import SINGLE_FILE_UP_TO

    if len(Y) <= SINGLE_FILE_UP_TO:
        _write_explorer(out_dir, Y, store)
        return
    (out_dir / outputs.EXPLORER_HTML).unlink(missing_ok=True)  # a smaller map's, now stale
    if verbose:
        click.echo(
            f"picmap: {len(Y)} images are more than one explorer file holds "
            f"({SINGLE_FILE_UP_TO}); `picmap explore {out_dir}` serves the map",
            err=True,
        )


def _write_explorer(
    out_dir: Path, Y: np.ndarray, store: ImageStore, lists: dict[str, list[int]] | None = None
) -> None:
    from .explore import write_explorer

    write_explorer(
        out_dir / outputs.EXPLORER_HTML,
        Y,
        labels=store.labels,
        class_names=store.class_names,
        file_names=store.file_names,
        images=store.images,
        lists=lists,
    )


@main.command(name="pack")
@click.argument("source")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option(
    "--image-size",
    type=int,
    default=None,
    help="Side of the square images [default: the data's own size].",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def pack_images(source: str, out: str, image_size: int | None, quiet: bool) -> None:
    """Decode SOURCE (a folder of images, a .npy/.npz file or a dataset name) once into OUT.npy.

    OUT.npy holds the images as one uint8 array and OUT.json their labels and file names.
    `picmap fit OUT.npy` memory-maps it: a folder is decoded a chunk at a time, the images
    need not fit in memory, and processes under torchrun share one copy via the page cache.
    """
    if not out.endswith(".npy"):
        raise CliError(f"OUT {out!r} must end in .npy")
    try:
        with _warnings_as_messages():
            path = Path(source)
            data = path if path.is_dir() else _load_source(source, None, "all", False, not quiet)
            pack(data, out, image_size=image_size, verbose=not quiet)
        shape = np.load(out, mmap_mode="r", allow_pickle=False).shape
    except (ValueError, TypeError, OSError) as err:
        raise CliError(_error_text(err)) from None
    if not quiet:
        size = "×".join(str(side) for side in shape[1:])
        click.echo(f"picmap: packed {shape[0]} images ({size}) into {out}", err=True)


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
    from . import plot as plotting

    with contextlib.ExitStack() as stack:
        _hold_folder(stack, out_dir, "picmap plot")
        Y, store = _run_data(out_dir)
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
    if len(Y) != len(store):
        raise CliError(
            f"{out_dir / outputs.EMBEDDING_NPY} has {len(Y)} points but its source "
            f"{settings['source']!r} now holds {len(store)} images; fit the map again"
        )
    return Y, store


@main.command(name="evaluate")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--baselines",
    "with_baselines",
    is_flag=True,
    help="Also score pixel PCA, t-SNE and UMAP and t-SNE of the backbone's features, and draw "
    "baselines.png (needs picmap[baselines]).",
)
@click.option(
    "--k",
    type=click.IntRange(min=1),
    default=K,
    show_default=True,
    help="Neighbours for kNN accuracy, neighbourhood preservation and the discovery lists.",
)
@click.option(
    "--duplicate-threshold",
    type=click.FloatRange(-1, 1),
    default=DUPLICATE_THRESHOLD,
    show_default=True,
    help="Cosine similarity (of the centred backbone features) from which two images count "
    "as near-duplicates.",
)
@click.option("--device", default="auto", show_default=True, help="cuda, mps, cpu or auto.")
def evaluate_run(
    run_dir: str, with_baselines: bool, k: int, duplicate_threshold: float, device: str
) -> None:
    """Score the map in RUN_DIR and list its outliers, label errors and near-duplicates.

    Prints kNN (k=15) and linear accuracy of the map and of the backbone's features, and how
    much of each image's feature-space neighbourhood the map keeps; merges them into
    metrics.json. Writes outliers.csv, label_errors.csv and duplicates.csv, and adds them to
    explorer.html as a "Show" filter.
    """
    out_dir = Path(run_dir)
    if with_baselines:
        try:
            check_installed()
        except ImportError as err:
            raise CliError(str(err)) from None
    with contextlib.ExitStack() as stack:
        _hold_folder(stack, out_dir, "picmap evaluate")
        _evaluate_in(out_dir, with_baselines, k, duplicate_threshold, device)


def _evaluate_in(
    out_dir: Path, with_baselines: bool, k: int, duplicate_threshold: float, device: str
) -> None:
    """`picmap evaluate`, while this process holds the run folder."""
    Y, store = _run_data(out_dir)
    settings = _resumed_settings(out_dir)
    handler = _start_log(out_dir)
    try:
        with _warnings_as_messages():
            features = TSimCNE.load(out_dir, device=device).features(store)
            fitted = outputs.read_metrics(out_dir / outputs.METRICS_JSON)
            the_map = Embedding("picmap map", Y, fitted.get("fit_seconds"))
            embeddings = [the_map, Embedding("backbone features", features)]
            if with_baselines:
                click.echo("picmap: computing baselines (pixel PCA, t-SNE, UMAP)…", err=True)
                embeddings += run_baselines(store.images, features, seed=settings["seed"])
            report = quality_report(
                *embeddings[:2],
                store.labels,
                baselines=embeddings[2:],
                k=k,
                test_mask=_held_out_mask(settings, len(store)),
                seed=settings["seed"],
            )
            found = discover(
                Y, features, store.labels, k=k, duplicate_threshold=duplicate_threshold
            )
            _write_evaluation(out_dir, store, embeddings, report, found)
        logging.getLogger("picmap").info("evaluated: %s", json.dumps(report.metrics()))
    except (ValueError, TypeError, OSError) as err:
        raise CliError(_error_text(err)) from None
    finally:
        _stop_log(handler)
    click.echo(report.text())
    click.echo(_discovery_summary(found, store.labels is not None))


def _held_out_mask(settings: dict, n: int) -> np.ndarray | None:
    """True on the test images of a named dataset fitted with --split all (train, then test);
    None (cross-validation) for any other data."""
    source = settings["source"]
    if settings["split"] != "all" or Path(source).exists() or not datasets.is_known(source):
        return None
    if not datasets.has_test_split(source):
        return None
    _, test_labels = datasets.load(source, root=settings["root"], split="test")
    return np.arange(n) >= n - len(test_labels)


def _write_evaluation(
    out_dir: Path,
    store: ImageStore,
    embeddings: list[Embedding],
    report: Report,
    found: Discoveries,
) -> None:
    """metrics.json, the discovery lists, baselines.png and the explorer page with the lists."""
    outputs.write_discoveries(out_dir, found, store)
    counts = {
        "outliers": len(found.outliers),
        "likely_label_errors": len(found.label_errors),
        "near_duplicate_pairs": len(found.duplicates),
    }
    outputs.merge_metrics(
        out_dir / outputs.METRICS_JSON, {**report.metrics(), "discoveries": counts}
    )
    Y = embeddings[0].coords
    if Y.shape[1] != 2:
        return
    if len(embeddings) > 2:
        from .plot import compare_maps

        panels = [
            (_panel_title(score), embedding.coords)
            for embedding, score in zip(embeddings, report.scores, strict=True)
            if score.dims == 2
        ]
        compare_maps(panels, store.labels, store.class_names, path=out_dir / outputs.BASELINES_PNG)
    if (out_dir / outputs.EXPLORER_HTML).is_file():
        _write_explorer(out_dir, Y, store, found.lists())


def _panel_title(score: Score) -> str:
    """A map's name, and its accuracies when there are any."""
    if score.knn_accuracy is None:
        return score.method
    return (
        f"{score.method}\nkNN {100 * score.knn_accuracy:.1f}% · "
        f"linear {100 * score.linear_accuracy:.1f}%"
    )


def _discovery_summary(found: Discoveries, labelled: bool) -> str:
    """One line: how many of each were found, and where they are."""
    parts = [f"{len(found.outliers)} outliers ({outputs.OUTLIERS_CSV})"]
    if labelled:
        parts.append(f"{len(found.label_errors)} likely label errors ({outputs.LABEL_ERRORS_CSV})")
    parts.append(f"{len(found.duplicates)} near-duplicate pairs ({outputs.DUPLICATES_CSV})")
    return "Found " + ", ".join(parts)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--serve", is_flag=True, help="Serve the map on localhost without opening it.")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option(
    "--tiles",
    is_flag=True,
    help="Serve the map as tiles drawn on demand, with images read when hovered (the view "
    "for maps larger than one explorer file holds; chosen then without this flag).",
)
def explore(run_dir: str, serve: bool, port: int, tiles: bool) -> None:
    """Open the interactive map of the run in RUN_DIR: its explorer.html, or for a large map
    a local server that draws it as tiles."""
    out_dir = Path(run_dir)
    page = out_dir / outputs.EXPLORER_HTML
    if tiles or not page.is_file():
        _serve_tiles(out_dir, port, open_it=not serve)
        return
    if not serve:
        webbrowser.open(page.resolve().as_uri())
        click.echo(f"picmap: opened {page}", err=True)
        return
    import http.server

    from .explore.serve import page_only_handler

    with http.server.ThreadingHTTPServer(("127.0.0.1", port), page_only_handler(page)) as server:
        click.echo(f"picmap: serving http://127.0.0.1:{port}/{page.name} (Ctrl-C stops)", err=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()


def _serve_tiles(out_dir: Path, port: int, open_it: bool) -> None:
    """Serve the run's map as tiles until Ctrl-C; open it in the browser when asked."""
    from .explore.tiles import TileMap

    if not (out_dir / outputs.EMBEDDING_NPY).is_file():
        raise CliError(f"{out_dir} holds no map; run `picmap fit` with --out {out_dir} first")
    Y, store = _run_data(out_dir)
    if Y.shape[1] != 2:
        raise CliError(f"{out_dir} holds a {Y.shape[1]}-D embedding; only 2-D maps are explored")
    with contextlib.ExitStack() as stack:
        try:
            view = TileMap(
                Y,
                labels=store.labels,
                class_names=store.class_names,
                file_names=store.file_names,
                images=store.images,
                lists=outputs.read_lists(out_dir),
                title=out_dir.resolve().name,
            )
            url = stack.enter_context(view.serve(port))
        except (ValueError, TypeError, OSError) as err:
            raise CliError(_error_text(err)) from None
        click.echo(f"picmap: serving {len(Y)} images at {url} (Ctrl-C stops)", err=True)
        if open_it:
            webbrowser.open(url)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


@main.command(name="datasets")
def list_datasets() -> None:
    """List the named datasets and whether they are available offline."""
    for info in datasets.available():
        state = "offline" if info["offline"] else "download"
        click.echo(f"{info['name']:14s} {state:9s} {info['description']}")
        click.echo(f"{'':24s} {info['location']}")


if __name__ == "__main__":
    main()
