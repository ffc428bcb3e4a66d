import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from picmap.neighbours import draw_partners, nearest_neighbours, root_pixel_pca


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
