"""Static figures: files, sizes, colours, thumbnails and atomic writing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from picmap._io import write_text_atomic
from picmap.plot import class_colors, scatter_map, thumbnail_map

MAGENTA = (255, 0, 255)


def _blobs(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    return (rng.normal(size=(k, 2)) * 8)[labels] + rng.normal(size=(n, 2)), labels


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def _expected_px(fig: Figure) -> tuple[int, int]:
    width, height = fig.get_size_inches() * fig.dpi
    return round(width), round(height)


@pytest.mark.parametrize("n", [100, 20_000])
def test_scatter_map_writes_png_of_figure_size(tmp_path, n):
    Y, labels = _blobs(n, 5)
    path = tmp_path / "map.png"
    fig = scatter_map(Y, labels, [f"class {i}" for i in range(5)], path=path, title="t")
    assert path.stat().st_size > 10_000
    assert _png_size(path) == _expected_px(fig)


@pytest.mark.parametrize("k", [3, 15, 100])
def test_scatter_colours_one_per_class(k):
    Y, labels = _blobs(2_000, k)
    ax = scatter_map(Y, labels).axes[0]
    colours = np.unique(ax.collections[0].get_facecolors()[:, :3].round(4), axis=0)
    assert len(colours) == k
    assert len(set(class_colors(k))) == k
    legend = ax.figure.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [str(i) for i in range(k)]


def test_scatter_without_labels_has_no_legend():
    fig = scatter_map(np.random.default_rng(0).normal(size=(50, 2)))
    assert not fig.legends
    assert len(np.unique(fig.axes[0].collections[0].get_facecolors(), axis=0)) == 1


def test_scatter_rejects_bad_input():
    with pytest.raises(ValueError, match="N×2"):
        scatter_map(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="class_names"):
        scatter_map(np.zeros((3, 2)), np.array([0, 1, 2]), ["a", "b"])


def _planted_images() -> tuple[np.ndarray, np.ndarray]:
    """Grey images on a 10×10 lattice, plus a magenta one alone in the top-right corner and a
    green one in the same cell but farther from its centre (so only magenta is drawn)."""
    xx, yy = np.meshgrid(np.arange(10.0), np.arange(10.0))
    Y = np.column_stack([xx.ravel(), yy.ravel()]) + 0.5
    Y = np.vstack([Y, [[12.5, 12.5], [12.9, 12.1]]])
    images = np.full((len(Y), 3, 16, 16), 128, np.uint8)
    images[-2] = np.array(MAGENTA, np.uint8)[:, None, None]
    images[-1] = np.array([0, 255, 0], np.uint8)[:, None, None]
    return Y, images


def _canvas_pixels(fig: Figure) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].reshape(-1, 3).astype(int)


def test_thumbnail_map_draws_closest_image_per_cell(tmp_path):
    Y, images = _planted_images()
    path = tmp_path / "thumbs.png"
    fig = thumbnail_map(Y, torch.from_numpy(images), path=path, grid=13)
    assert _png_size(path) == _expected_px(fig)
    pixels = _canvas_pixels(fig)
    magenta = (np.abs(pixels - MAGENTA).max(axis=1) < 30).sum()
    green = (np.abs(pixels - (0, 255, 0)).max(axis=1) < 30).sum()
    assert magenta > 100
    assert green == 0


def test_thumbnail_map_one_image_per_occupied_cell():
    Y, images = _planted_images()
    mosaic = thumbnail_map(Y, images[:, :1], grid=13).axes[0].images[0].get_array()
    cell = mosaic.shape[0] // 13  # 13 cells along each side for the 13×13 extent
    drawn = mosaic[..., 3].reshape(13, cell, 13, cell).max(axis=(1, 3)) > 0
    assert drawn.sum() == 101  # the 10×10 lattice, plus one for the shared corner cell


def test_thumbnail_map_rejects_float_images():
    with pytest.raises(TypeError, match="uint8"):
        thumbnail_map(np.zeros((2, 2)), np.zeros((2, 3, 8, 8)))


def test_failed_render_leaves_existing_file_and_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "map.png"
    path.write_bytes(b"old")

    def broken_savefig(self, file, **kwargs):
        file.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        scatter_map(np.zeros((3, 2)), path=path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["map.png"]


def test_atomic_write_creates_folders_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "new" / "notes.txt"
    write_text_atomic(path, "ünïcode")
    assert path.read_text(encoding="utf-8") == "ünïcode"
    assert [p.name for p in path.parent.iterdir()] == ["notes.txt"]
