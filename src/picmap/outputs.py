"""What a fitted run leaves in its output folder, written atomically."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ._io import atomic_path, write_text_atomic
from .data.store import ImageStore
from .discover import Discoveries
from .evaluate import knn_accuracy, protocol_problem

EMBEDDING_CSV = "embedding.csv"
EMBEDDING_NPY = "embedding.npy"
METRICS_JSON = "metrics.json"
MAP_PNG = "map.png"
THUMBNAILS_PNG = "thumbnails.png"
EXPLORER_HTML = "explorer.html"
OUTLIERS_CSV = "outliers.csv"
LABEL_ERRORS_CSV = "label_errors.csv"
DUPLICATES_CSV = "duplicates.csv"
BASELINES_PNG = "baselines.png"


def label_names(labels: np.ndarray | None, class_names: list[str] | None) -> list[str]:
    """Each point's label as text: its class name when known, else the number."""
    if labels is None:
        return []
    if class_names is None:
        return [str(int(v)) for v in labels]
    return [class_names[int(v)] for v in labels]


def write_embedding_csv(
    path: Path, Y: np.ndarray, store: ImageStore, index: np.ndarray | None = None
) -> None:
    """``index, file, label, x, y[, z]`` with proper CSV quoting of names."""
    coords = (
        ["x", "y", "z"][: Y.shape[1]] if Y.shape[1] <= 3 else [f"d{i}" for i in range(Y.shape[1])]
    )
    describe = _describer(store)
    rows = ([*describe(i), *(f"{v:.6g}" for v in row)] for i, row in enumerate(Y))
    write_csv(path, ["index", "file", "label", *coords], rows)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """A CSV file with a header row, names quoted where needed, written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def _describer(store: ImageStore):
    """A function giving ``[index, file, label]`` of a point, as CSV cells."""
    labels = label_names(store.labels, store.class_names)

    def describe(i: int) -> list:
        i = int(i)
        return [i, store.file_names[i] if store.file_names else "", labels[i] if labels else ""]

    return describe


def write_discoveries(out_dir: Path, found: Discoveries, store: ImageStore) -> list[Path]:
    """``outliers.csv``, ``duplicates.csv`` and (with labels) ``label_errors.csv``, ranked."""
    describe = _describer(store)
    point = ["index", "file", "label"]
    written = [
        _write_ranked(
            out_dir / OUTLIERS_CSV,
            [*point, "score"],
            (
                [*describe(i), f"{score:.4f}"]
                for i, score in zip(found.outliers, found.outlier_scores, strict=True)
            ),
        ),
        _write_ranked(
            out_dir / DUPLICATES_CSV,
            [*(f"{c}_a" for c in point), *(f"{c}_b" for c in point), "similarity"],
            (
                [*describe(a), *describe(b), f"{similarity:.4f}"]
                for (a, b), similarity in zip(
                    found.duplicates, found.duplicate_similarities, strict=True
                )
            ),
        ),
    ]
    if store.labels is not None:
        neighbour_labels = label_names(found.neighbour_labels, store.class_names)
        rows = zip(found.label_errors, neighbour_labels, found.label_error_scores, strict=True)
        written.append(
            _write_ranked(
                out_dir / LABEL_ERRORS_CSV,
                [*point, "neighbour_label", "score"],
                ([*describe(i), label, f"{score:.4f}"] for i, label, score in rows),
            )
        )
    return written


def read_lists(out_dir: Path) -> dict[str, list[int]]:
    """The discovery lists that `picmap evaluate` wrote (point indices), for the explorer;
    those not written yet are left out."""
    columns = {
        "outliers": (OUTLIERS_CSV, ["index"]),
        "likely label errors": (LABEL_ERRORS_CSV, ["index"]),
        "near-duplicates": (DUPLICATES_CSV, ["index_a", "index_b"]),
    }
    lists = {}
    for name, (file_name, keys) in columns.items():
        path = out_dir / file_name
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as handle:
                found = {int(row[key]) for row in csv.DictReader(handle) for key in keys}
            lists[name] = sorted(found)
    return lists


def _write_ranked(path: Path, header: list[str], rows: Iterable[list]) -> Path:
    """A CSV whose rows, already ranked, are numbered from 1 in a first ``rank`` column."""
    write_csv(path, ["rank", *header], ([rank, *row] for rank, row in enumerate(rows, 1)))
    return path


def read_embedding_csv(path: Path) -> tuple[list[str], list[str]]:
    """File names and label texts back from ``embedding.csv``."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [r["file"] for r in rows], [r["label"] for r in rows]


def save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary file."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def quality_metrics(Y: np.ndarray, store: ImageStore) -> dict:
    """kNN accuracy of the map (k=15, 5-fold stratified) when the data has labels."""
    if store.labels is None:
        return {}
    problem = protocol_problem(store.labels)
    if problem:
        return {"knn_accuracy": None, "note": problem}
    return {"knn_accuracy": knn_accuracy(Y, store.labels, k=15)}


def write_metrics(path: Path, metrics: dict) -> None:
    """Write ``metrics.json``."""
    write_text_atomic(path, json.dumps(metrics, indent=2))


def read_metrics(path: Path) -> dict:
    """``metrics.json`` as a dict; {} when there is none, a ValueError when it is damaged."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it to start afresh") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{path} does not hold a JSON object; delete it to start afresh")
    return metrics


def merge_metrics(path: Path, metrics: dict) -> dict:
    """Update ``metrics.json`` with ``metrics`` (keeping its other entries); return the result."""
    merged = {**read_metrics(path), **metrics}
    write_metrics(path, merged)
    return merged
