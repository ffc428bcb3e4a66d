"""What a map reveals: outliers, likely label errors and near-duplicate images.

All three work on what a fitted model gives — the 2-D map and the backbone's features — and
use k-nearest-neighbour queries (:mod:`picmap.neighbours`: exact up to 50,000 images,
approximate beyond), so time grows as N log N to N^1.5 and memory with ``N × k``, never ``N²``.

- Outliers: images far from every neighbour. Each image's mean distance to its ``k`` nearest
  neighbours is ranked in the map and in feature space; the score is the mean of the two
  percentile ranks (1 = the most isolated image in both).
- Likely label errors: images whose neighbours in feature space mostly carry another label; the
  score is the fraction of the ``k`` neighbours that disagree.
- Near-duplicates: pairs whose mean-centred features have a cosine similarity of at least a
  threshold. Centring matters: backbone features come out of a ReLU, so uncentred they all point
  into the same orthant and every pair looks similar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from .evaluate import K, neighbour_count
from .neighbours import knn_graph

OUTLIER_FRACTION = 0.01
LABEL_ERROR_MIN_SCORE = 0.5
DUPLICATE_THRESHOLD = 0.99
DUPLICATE_CANDIDATES = 5  # nearest neighbours checked per image for near-duplicates


@dataclass(frozen=True)
class Discoveries:
    """Ranked lists, the most suspicious first. Indices refer to the rows of the map."""

    outliers: np.ndarray  # point indices
    outlier_scores: np.ndarray  # in [0, 1]
    label_errors: np.ndarray  # point indices (empty without labels)
    label_error_scores: np.ndarray  # fraction of neighbours with another label
    neighbour_labels: np.ndarray  # the most common label among each one's neighbours
    duplicates: np.ndarray  # M×2 point index pairs, smaller index first
    duplicate_similarities: np.ndarray  # cosine similarity of the centred features

    def lists(self) -> dict[str, list[int]]:
        """Point indices per list, for the explorer's "Show" filter."""
        return {
            "outliers": self.outliers.tolist(),
            "likely label errors": self.label_errors.tolist(),
            "near-duplicates": np.unique(self.duplicates).tolist(),
        }


def discover(
    Y: np.ndarray,
    features: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    k: int = K,
    outlier_fraction: float = OUTLIER_FRACTION,
    duplicate_threshold: float = DUPLICATE_THRESHOLD,
) -> Discoveries:
    """Find outliers, likely label errors (when there are ``labels``) and near-duplicates.

    ``outlier_fraction`` of the images (at least one) are listed as outliers; an image is a
    likely label error when more than half its neighbours carry another label.
    """
    features = _check_points(features, "features")
    graph = knn_graph(features, neighbour_count(k, len(features)))  # found once, used twice
    outliers, isolation = find_outliers(
        Y, features, k=k, fraction=outlier_fraction, feature_graph=graph
    )
    if labels is None:
        empty = np.zeros(0, np.int64)
        errors, error_scores, neighbour_labels = empty, np.zeros(0), empty
    else:
        errors, error_scores, neighbour_labels = find_label_errors(
            features, labels, k=k, feature_graph=graph
        )
    pairs, similarities = find_duplicates(features, threshold=duplicate_threshold)
    return Discoveries(
        outliers, isolation, errors, error_scores, neighbour_labels, pairs, similarities
    )


Graph = tuple[np.ndarray, np.ndarray]  # each point's k nearest: distances and indices, N×k


def outlier_scores(
    Y: np.ndarray, features: np.ndarray, k: int = K, *, feature_graph: Graph | None = None
) -> np.ndarray:
    """Per image, in [0, 1]: how isolated it is in the map and in feature space together.
    ``feature_graph``: the features' ``k``-neighbour graph, when already found."""
    Y, features = _check_points(Y, "Y"), _check_points(features, "features")
    if len(Y) != len(features):
        raise ValueError(
            f"Y has {len(Y)} points but features has {len(features)}; pass both for the same images"
        )
    k = neighbour_count(k, len(Y))
    graphs = knn_graph(Y, k), feature_graph or knn_graph(features, k)
    ranks = [rankdata(distances.mean(axis=1)) for distances, _ in graphs]
    return (np.mean(ranks, axis=0) - 1) / max(len(Y) - 1, 1)


def find_outliers(
    Y: np.ndarray,
    features: np.ndarray,
    *,
    k: int = K,
    fraction: float = OUTLIER_FRACTION,
    feature_graph: Graph | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``fraction`` most isolated images (at least one): indices and scores, highest first."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction!r} must be in (0, 1], e.g. 0.01 for 1 % of images")
    scores = outlier_scores(Y, features, k, feature_graph=feature_graph)
    top = _ranked(scores)[: math.ceil(fraction * len(scores))]
    return top, scores[top]


def find_label_errors(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    k: int = K,
    min_score: float = LABEL_ERROR_MIN_SCORE,
    feature_graph: Graph | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images whose feature-space neighbours mostly carry another label.

    Returns their indices, scores (the fraction of the ``k`` neighbours with another label;
    only those above ``min_score``), highest first, and the most common neighbour label of each.
    ``feature_graph``: the features' ``k``-neighbour graph, when already found.
    """
    features = _check_points(features, "features")
    labels = np.asarray(labels)
    if labels.shape != (len(features),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be {len(features)} integers, one per image; got {labels.dtype} of "
            f"shape {labels.shape}"
        )
    k = neighbour_count(k, len(features))
    near = labels[(feature_graph or knn_graph(features, k))[1]]
    scores = np.mean(near != labels[:, None], axis=1)
    values = np.unique(labels)
    votes = np.stack([np.count_nonzero(near == v, axis=1) for v in values], axis=1)
    found = _ranked(scores)
    found = found[scores[found] > min_score]
    return found, scores[found], values[np.argmax(votes[found], axis=1)]


def find_duplicates(
    features: np.ndarray,
    *,
    threshold: float = DUPLICATE_THRESHOLD,
    candidates: int = DUPLICATE_CANDIDATES,
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of images with near-identical features: M×2 indices and their similarities.

    The similarity is the cosine similarity of the mean-centred features; each image's
    ``candidates`` nearest neighbours are checked, so a group of more identical copies than
    that is reported through overlapping pairs rather than every pair.
    """
    if not -1 <= threshold <= 1:
        raise ValueError(f"threshold={threshold!r} must be a cosine similarity in [-1, 1]")
    features = _check_points(features, "features")
    centred = features - features.mean(axis=0)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    unit = centred / np.where(norms > 0, norms, 1)
    k = neighbour_count(candidates, len(unit))
    # For unit vectors ‖a − b‖² = 2 − 2·cos(a, b): nearest in distance = most similar.
    distance, index = knn_graph(unit, k)
    similarity = 1 - distance**2 / 2
    rows, cols = np.nonzero(similarity >= threshold - 1e-6)
    pairs = np.sort(np.stack([rows, index[rows, cols]], axis=1), axis=1)
    pairs, first = np.unique(pairs, axis=0, return_index=True)
    values = np.minimum(similarity[rows, cols][first], 1.0)
    order = _ranked(values)
    return pairs[order].reshape(-1, 2), values[order]


def _ranked(scores: np.ndarray) -> np.ndarray:
    """Indices from the highest score to the lowest; ties keep index order."""
    return np.argsort(-scores, kind="stable")


def _check_points(X: np.ndarray, name: str) -> np.ndarray:
    """``X`` as a finite float32 N×D array, or a ValueError naming ``name``."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or len(X) < 2:
        raise ValueError(f"{name} must be an N×D array with N ≥ 2, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or infinite values; drop those points first")
    return X
