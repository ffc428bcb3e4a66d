"""Discovery lists: hand-computed cases, planted cases in real digits, and the CSV files."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from picmap import TSimCNE, datasets
from picmap.data.store import ImageStore
from picmap.discover import (
    Discoveries,
    discover,
    find_duplicates,
    find_label_errors,
    find_outliers,
    outlier_scores,
)
from picmap.neighbours import knn_graph
from picmap.outputs import write_discoveries


def _column(*values: float) -> np.ndarray:
    """Points on a line, as N×2 coordinates."""
    return np.stack([values, np.zeros(len(values))], axis=1)


def test_outlier_scores_by_hand():
    # Mean distance to the nearest neighbour: 1, 1, 1, 1, 97 in both spaces.
    points = _column(0, 1, 2, 3, 100)
    scores = outlier_scores(points, points, k=1)
    np.testing.assert_allclose(scores, [0.375, 0.375, 0.375, 0.375, 1.0])  # (rank − 1) / 4
    index, top = find_outliers(points, points, k=1, fraction=0.2)
    assert index.tolist() == [4] and top.tolist() == [1.0]


def test_outlier_ranks_combine_map_and_features():
    # Point 0 is isolated on the map only, point 4 in both spaces.
    the_map = _column(-50, 1, 2, 3, 80)  # nearest distances 51, 1, 1, 1, 77: ranks 4, 2, 2, 2, 5
    features = _column(0, 1, 2, 3, 50)  # nearest distances 1, 1, 1, 1, 47: ranks 2.5 ×4, 5
    scores = outlier_scores(the_map, features, k=1)
    np.testing.assert_allclose(scores, [(3.25 - 1) / 4, 0.3125, 0.3125, 0.3125, 1.0])


def test_label_errors_by_hand():
    features = _column(0, 0.1, 0.2, 0.3, 5, 5.1, 5.2, 5.3)
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    # Point 3's three nearest (0.2, 0.1, 0) all say 0; point 2 has one disagreeing neighbour.
    index, scores, neighbour_labels = find_label_errors(features, labels, k=3)
    assert index.tolist() == [3]
    assert scores.tolist() == [1.0]
    assert neighbour_labels.tolist() == [0]


def test_duplicates_by_hand():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 16))
    features = np.vstack([features, features[3], features[7] + 0.01])  # rows 50 and 51
    pairs, similarity = find_duplicates(features, threshold=0.99)
    assert pairs.tolist() == [[3, 50], [7, 51]]
    assert similarity[0] == pytest.approx(1.0) and similarity[1] > 0.999
    exact, _ = find_duplicates(features, threshold=1.0)
    assert exact.tolist() == [[3, 50]]
    none, _ = find_duplicates(rng.normal(size=(20, 16)))
    assert none.shape == (0, 2)


def test_bad_inputs_name_the_problem():
    points = _column(0, 1, 2)
    with pytest.raises(ValueError, match="fraction=0"):
        find_outliers(points, points, fraction=0)
    with pytest.raises(ValueError, match="features contains NaN"):
        find_duplicates(_column(0, np.nan, 2))
    with pytest.raises(ValueError, match="Y has 3 points but features has 2"):
        outlier_scores(points, points[:2])
    with pytest.raises(ValueError, match="labels must be 3 integers"):
        find_label_errors(points, np.array([0.5, 1, 2]))


# -- planted cases in real data ----------------------------------------------------------------

DUPLICATE_OF, FLIPPED, CONSTANT = 10, 20, 30


@pytest.fixture(scope="module")
def planted():
    """Digits with an extra copy of image 10, image 20's label changed, image 30 all white;
    mapped by a quickly fitted small model (the paper's recipe, fixed so that tuning the
    default recipe does not move these planted cases)."""
    images, labels = datasets.load("digits")
    images = np.concatenate([images, images[DUPLICATE_OF : DUPLICATE_OF + 1]])
    labels = np.concatenate([labels, labels[DUPLICATE_OF : DUPLICATE_OF + 1]])
    images[CONSTANT] = 255
    assert labels[FLIPPED] == 0  # a typical zero, now labelled 1
    labels[FLIPPED] = 1
    model = TSimCNE(
        "small",
        total_epochs=[2, 1, 1],
        batch_size=128,
        seed=0,
        device="cpu",
        verbose=False,
        recipe="paper",
    )
    Y = model.fit_transform(images)
    return discover(Y, model.features(images), labels), len(images)


@pytest.mark.slow
def test_planted_duplicate_label_error_and_outlier_are_found(planted):
    found, n = planted
    assert [DUPLICATE_OF, n - 1] in found.duplicates.tolist()
    assert FLIPPED in found.label_errors[: len(found.label_errors) // 4]
    assert found.neighbour_labels[found.label_errors.tolist().index(FLIPPED)] == 0
    assert CONSTANT in found.outliers  # the top 1 %
    lists = found.lists()
    assert set(lists) == {"outliers", "likely label errors", "near-duplicates"}
    assert {DUPLICATE_OF, n - 1} <= set(lists["near-duplicates"])


# -- the CSV files -----------------------------------------------------------------------------


def test_discovery_csvs_are_ranked_and_quoted(tmp_path):
    store = ImageStore(
        torch.zeros((9, 1, 4, 4), dtype=torch.uint8),
        np.array([0, 0, 0, 1, 1, 1, 1, 1, 1]),
        class_names=["cat", 'dog, "big"'],
        file_names=[f"img{i}.png" for i in range(8)] + ["copy, of 7.png"],
    )
    found = Discoveries(
        outliers=np.array([4, 0]),
        outlier_scores=np.array([0.99, 0.5]),
        label_errors=np.array([3]),
        label_error_scores=np.array([1.0]),
        neighbour_labels=np.array([0]),
        duplicates=np.array([[7, 8]]),
        duplicate_similarities=np.array([1.0]),
    )
    written = write_discoveries(tmp_path, found, store)
    assert sorted(p.name for p in written) == [
        "duplicates.csv",
        "label_errors.csv",
        "outliers.csv",
    ]

    def rows(name: str) -> list[dict]:
        with open(tmp_path / name, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))

    assert rows("label_errors.csv") == [
        {
            "rank": "1",
            "index": "3",
            "file": "img3.png",
            "label": 'dog, "big"',
            "neighbour_label": "cat",
            "score": "1.0000",
        }
    ]
    duplicate = rows("duplicates.csv")[0]
    assert (duplicate["file_a"], duplicate["file_b"]) == ("img7.png", "copy, of 7.png")
    assert duplicate["similarity"] == "1.0000"
    assert [(r["rank"], r["index"], r["score"]) for r in rows("outliers.csv")] == [
        ("1", "4", "0.9900"),
        ("2", "0", "0.5000"),
    ]


def test_discover_finds_the_feature_graph_once_and_lists_what_the_parts_do(monkeypatch):
    from picmap import discover as module

    rng = np.random.default_rng(3)
    features = rng.normal(size=(300, 8)).astype(np.float32)
    Y = features[:, :2] + rng.normal(0, 0.1, (300, 2))
    labels = rng.integers(3, size=300)
    searched = []

    def counting(points, k, **options):
        searched.append(points.shape[1])
        return knn_graph(points, k, **options)

    monkeypatch.setattr(module, "knn_graph", counting)
    found = discover(Y, features, labels, k=5)
    assert searched.count(8) == 2  # the features once for outliers and label errors, once centred
    outliers, scores = find_outliers(Y, features, k=5)
    errors, error_scores, neighbour_labels = find_label_errors(features, labels, k=5)
    assert np.array_equal(found.outliers, outliers)
    np.testing.assert_allclose(found.outlier_scores, scores)
    assert np.array_equal(found.label_errors, errors)
    np.testing.assert_allclose(found.label_error_scores, error_scores)
    assert np.array_equal(found.neighbour_labels, neighbour_labels)
