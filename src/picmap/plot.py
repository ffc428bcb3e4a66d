"""Static figures of a 2-D embedding: a coloured scatter map, a map of thumbnails, and several
maps of the same images side by side.

Figures are built on matplotlib's Agg canvas directly (no pyplot, no display, no global state),
so they work on servers and in threads. Each function returns the Figure and, when given a
``path``, also save it atomically (the format follows the file extension; PNG by default).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import hsv_to_rgb, to_hex
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.lines import Line2D

from ._io import atomic_write

MAP_INCHES = 8.0
PANEL_INCHES = 4.0  # one map of several side by side (compare_maps)
DPI = 150
LEGEND_ROWS = 30
THUMBNAIL_MAX_PX = 64
UNLABELLED_COLOR = "#3b6ea8"


def class_colors(n: int) -> list[str]:
    """``n`` distinct qualitative colours as hex strings (tab10, tab20, then spread hues).

    Beyond 20 classes the hues follow the golden-angle sequence with three alternating
    saturation/brightness levels, so neighbouring class indices never get similar colours.
    """
    if n <= 10:
        return [to_hex(c) for c in colormaps["tab10"].colors[:n]]
    if n <= 20:
        return [to_hex(c) for c in colormaps["tab20"].colors[:n]]
    i = np.arange(n)
    hue = (i * 0.618033988749895) % 1.0
    sat = np.array([0.85, 0.55, 0.95])[i % 3]
    val = np.array([0.85, 0.95, 0.6])[i % 3]
    return [to_hex(c) for c in hsv_to_rgb(np.stack([hue, sat, val], axis=1))]


def scatter_map(
    Y: np.ndarray,
    labels: np.ndarray | None = None,
    class_names: list[str] | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Scatter plot of the embedding ``Y`` (N×2), coloured by ``labels`` with a class legend.

    Marker size and opacity shrink as N grows, so 100 and 100,000 points both read well; points
    are drawn in a fixed random order so no class systematically covers another.
    """
    points = _check_embedding(Y)
    classes = _class_codes(labels, class_names, len(points))
    fig = _new_figure()
    _draw_points(_map_axes(fig, title), points, classes)
    _class_legend(fig, classes)
    _save(fig, path)
    return fig


def compare_maps(
    maps: Sequence[tuple[str, np.ndarray]],
    labels: np.ndarray | None = None,
    class_names: list[str] | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
    columns: int = 3,
) -> Figure:
    """Several 2-D maps of the same images side by side, coloured alike, with one legend.

    ``maps`` holds ``(title, Y)`` pairs, each ``Y`` an N×2 array over the same N images.
    """
    if not maps:
        raise ValueError("maps is empty; pass (title, N×2 coordinates) pairs")
    points = [_check_embedding(Y) for _, Y in maps]
    if len({len(p) for p in points}) != 1:
        raise ValueError(
            f"the maps must show the same images; their sizes differ: {[len(p) for p in points]}"
        )
    classes = _class_codes(labels, class_names, len(points[0]))
    cols = min(columns, len(maps))
    rows = -(-len(maps) // cols)
    fig = _new_figure(PANEL_INCHES * cols, PANEL_INCHES * rows)
    for i, ((title, _), panel) in enumerate(zip(maps, points, strict=True)):
        ax = _map_axes(fig, title, (rows, cols, i + 1))
        _draw_points(ax, panel, classes, PANEL_INCHES / MAP_INCHES)
    _class_legend(fig, classes)
    _save(fig, path)
    return fig


def _draw_points(
    ax, points: np.ndarray, classes: tuple[np.ndarray, list[str]] | None, scale: float = 1.0
) -> None:
    """Scatter the points in a fixed random order, coloured by class; markers grow with
    ``scale`` (the panel's size relative to a full map)."""
    n = len(points)
    order = np.random.default_rng(0).permutation(n)
    colors: np.ndarray | str = UNLABELLED_COLOR
    if classes is not None:
        colors = np.array(class_colors(len(classes[1])))[classes[0][order]]
    size = float(np.clip(20_000 / n, 0.8, 30.0)) * scale**2
    alpha = float(np.clip(0.9 * (1_000 / n) ** 0.25, 0.3, 0.9))
    ax.scatter(*points[order].T, s=size, c=colors, alpha=alpha, linewidths=0, rasterized=True)


def _class_legend(fig: Figure, classes: tuple[np.ndarray, list[str]] | None) -> None:
    """One legend entry per class, outside on the right; the figure widens to fit it."""
    if classes is None:
        return
    names = classes[1]
    handles = [
        Line2D([], [], marker="o", linestyle="", color=c, markersize=6, label=name)
        for c, name in zip(class_colors(len(names)), names, strict=True)
    ]
    columns = -(-len(names) // LEGEND_ROWS)
    legend = fig.legend(handles=handles, loc="outside right upper", ncols=columns, frameon=False)
    _widen_for(fig, legend)


def thumbnail_map(
    Y: np.ndarray,
    images: np.ndarray | torch.Tensor,
    *,
    path: str | os.PathLike[str] | None = None,
    grid: int = 30,
) -> Figure:
    """The images themselves on the map: one thumbnail per occupied cell of a regular grid.

    The longer side of the map is cut into ``grid`` square cells; each cell that contains points
    shows the image of the point closest to the cell centre, over a light scatter of all points.
    """
    points = _check_embedding(Y)
    pixels = _check_images(images, len(points))
    if not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be a positive int (cells along the longer side), got {grid!r}")
    chosen, cells, origin, side, shape = _pick_per_cell(points, grid)
    mosaic = _mosaic(_thumbnails(pixels[chosen], THUMBNAIL_MAX_PX), cells, shape)
    fig = _new_figure()
    ax = _map_axes(fig, None)
    ax.scatter(*points.T, s=2, c="0.7", alpha=0.4, linewidths=0, rasterized=True, zorder=1)
    x0, y0 = origin
    extent = (x0, x0 + shape[0] * side, y0, y0 + shape[1] * side)
    ax.imshow(mosaic, extent=extent, origin="upper", interpolation="antialiased", zorder=2)
    _save(fig, path)
    return fig


# -- input checks shared with picmap.explore ---------------------------------------------------


def _check_embedding(Y: np.ndarray) -> np.ndarray:
    """Return ``Y`` as a finite float64 N×2 array, or raise naming the problem."""
    points = np.asarray(Y, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ValueError(f"Y must be an N×2 array of map coordinates, got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("Y contains NaN or infinite coordinates; drop or fix those points first")
    return points


def _class_codes(
    labels: np.ndarray | None, class_names: list[str] | None, n: int
) -> tuple[np.ndarray, list[str]] | None:
    """Map labels to class indices 0..K-1 and their names; None when there are no labels.

    With ``class_names``, label ``k`` is class ``class_names[k]``; without, the distinct label
    values, sorted, become the classes and are named by their value.
    """
    if labels is None:
        return None
    values = np.asarray(labels)
    if values.shape != (n,) or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(
            f"labels must be {n} integers (one per point), got {values.dtype} of shape "
            f"{values.shape}"
        )
    if class_names is None:
        uniques, codes = np.unique(values, return_inverse=True)
        return codes, [str(v) for v in uniques]
    names = [str(name) for name in class_names]
    if values.min() < 0 or values.max() >= len(names):
        raise ValueError(
            f"labels range from {values.min()} to {values.max()} but there are only "
            f"{len(names)} class_names; pass one name per label value 0..K-1"
        )
    return values.astype(np.int64), names


def _check_images(images: np.ndarray | torch.Tensor, n: int) -> torch.Tensor:
    """Return ``images`` as a CPU uint8 N×C×H×W tensor (C is 1 or 3), or raise."""
    pixels = torch.as_tensor(images).cpu()
    if pixels.dtype != torch.uint8:
        raise TypeError(
            f"images must be uint8 (0-255), got {pixels.dtype}; convert floats in [0, 1] "
            "with (images * 255).round().astype(np.uint8)"
        )
    if pixels.ndim != 4 or pixels.shape[1] not in (1, 3) or len(pixels) != n:
        raise ValueError(
            f"images must be {n}×C×H×W with C = 1 or 3 (channels first), got {tuple(pixels.shape)}"
        )
    return pixels


def _thumbnails(pixels: torch.Tensor, max_px: int) -> np.ndarray:
    """Shrink N×C×H×W images so the longer side is at most ``max_px``; return N×H×W×C."""
    h, w = pixels.shape[-2:]
    scale = max_px / max(h, w)
    if scale < 1:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        pixels = torch.cat(
            [
                F.interpolate(chunk.float(), size=size, mode="area").round().to(torch.uint8)
                for chunk in pixels.split(4096)
            ]
        )
    return pixels.permute(0, 2, 3, 1).contiguous().numpy()


# -- figure helpers ----------------------------------------------------------------------------


def _new_figure(width: float = MAP_INCHES, height: float = MAP_INCHES) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _widen_for(fig: Figure, legend: Legend) -> None:
    """Make the figure wider by the legend's measured width, so the map keeps its size."""
    width = legend.get_window_extent(fig.canvas.get_renderer()).width / fig.dpi
    fig.set_figwidth(fig.get_figwidth() + width + 0.2)


def _map_axes(fig: Figure, title: str | None, position: tuple[int, int, int] = (1, 1, 1)):
    """One equal-aspect axes without ticks or frame, at ``position`` (rows, columns, index)."""
    ax = fig.add_subplot(*position)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def _save(fig: Figure, path: str | os.PathLike[str] | None) -> None:
    if path is None:
        return
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    with atomic_write(path, "wb") as file:
        fig.savefig(file, format=fmt)


def _pick_per_cell(
    points: np.ndarray, grid: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray]:
    """Cut the map into square cells; for each occupied cell pick the point nearest its centre.

    Returns the picked point indices, their (column, row) cells, the grid origin, the cell side
    and the grid shape (columns, rows).
    """
    origin = points.min(axis=0)
    extent = np.ptp(points, axis=0)
    side = max(float(extent.max()), 1e-12) / grid
    shape = np.maximum(np.ceil(extent / side).astype(int), 1)
    cells = np.minimum(((points - origin) / side).astype(int), shape - 1)
    dist = (((cells + 0.5) * side + origin - points) ** 2).sum(axis=1)
    flat = cells[:, 1] * shape[0] + cells[:, 0]
    order = np.lexsort((dist, flat))
    _, first = np.unique(flat[order], return_index=True)
    chosen = order[first]
    return chosen, cells[chosen], origin, side, shape


def _mosaic(thumbs: np.ndarray, cells: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """RGBA image of the grid: each thumbnail in its cell with a transparent margin."""
    h, w = thumbs.shape[1:3]
    pad = max(1, min(h, w) // 10)
    ch, cw = h + 2 * pad, w + 2 * pad
    mosaic = np.zeros((shape[1] * ch, shape[0] * cw, 4), np.uint8)
    rgb = np.broadcast_to(thumbs, (*thumbs.shape[:3], 3))
    for (col, row), image in zip(cells, rgb, strict=True):
        top = (shape[1] - 1 - row) * ch + pad
        left = col * cw + pad
        mosaic[top : top + h, left : left + w, :3] = image
        mosaic[top : top + h, left : left + w, 3] = 255
    return mosaic
