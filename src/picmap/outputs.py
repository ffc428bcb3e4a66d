"""What a fitted run leaves in its output folder, written atomically."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from ._io import atomic_path, write_text_atomic
from .data.store import ImageStore
from .evaluate import knn_accuracy

EMBEDDING_CSV = "embedding.csv"
EMBEDDING_NPY = "embedding.npy"
METRICS_JSON = "metrics.json"
MAP_PNG = "map.png"
THUMBNAILS_PNG = "thumbnails.png"
EXPLORER_HTML = "explorer.html"


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
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    coords = (
        ["x", "y", "z"][: Y.shape[1]] if Y.shape[1] <= 3 else [f"d{i}" for i in range(Y.shape[1])]
    )
    writer.writerow(["index", "file", "label", *coords])
    labels = label_names(store.labels, store.class_names)
    for i, row in enumerate(Y):
        file = store.file_names[i] if store.file_names else ""
        writer.writerow([i, file, labels[i] if labels else "", *(f"{v:.6g}" for v in row)])
    write_text_atomic(path, buffer.getvalue())


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
    counts = np.bincount(store.labels)
    if len(counts[counts > 0]) < 2 or counts[counts > 0].min() < 5:
        return {"knn_accuracy": None, "note": "too few images per class for 5-fold kNN accuracy"}
    return {"knn_accuracy": knn_accuracy(Y, store.labels, k=15)}


def write_metrics(path: Path, metrics: dict) -> None:
    """Write ``metrics.json``."""
    write_text_atomic(path, json.dumps(metrics, indent=2))
