"""How good is a map: kNN accuracy under the t-SimCNE paper's protocol."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier


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
    k: int = 15,
    *,
    test_mask: np.ndarray | None = None,
    n_splits: int = 5,
    seed: int = 0,
) -> float:
    """Accuracy of a k-nearest-neighbour classifier on the map coordinates ``Y``.

    The paper's protocol: the classifier is fitted on training points and scored on held-out
    points. With ``test_mask`` (True = held out) that split is used; otherwise the mean over a
    stratified ``n_splits``-fold cross-validation is returned.
    """
    Y, labels = _check_inputs(Y, labels)
    if test_mask is not None:
        test_mask = np.asarray(test_mask, dtype=bool)
        splits = [(np.flatnonzero(~test_mask), np.flatnonzero(test_mask))]
    else:
        folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        splits = list(folds.split(Y, labels))
    scores = []
    for train, test in splits:
        clf = KNeighborsClassifier(n_neighbors=min(k, len(train)))
        clf.fit(Y[train], labels[train])
        scores.append(clf.score(Y[test], labels[test]))
    return float(np.mean(scores))
