"""Baselines on the same images, to put a map's scores in context.

Pixel-space PCA (50-D and its first 2 components), t-SNE (openTSNE) and UMAP of the pixels,
and t-SNE of the trained backbone's features (the "SimCLR + t-SNE" pipeline of the t-SimCNE
paper). t-SNE and UMAP of the pixels run on the 50 PCA components, as is usual; their wall time
includes that PCA. Needs the optional extra ``picmap[baselines]`` (openTSNE, umap-learn).

The PCA axes are fitted on at most ``PCA_SAMPLE`` images (evenly spaced through the
collection) and the images are projected in chunks, so the pixels are never held whole as
floats: a million 32×32 colour images would take 12 GB.
"""

from __future__ import annotations

import importlib.util
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from sklearn.decomposition import PCA

from .evaluate import Embedding

INSTALL_HINT = 'pip install "picmap[baselines]"'
PCA_DIMS = 50
PCA_SAMPLE = 20_000
_CHUNK = 10_000  # images turned into float rows at once
PARALLEL_FROM = 10_000  # t-SNE threads pay off only for larger data
_MODULES = {"openTSNE": "openTSNE", "umap": "umap-learn"}


def check_installed() -> None:
    """Raise ImportError, naming the install command, unless openTSNE and umap-learn import."""
    missing = [package for module, package in _MODULES.items() if not _importable(module)]
    if missing:
        raise ImportError(f"baselines need {' and '.join(missing)}: {INSTALL_HINT}")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def pixels(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Images (any shape ``N×…``, uint8) as N×D float32 rows in [0, 1]."""
    array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.dtype != np.uint8 or array.ndim < 2:
        raise TypeError(f"images must be a uint8 N×… array, got {array.dtype} {array.shape}")
    return array.reshape(len(array), -1).astype(np.float32) / 255


def run_baselines(
    images: np.ndarray | torch.Tensor,
    features: np.ndarray,
    *,
    seed: int = 0,
    n_jobs: int | None = None,
) -> list[Embedding]:
    """Embed ``images`` with every baseline; ``features`` are the backbone's, for its t-SNE.

    ``n_jobs`` is t-SNE's thread count; by default all cores from ``PARALLEL_FROM`` images on,
    one below (where starting threads costs more than it saves).
    """
    check_installed()
    if len(features) != len(images):
        raise ValueError(f"features has {len(features)} rows but there are {len(images)} images")
    if n_jobs is None:
        n_jobs = -1 if len(images) >= PARALLEL_FROM else 1
    pca, pca_seconds = _timed(lambda: pixel_pca(images, seed))
    pixel_tsne, tsne_seconds = _timed(lambda: _tsne(pca, seed, n_jobs))
    pixel_umap, umap_seconds = _timed(lambda: _umap(pca, seed))
    feature_tsne, feature_seconds = _timed(lambda: _tsne(features, seed, n_jobs))
    return [
        Embedding("pixel PCA", pca, pca_seconds),
        Embedding("pixel PCA", pca[:, :2], pca_seconds),
        Embedding("pixel t-SNE", pixel_tsne, pca_seconds + tsne_seconds),
        Embedding("pixel UMAP", pixel_umap, pca_seconds + umap_seconds),
        Embedding("features + t-SNE", feature_tsne, feature_seconds),
    ]


def pixel_pca(images: np.ndarray | torch.Tensor, seed: int = 0) -> np.ndarray:
    """The first ``PCA_DIMS`` principal components of the pixels, N×D float32; the axes are
    fitted on up to ``PCA_SAMPLE`` evenly spaced images, the rest projected in chunks."""
    step = max(1, -(-len(images) // PCA_SAMPLE))
    sample = pixels(images[::step])
    dims = min(PCA_DIMS, *sample.shape)
    pca = PCA(dims, random_state=seed).fit(sample)
    chunks = range(0, len(images), _CHUNK)
    return np.concatenate([pca.transform(pixels(images[i : i + _CHUNK])) for i in chunks])


def _timed(compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    result = compute()
    return np.asarray(result, dtype=np.float32), time.perf_counter() - started


def _tsne(X: np.ndarray, seed: int, n_jobs: int) -> np.ndarray:
    from openTSNE import TSNE

    return np.asarray(TSNE(random_state=seed, n_jobs=n_jobs).fit(np.asarray(X, np.float64)))


def _umap(X: np.ndarray, seed: int) -> np.ndarray:
    with warnings.catch_warnings():
        # umap-learn warns on import that its optional TensorFlow part is missing, and that a
        # fixed random_state makes it single-threaded: neither concerns a baseline.
        warnings.simplefilter("ignore", ImportWarning)
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        import umap

        return umap.UMAP(random_state=seed).fit_transform(X)
