"""How good is a map: kNN and linear accuracy under the t-SimCNE paper's protocol, and how
much of the backbone's neighbourhood structure the 2-D map keeps.

The protocol: classifiers are fitted on training points and scored on held-out points — a given
train/test split, or else a stratified 5-fold cross-validation. The same scores are computed for
the backbone's high-dimensional features and for baselines (:mod:`picmap.baselines`), so a
report shows what the map keeps and what it loses.

Large collections: from ``CV_UP_TO`` images on, one stratified split holds out ``HELD_OUT``
images (the paper's 10,000-image test split) instead of cross-validating; the logistic
regression is fitted on at most ``LINEAR_TRAIN`` of the training images; and neighbourhood
preservation is measured for a random ``PRESERVATION_SAMPLE`` of the images, whose neighbours
are still sought among all. Neighbours come from :mod:`picmap.neighbours` (exact up to 50,000
points of more than 3 dimensions, approximate beyond), so nothing is quadratic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from .neighbours import knn_graph, knn_query

K = 15  # the paper's kNN classifier and the neighbourhood size used throughout
N_SPLITS = 5
CV_UP_TO = 100_000  # from this many images on, one held-out split instead of cross-validation
HELD_OUT = 10_000
LINEAR_TRAIN = 100_000
PRESERVATION_SAMPLE = 10_000


def _check_inputs(Y: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    Y, labels = np.asarray(Y), np.asarray(labels)
    if Y.ndim != 2 or len(Y) != len(labels):
        raise ValueError(
            f"Y must be N×D with one label per row; got Y {Y.shape} and {len(labels)} labels"
        )
    if not np.isfinite(Y).all():
        raise ValueError("Y contains NaN or infinite coordinates")
    return Y, labels


def knn_accuracy(
    Y: np.ndarray,
    labels: np.ndarray,
    k: int = K,
    *,
    test_mask: np.ndarray | None = None,
    n_splits: int = N_SPLITS,
    seed: int = 0,
) -> float:
    """Accuracy of a k-nearest-neighbour classifier on the map coordinates ``Y``.

    The paper's protocol: the classifier is fitted on training points and scored on held-out
    points. With ``test_mask`` (True = held out) that split is used; otherwise the mean over a
    stratified ``n_splits``-fold cross-validation is returned.
    """
    _check_k(k)
    return _held_out_score(
        lambda n_train: _IndexedKNN(min(k, n_train)), Y, labels, test_mask, n_splits, seed
    )


class _IndexedKNN(ClassifierMixin, BaseEstimator):
    """A majority vote of the ``k`` nearest training points, found by :func:`knn_query` (as
    scikit-learn's KNeighborsClassifier, ties to the smallest label, without its quadratic
    brute-force search for more than a few dimensions)."""

    def __init__(self, k: int) -> None:
        self.k = k

    def fit(self, X: np.ndarray, y: np.ndarray) -> _IndexedKNN:
        self.X_, (self.classes_, self.codes_) = X, np.unique(y, return_inverse=True)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        _, index = knn_query(self.X_, X, self.k)
        votes = np.zeros((len(X), len(self.classes_)), np.int32)
        rows = np.arange(len(X))
        for column in self.codes_[index].T:
            votes[rows, column] += 1
        return self.classes_[votes.argmax(axis=1)]


def linear_accuracy(
    Y: np.ndarray,
    labels: np.ndarray,
    *,
    test_mask: np.ndarray | None = None,
    n_splits: int = N_SPLITS,
    seed: int = 0,
) -> float:
    """Accuracy of a logistic-regression classifier on standardised ``Y``, same protocol as
    :func:`knn_accuracy`: how linearly separable the classes are."""
    # One BLAS thread: the solver's products are thin (D × classes), and threads spin-waiting
    # on them made fits up to 50× slower on a busy 2-core machine.
    with threadpool_limits(1, user_api="blas"):
        return _held_out_score(
            lambda n_train: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
            Y,
            labels,
            test_mask,
            n_splits,
            seed,
            max_train=LINEAR_TRAIN,
        )


def _held_out_score(
    make_classifier: Callable[[int], ClassifierMixin],
    Y: np.ndarray,
    labels: np.ndarray,
    test_mask: np.ndarray | None,
    n_splits: int,
    seed: int,
    max_train: int | None = None,
) -> float:
    """Mean held-out accuracy of fresh classifiers (given the training size) over the splits,
    each fitted on at most ``max_train`` training points (a random stratified subset)."""
    Y, labels = _check_inputs(Y, labels)
    problem = protocol_problem(labels, test_mask, n_splits)
    if problem:
        raise ValueError(problem)
    if test_mask is not None:
        test_mask = np.asarray(test_mask, dtype=bool)
        splits = [(np.flatnonzero(~test_mask), np.flatnonzero(test_mask))]
    elif len(labels) >= CV_UP_TO:
        splits = [_stratified_split(np.arange(len(labels)), labels, HELD_OUT, seed)]
    else:
        folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        splits = list(folds.split(Y, labels))
    scores = []
    for train, test in splits:
        if max_train is not None and len(train) > max_train:
            train, _ = _stratified_split(train, labels[train], len(train) - max_train, seed)
        clf = make_classifier(len(train))
        clf.fit(Y[train], labels[train])
        scores.append(clf.score(Y[test], labels[test]))
    return float(np.mean(scores))


def _stratified_split(
    index: np.ndarray, labels: np.ndarray, held_out: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``index`` split at random into the kept and ``held_out`` held-out entries, stratified by
    ``labels`` where every class has two or more points."""
    _, counts = np.unique(labels, return_counts=True)
    stratify = labels if counts.min() >= 2 else None
    return tuple(train_test_split(index, test_size=held_out, random_state=seed, stratify=stratify))


def protocol_problem(
    labels: np.ndarray | None, test_mask: np.ndarray | None = None, n_splits: int = N_SPLITS
) -> str | None:
    """Why held-out accuracies cannot be measured with these labels, or None when they can."""
    if labels is None:
        return "the data has no labels, so there are no accuracies"
    labels = np.asarray(labels)
    if test_mask is not None:
        test_mask = np.asarray(test_mask, dtype=bool)
        if test_mask.shape != labels.shape:
            return f"test_mask must have one entry per label ({len(labels)}), got {test_mask.shape}"
        if test_mask.all() or not test_mask.any():
            return "test_mask must hold out some points and leave some for training"
        if len(np.unique(labels[~test_mask])) < 2:
            return "the training points hold fewer than 2 classes; hold out other points"
        return None
    _, counts = np.unique(labels, return_counts=True)
    if len(counts) < 2 or counts.min() < n_splits:
        return (
            f"{n_splits}-fold cross-validation needs at least 2 classes with {n_splits} or "
            "more images each; label more images or merge the smallest classes"
        )
    return None


def protocol_name(
    labels: np.ndarray, test_mask: np.ndarray | None, n_splits: int = N_SPLITS
) -> str:
    """The protocol in words, for reports."""
    if test_mask is None and len(labels) >= CV_UP_TO:
        return (
            f"{HELD_OUT} of {len(labels)} images held out (stratified); the linear classifier "
            f"fitted on {min(LINEAR_TRAIN, len(labels) - HELD_OUT)} of the others"
        )
    if test_mask is None:
        return f"stratified {n_splits}-fold cross-validation on {len(labels)} images"
    held_out = int(np.count_nonzero(test_mask))
    return f"fitted on {len(labels) - held_out} training images, scored on {held_out} held out"


def neighborhood_preservation(
    features: np.ndarray,
    Y: np.ndarray,
    k: int = K,
    *,
    sample: int = PRESERVATION_SAMPLE,
    seed: int = 0,
) -> float:
    """Mean fraction of each point's ``k`` nearest neighbours in ``features`` that are also
    among its ``k`` nearest neighbours in ``Y`` (1 = the map keeps every neighbourhood).

    With more than ``sample`` points, the mean is over a random ``sample`` of them (their
    neighbours are sought among all points)."""
    features, Y = np.asarray(features), np.asarray(Y)
    if features.ndim != 2 or Y.ndim != 2 or len(Y) != len(features):
        raise ValueError(
            f"features and Y must be N×D arrays of the same points; got {features.shape} "
            f"and {Y.shape}"
        )
    for name, array in (("features", features), ("Y", Y)):
        if not np.isfinite(array).all():
            raise ValueError(f"{name} contains NaN or infinite values; drop those points first")
    k = neighbour_count(k, len(Y))
    if len(Y) > sample:
        chosen = np.sort(np.random.default_rng(seed).choice(len(Y), sample, replace=False))
        near_f, near_y = (knn_graph(X, k, rows=chosen)[1] for X in (features, Y))
    else:
        near_f, near_y = (knn_graph(X, k)[1] for X in (features, Y))
    # Each row holds k distinct indices per space, so repeats in the sorted union are shared ones.
    both = np.sort(np.concatenate([near_f, near_y], axis=1), axis=1)
    shared = np.count_nonzero(both[:, 1:] == both[:, :-1], axis=1)
    return float(shared.mean() / k)


def neighbour_count(k: int, n: int) -> int:
    """``k`` checked (a ValueError unless a positive int), capped at the ``n - 1`` other points."""
    _check_k(k)
    if n < 2:
        raise ValueError(f"neighbourhoods need at least 2 points, got {n}")
    return min(k, n - 1)


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k={k!r} must be a positive whole number (neighbours per point)")


# -- a report over several embeddings of the same images ---------------------------------------


@dataclass(frozen=True)
class Embedding:
    """An embedding of the images to score: the map, the backbone's features or a baseline."""

    method: str
    coords: np.ndarray
    seconds: float | None = None  # wall time to compute it, when known


@dataclass(frozen=True)
class Score:
    """One row of the quality table (accuracies are None without usable labels)."""

    method: str
    dims: int
    knn_accuracy: float | None
    linear_accuracy: float | None
    seconds: float | None


@dataclass(frozen=True)
class Report:
    """Scores of the map, the features and any baselines, plus neighbourhood preservation."""

    scores: list[Score]  # the map first, then the features, then baselines
    neighborhood_preservation: float
    k: int
    protocol: str  # the protocol in words, or why there are no accuracies

    def metrics(self) -> dict:
        """The report as ``metrics.json`` entries (the map's keep the fit's key names)."""
        the_map, features, *others = self.scores
        return {
            "k": self.k,
            "protocol": self.protocol,
            "knn_accuracy": the_map.knn_accuracy,
            "linear_accuracy": the_map.linear_accuracy,
            "features_dims": features.dims,
            "features_knn_accuracy": features.knn_accuracy,
            "features_linear_accuracy": features.linear_accuracy,
            "neighborhood_preservation": self.neighborhood_preservation,
            **({"baselines": [asdict(score) for score in others]} if others else {}),
        }

    def text(self) -> str:
        """A short plain-text report: the table and the neighbourhood preservation."""
        return "\n".join(
            [
                f"Quality (k = {self.k}; {self.protocol})",
                format_table(self.scores),
                f"Neighbourhood preservation: {100 * self.neighborhood_preservation:.1f}% of each "
                f"image's {self.k} nearest neighbours in feature space stay among its {self.k} "
                "nearest on the map",
            ]
        )


def score(
    embedding: Embedding,
    labels: np.ndarray | None,
    *,
    k: int = K,
    test_mask: np.ndarray | None = None,
    seed: int = 0,
) -> Score:
    """kNN and linear accuracy of one embedding (None for both when the labels do not allow)."""
    coords = np.asarray(embedding.coords)
    knn = linear = None
    if protocol_problem(labels, test_mask) is None:
        knn = knn_accuracy(coords, labels, k, test_mask=test_mask, seed=seed)
        linear = linear_accuracy(coords, labels, test_mask=test_mask, seed=seed)
    return Score(embedding.method, coords.shape[1], knn, linear, embedding.seconds)


def quality_report(
    the_map: Embedding,
    features: Embedding,
    labels: np.ndarray | None,
    *,
    baselines: Sequence[Embedding] = (),
    k: int = K,
    test_mask: np.ndarray | None = None,
    seed: int = 0,
) -> Report:
    """Score the map, the backbone's features and ``baselines`` under one protocol."""
    embeddings = [the_map, features, *baselines]
    scores = [score(e, labels, k=k, test_mask=test_mask, seed=seed) for e in embeddings]
    problem = protocol_problem(labels, test_mask)
    protocol = problem or protocol_name(labels, test_mask)
    preservation = neighborhood_preservation(features.coords, the_map.coords, k)
    return Report(scores, preservation, k, protocol)


def format_table(scores: Sequence[Score]) -> str:
    """Scores as an aligned text table: method, dims, kNN acc, linear acc, time."""

    def percent(value: float | None) -> str:
        return "—" if value is None else f"{100 * value:.1f}%"

    def duration(seconds: float | None) -> str:
        return "" if seconds is None else f"{seconds:.1f} s"

    width = max(len("method"), *(len(s.method) for s in scores))
    lines = [f"{'method':{width}s} {'dims':>5s} {'kNN acc':>8s} {'linear acc':>10s} {'time':>9s}"]
    lines += [
        f"{s.method:{width}s} {s.dims:5d} {percent(s.knn_accuracy):>8s} "
        f"{percent(s.linear_accuracy):>10s} {duration(s.seconds):>9s}"
        for s in scores
    ]
    return "\n".join(lines)
