import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from picmap.neighbours import (
    draw_partners,
    knn_graph,
    knn_query,
    nearest_neighbours,
    root_pixel_pca,
)


def test_nearest_neighbours_match_scikit_learn_across_chunks(monkeypatch):
    monkeypatch.setattr("picmap.neighbours._FLOATS_AT_ONCE", 1000 * 2500)  # 3 chunks
    points = torch.randn(2500, 5, generator=torch.Generator().manual_seed(0))
    ours = nearest_neighbours(points, 7).numpy()
    theirs = NearestNeighbors(n_neighbors=8).fit(points.numpy()).kneighbors()[1][:, :7]
    assert np.array_equal(ours, theirs)
    assert not (ours == np.arange(len(points))[:, None]).any()  # never itself


@pytest.mark.parametrize("floats_at_once", [2**26, 36 * 64])
def test_root_pixel_pca_equals_scikit_learn_on_square_roots_up_to_sign(monkeypatch, floats_at_once):
    # The small limit makes 64-image chunks and fits the axes on every 4th image.
    monkeypatch.setattr("picmap.neighbours._FLOATS_AT_ONCE", floats_at_once)
    images = torch.randint(0, 256, (300, 1, 6, 6), generator=torch.Generator().manual_seed(1))
    roots = np.sqrt(images.flatten(1).numpy() / 255)
    ours = root_pixel_pca(images.to(torch.uint8), torch.device("cpu"), dims=4).numpy()
    step = 1 if floats_at_once == 2**26 else 4
    theirs = PCA(4).fit(roots[::step]).transform(roots)
    np.testing.assert_allclose(np.abs(ours), np.abs(theirs), atol=1e-4)


def test_too_many_neighbours_are_refused():
    with pytest.raises(ValueError, match="between 1 and the number of images"):
        nearest_neighbours(torch.zeros(5, 2), 5)


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_partners_are_neighbours_as_often_as_asked(share):
    n = 20_000
    neighbours = torch.stack([(torch.arange(n) + d) % n for d in (1, 2, 3)], 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(2))
    partners = draw_partners(order, neighbours, share, torch.Generator().manual_seed(3))
    moved = partners != order
    assert moved.float().mean().item() == pytest.approx(share, abs=0.015)
    offsets = (partners[moved] - order[moved]) % n
    assert set(offsets.tolist()) <= {1, 2, 3}
    if share == 1.0:
        assert set(offsets.tolist()) == {1, 2, 3}  # each of the k neighbours gets drawn


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) for a, b in zip(found, truth, strict=True)]))


def test_exact_search_matches_scikit_learn_in_high_and_low_dimensions():
    digits = load_digits().data.astype(np.float32)
    for points in (digits, digits[:, 20:22] + np.arange(len(digits))[:, None] * 1e-3):
        distances, index = knn_graph(points, 10, exact=True)
        theirs, _ = NearestNeighbors(n_neighbors=10).fit(points).kneighbors()
        # Equal distances, so the same neighbours up to ties, and they are the listed points'.
        np.testing.assert_allclose(distances, theirs, rtol=1e-3, atol=1e-3)
        listed = np.linalg.norm(points[index] - points[:, None], axis=2)
        np.testing.assert_allclose(listed, theirs, rtol=1e-3, atol=1e-3)
        assert not (index == np.arange(len(points))[:, None]).any()


def test_approximate_search_finds_at_least_97_percent_of_the_exact_neighbours():
    # The stated recall: the inverted-file index on real images (digits, 1,797 of them).
    points = load_digits().data.astype(np.float32)
    _, exact = knn_graph(points, 15, exact=True)
    _, approximate = knn_graph(points, 15, exact=False)
    assert _recall(approximate, exact) / 15 >= 0.97
    assert not (approximate == np.arange(len(points))[:, None]).any()


def test_the_size_decides_between_exact_and_approximate(monkeypatch):
    points = load_digits().data.astype(np.float32)
    _, exact = knn_graph(points, 15, exact=True)
    monkeypatch.setattr("picmap.neighbours.EXACT_UP_TO", 100)
    monkeypatch.setattr("picmap.neighbours.IVF_PROBES", 1)  # a poor index, so it shows
    _, auto = knn_graph(points, 15)
    assert _recall(auto, exact) / 15 < 0.97


def test_neighbours_of_some_rows_are_those_of_the_whole_graph():
    points = load_digits().data.astype(np.float32)
    rows = np.array([5, 0, 1700])
    _, whole = knn_graph(points, 8, exact=True)
    _, some = knn_graph(points, 8, rows=rows, exact=True)
    assert np.array_equal(some, whole[rows])


def test_identical_points_never_list_a_point_as_its_own_neighbour():
    points = np.repeat(np.eye(6, dtype=np.float32), 4, axis=0)  # groups of 4 copies
    _, index = knn_graph(points, 3, exact=True)
    assert not (index == np.arange(len(points))[:, None]).any()
    assert np.array_equal(index // 4, np.repeat(np.arange(6), 4)[:, None].repeat(3, 1))


def test_queries_of_the_wrong_width_are_refused():
    with pytest.raises(ValueError, match="queries have 3 dimensions but the points 4"):
        knn_query(np.zeros((10, 4)), np.zeros((2, 3)), 2)


def test_without_faiss_the_search_is_exact_in_torch(monkeypatch):
    points = load_digits().data.astype(np.float32)
    distances, _ = knn_graph(points, 6, exact=True)
    monkeypatch.setattr("picmap.neighbours._faiss_installed", lambda: False)
    monkeypatch.setattr("picmap.neighbours._FLOATS_AT_ONCE", 500 * len(points))  # 4 chunks
    torch_distances, torch_index = knn_graph(points, 6)
    np.testing.assert_allclose(torch_distances, distances, rtol=1e-3, atol=1e-2)
    listed = np.linalg.norm(points[torch_index] - points[:, None], axis=2)  # same up to ties
    np.testing.assert_allclose(listed, distances, rtol=1e-3, atol=1e-2)
    assert not (torch_index == np.arange(len(points))[:, None]).any()
