"""Nearest neighbours: the one search that training, evaluation and discovery use.

Positives for training

A recipe may pair an image with one of its nearest neighbours instead of with a second view of
itself (contrastive neighbour embeddings: Damrich, Böhm, Hamprecht & Kobak, ICLR 2023, show that
positives drawn from a kNN graph turn the contrastive loss into t-SNE's). Neighbours are found
after a PCA, as t-SNE does, of the square roots of the pixel intensities: distances between
them are Hellinger distances, in which faint strokes weigh more than in plain pixels. On the 10k
Fashion-MNIST subset that makes 77.6 % of each image's 15 neighbours share its class instead of
75.4 %, and the map 2 points better; on digits the share drops from 95.1 % to 93.9 %
(benchmarks/RESULTS.md).

The search (:func:`knn_graph`, :func:`knn_query`) picks its method by the data:

- up to 3 dimensions (maps): a k-d tree (SciPy), exact, N log N;
- up to ``EXACT_UP_TO`` points: exact search with faiss, which on 2 cores finds the 15
  neighbours of 70,000 Fashion-MNIST images (50 PCA components) in 7.7 s, 6× faster than the
  chunked torch search (48 s);
- beyond: faiss's inverted-file index (``4·√N`` k-means cells, ``IVF_PROBES`` searched per
  query). On those 70,000 images it finds 99.5 % of the exact neighbours in 2.0 s. For a
  million synthetic 16×16 colour images, PCA and search take 62 s and 2.4 GB at peak, and
  find all of the exact neighbours of 1,000 sampled images (``benchmarks/scale.py``). Exact
  search of a million would take hours on a CPU.

On a CUDA device training keeps the exact torch search, in chunks on the GPU.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import torch
from tqdm.auto import tqdm

# Principal components the pixels are reduced to, and at most how many images find them.
_PCA_DIMS, _PCA_SAMPLE = 50, 10_000
# Largest number of points searched exactly (faiss flat); beyond it an inverted-file index.
EXACT_UP_TO = 50_000
IVF_PROBES = 16  # cells searched per query: 99.5 % recall on Fashion-MNIST, 70k images
_IVF_TRAIN_PER_CELL = 40  # k-means training points per cell (faiss's guideline)
_PROGRESS_FROM, _QUERY_CHUNK = 100_000, 20_000  # a progress bar from this many queries on
_TREE_DIMS = 3  # up to this many dimensions a k-d tree is exact and N log N
# Floats held at once: pixels of a chunk of images, or distances in the search (256 MiB).
_FLOATS_AT_ONCE = 2**26


def _rows_at_once(width: int) -> int:
    return max(1, _FLOATS_AT_ONCE // width)


def _root_pixels(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Each image as one row of the square roots of its intensities, scaled to [0, 1]."""
    return (images.to(device).flatten(1).float() / 255).sqrt()


def principal_axes(sample: torch.Tensor, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of the rows of ``sample`` and their top ``dims`` principal axes (as rows)."""
    centre = sample.mean(0)
    return centre, torch.linalg.svd(sample - centre, full_matrices=False).Vh[:dims]


@torch.no_grad()
def root_pixel_pca(
    images: torch.Tensor, device: torch.device, dims: int = _PCA_DIMS
) -> torch.Tensor:
    """Every image's first ``dims`` principal components of its square-rooted pixels, float32.

    The axes are those of a sample of up to ``_PCA_SAMPLE`` images.
    """
    rows = _rows_at_once(images[0].numel())
    step = max(1, len(images) // min(_PCA_SAMPLE, max(rows, 4 * dims)))
    sample = _root_pixels(images[::step], device)
    centre, axes = principal_axes(sample, dims)
    return torch.cat(
        [
            (_root_pixels(images[i : i + rows], device) - centre) @ axes.T
            for i in range(0, len(images), rows)
        ]
    )


@torch.no_grad()
def nearest_neighbours(points: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``(N, k)`` of each point's ``k`` nearest other points (Euclidean), nearest first,
    on the points' device: exact torch search on CUDA, :func:`knn_graph` elsewhere."""
    _check_count(k, len(points))
    if points.device.type != "cuda":
        _, index = knn_graph(points.cpu().numpy(), k)
    else:
        distances, found = _torch_search(points, points, k + 1)
        own = np.arange(len(points))
        _, index = _without_own(distances.cpu().numpy(), found.cpu().numpy(), own)
    return torch.from_numpy(index).to(points.device)


def knn_graph(
    points: np.ndarray,
    k: int,
    *,
    rows: np.ndarray | None = None,
    exact: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each point's ``k`` nearest other points (Euclidean): distances and indices, N×k each,
    nearest first; with ``rows``, only for those points (neighbours are sought among all).
    ``exact=None`` chooses the method by size and dimension (module docstring)."""
    points = _float_rows(points, "points")
    _check_count(k, len(points))
    own = np.arange(len(points)) if rows is None else np.asarray(rows, dtype=np.int64)
    queries = points if rows is None else points[own]
    distances, index = knn_query(points, queries, k + 1, exact=exact)
    return _without_own(distances, index, own)


def knn_query(
    points: np.ndarray, queries: np.ndarray, k: int, *, exact: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest ``points`` of each row of ``queries`` (Euclidean): distances and
    indices, Q×k each, nearest first."""
    points, queries = _float_rows(points, "points"), _float_rows(queries, "queries")
    if queries.shape[1] != points.shape[1]:
        raise ValueError(
            f"queries have {queries.shape[1]} dimensions but the points {points.shape[1]}"
        )
    if not 0 < k <= len(points):
        raise ValueError(f"k={k} neighbours must be between 1 and the {len(points)} points")
    if points.shape[1] <= _TREE_DIMS:
        from scipy.spatial import cKDTree

        distances, index = cKDTree(points).query(queries, k, workers=-1)
        return distances.reshape(len(queries), k).astype(np.float32), index.reshape(-1, k)
    if not _faiss_installed():  # e.g. on a bare GPU machine: exact, in torch
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        found = _torch_search(torch.from_numpy(points).to(device), torch.from_numpy(queries), k)
        return tuple(part.cpu().numpy() for part in found)
    index = _faiss_index(points, exact if exact is not None else len(points) <= EXACT_UP_TO)
    squared, found = _search(index, queries, k)
    missed = (found < 0).any(axis=1)  # the probed cells held fewer than k points
    if missed.any():
        squared[missed], found[missed] = _faiss_index(points, exact=True).search(queries[missed], k)
    return np.sqrt(np.maximum(squared, 0)), found.astype(np.int64)


def _faiss_installed() -> bool:
    return importlib.util.find_spec("faiss") is not None


@torch.no_grad()
def _torch_search(
    points: torch.Tensor, queries: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact search in chunks of queries on the points' device: distances and indices."""
    norms = (points * points).sum(1)
    distances, found = [], []
    for chunk in queries.split(_rows_at_once(len(points))):
        chunk = chunk.to(points.device)
        squared = (chunk * chunk).sum(1, keepdim=True) + norms - 2 * chunk @ points.T
        nearest = squared.topk(k, dim=1, largest=False)
        distances.append(nearest.values.clamp_min(0).sqrt())
        found.append(nearest.indices)
    return torch.cat(distances), torch.cat(found)


def _faiss_index(points: np.ndarray, exact: bool):
    import faiss

    dims = points.shape[1]
    if exact:
        index = faiss.IndexFlatL2(dims)
    else:
        # 4·√N cells, but no fewer than 39 training points each (below, faiss warns).
        cells = max(1, min(round(4 * math.sqrt(len(points))), len(points) // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dims), dims, cells)
        sample = min(len(points), _IVF_TRAIN_PER_CELL * cells)
        step = max(1, len(points) // sample)
        index.train(np.ascontiguousarray(points[::step][:sample]))
        index.nprobe = min(IVF_PROBES, cells)
    index.add(points)
    return index


def _search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` in chunks of queries, with a progress bar (on a terminal) for many."""
    if len(queries) < _PROGRESS_FROM:
        return index.search(queries, k)
    squared = np.empty((len(queries), k), np.float32)
    found = np.empty((len(queries), k), np.int64)
    with tqdm(total=len(queries), desc="neighbour search", unit="img", disable=None) as bar:
        for start in range(0, len(queries), _QUERY_CHUNK):
            stop = min(start + _QUERY_CHUNK, len(queries))
            squared[start:stop], found[start:stop] = index.search(queries[start:stop], k)
            bar.update(stop - start)
    return squared, found


def _without_own(
    distances: np.ndarray, index: np.ndarray, own: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Drop from each row of k+1 found its own index ``own`` (or its farthest, where the search
    missed it: an approximate search, or identical points)."""
    drop = index == own[:, None]
    drop[~drop.any(axis=1), -1] = True
    drop &= np.cumsum(drop, axis=1) == 1  # only the first match, if listed twice
    k = index.shape[1] - 1
    return distances[~drop].reshape(-1, k), index[~drop].reshape(-1, k)


def _float_rows(X: np.ndarray, name: str) -> np.ndarray:
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"{name} must be a non-empty N×D array, got shape {X.shape}")
    return X


def _check_count(k: int, n: int) -> None:
    if not 0 < k < n:
        raise ValueError(f"neighbours k={k} must be between 1 and the number of images − 1")


def draw_partners(
    order: torch.Tensor, neighbours: torch.Tensor, share: float, gen: torch.Generator
) -> torch.Tensor:
    """Each image of ``order``: one of its neighbours with probability ``share``, else itself."""
    n, k = len(order), neighbours.shape[1]
    pick = torch.randint(k, (n,), generator=gen, device=order.device)
    use = torch.rand(n, generator=gen, device=order.device) < share
    return torch.where(use, neighbours[order, pick], order)
