"""The interactive map: one self-contained HTML file that works offline.

The page is a small hand-written canvas app (``page.html``, ``explorer.css``, ``explorer.js``,
all inlined into the output) rather than Bokeh, because it is smaller and much faster to open.
Measured with 100,000 points and 28×28 noise thumbnails (the worst case for compression) in
headless Chromium on a 2-core machine (``benchmarks/explorer_size.py``):

- this page: 74 MB, drawn 1.2-1.8 s after opening, 17-25 ms per pan/zoom frame;
- Bokeh 3.9 standalone (inline resources, WebGL) with one PNG data URI per point in its data
  source, the usual way to get hover images: 126 MB and 5-6 s to load, and legend toggling,
  copy/export and search would still need custom JavaScript;
- without images: 3.3 MB (with file names) and 0.6 s here; Bokeh's inline runtime alone makes
  a 3.5 MB page that takes 3.4 s.

The page draws points straight into a pixel buffer, which keeps 100,000 points smooth, and
finds the hovered point by a linear scan (about 1 ms).

Thumbnails are packed into 2048×2048 sprite atlases, each encoded once as JPEG (quality 85, no
chroma subsampling) and embedded as a data URI; the browser decodes an atlas only when a point
in it is first hovered. On natural 32×32 colour images that is about 420 bytes per thumbnail:
within 30 % of lossy WebP, but 10-20× faster to encode (100,000 thumbnails in under 2 s).
Thumbnail size is capped so large collections stay small: at most 128 px per side, shrinking
towards 32 px as the number of images grows.

Optional named lists of points (``lists=``, e.g. the outliers, likely label errors and
near-duplicates that ``picmap evaluate`` finds) become a "Show" control that highlights one
list's points.

Security: every user string (title, class names, file names, list names) travels inside a
``<script type="application/json">`` block with ``<``, ``>`` and ``&`` escaped as ``\\u003c``
etc., and the page shows it with ``textContent`` only. A Content-Security-Policy allows no
network access and only the page's own script (by hash), so even an injected inline handler
would not run.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .._io import write_text_atomic
from ..plot import (
    UNLABELLED_COLOR,
    _check_embedding,
    _check_images,
    _class_codes,
    _thumbnails,
    class_colors,
)

__all__ = ["SINGLE_FILE_UP_TO", "write_explorer"]

# The most points one explorer file is written for; larger maps are served as tiles
# (explore/tiles.py). With 28×28 noise thumbnails (the worst case) the file measured 74 MB and
# opened in 1.1 s at 100,000 points, 148 MB and 3.0 s at 200,000 (benchmarks/explorer_size.py,
# headless Chromium, 2 cores); past that it nears the 5-s mark a viewer should open within.
SINGLE_FILE_UP_TO = 200_000

ATLAS_PX = 2048
JPEG_QUALITY = 85
THUMBNAIL_PIXEL_BUDGET = 2**24  # thumbnail side = sqrt(budget / N), clipped to [32, 128]


def write_explorer(
    path: str | os.PathLike[str],
    Y: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    class_names: list[str] | None = None,
    file_names: list[str] | None = None,
    images: np.ndarray | torch.Tensor | None = None,
    lists: Mapping[str, Sequence[int]] | None = None,
    title: str = "picmap",
) -> Path:
    """Write an interactive HTML map of the embedding ``Y`` (N×2) to ``path``; return the path.

    Hovering a point shows its image (when ``images``, uint8 N×C×H×W, are given), label and file
    name; the legend hides and shows classes; Shift+drag lassoes points whose file names can be
    copied or exported; the search box highlights matching file names and labels. ``lists``
    maps a name (``"outliers"``) to point indices; the "Show" control highlights one list's
    points. Without ``file_names`` the page uses point indices (``#17``).
    """
    points = _check_embedding(Y)
    n = len(points)
    classes = _class_codes(labels, class_names, n)
    data: dict[str, Any] = {
        "title": str(title),
        "x": _base64(points[:, 0].astype("<f4").tobytes()),
        "y": _base64(points[:, 1].astype("<f4").tobytes()),
        "colors": [UNLABELLED_COLOR] if classes is None else class_colors(len(classes[1])),
        "codes": None if classes is None else classes[0].tolist(),
        "classNames": None if classes is None else classes[1],
        "names": _check_names(file_names, n),
        "thumbs": None if images is None else _atlases(_check_images(images, n)),
        "lists": _check_lists(lists, n),
    }
    write_text_atomic(path, _page("page.html", "explorer.js", str(title), data))
    return Path(path)


def _check_names(file_names: list[str] | None, n: int) -> list[str] | None:
    if file_names is None:
        return None
    names = [str(name) for name in file_names]
    if len(names) != n:
        raise ValueError(f"file_names has {len(names)} entries but Y has {n} points")
    return names


def _check_lists(lists: Mapping[str, Sequence[int]] | None, n: int) -> list[dict[str, Any]] | None:
    """Named lists as ``[{"name", "indices"}]``; every index must be a point of the map."""
    if not lists:
        return None
    checked = []
    for name, indices in lists.items():
        values = np.asarray(indices).reshape(-1)
        if values.size and not np.issubdtype(values.dtype, np.integer):
            raise TypeError(f"lists[{name!r}] must hold integer point indices, got {values.dtype}")
        if values.size and (values.min() < 0 or values.max() >= n):
            raise ValueError(
                f"lists[{name!r}] holds indices outside 0..{n - 1}; pass indices of points of Y"
            )
        checked.append({"name": str(name), "indices": values.tolist()})
    return checked


def _atlases(pixels: torch.Tensor) -> dict[str, Any]:
    """Pack the images, shrunk to thumbnails, into JPEG sprite atlases (data URIs). The images
    are read one atlas at a time, so a memory-mapped store is never read whole."""
    side = int(np.clip(np.sqrt(THUMBNAIL_PIXEL_BUDGET / len(pixels)), 32, 128))
    h, w = _thumbnails(pixels[:1], side).shape[1:3]
    per_row = ATLAS_PX // w
    per_atlas = per_row * (ATLAS_PX // h)
    urls = [
        _jpeg_url(_tile(_thumbnails(pixels[i : i + per_atlas], side), per_row))
        for i in range(0, len(pixels), per_atlas)
    ]
    return {"w": w, "h": h, "perRow": per_row, "perAtlas": per_atlas, "urls": urls}


def _tile(thumbs: np.ndarray, per_row: int) -> np.ndarray:
    """Lay N×H×W×C thumbnails out row by row, ``per_row`` to a row, as one H'×W'×C image."""
    n, h, w, c = thumbs.shape
    rows = -(-n // per_row)
    grid = np.zeros((rows * per_row, h, w, c), np.uint8)
    grid[:n] = thumbs
    return grid.reshape(rows, per_row, h, w, c).swapaxes(1, 2).reshape(rows * h, per_row * w, c)


def _jpeg_url(atlas: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(atlas[..., 0] if atlas.shape[-1] == 1 else atlas).save(
        buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0
    )
    return "data:image/jpeg;base64," + _base64(buffer.getvalue())


def _base64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _json_for_script(data: dict[str, Any]) -> str:
    """JSON that is safe inside a <script> element: no '<', '>' or '&' characters remain."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _page(template: str, script_name: str, title: str, data: dict[str, Any]) -> str:
    """Fill the page ``template`` with the shared legend script and ``script_name``, the styles
    and ``data``; inserted parts are never scanned for placeholders again."""
    script = _asset("legend.js") + "\n" + _asset(script_name)
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    parts = {
        "title": html.escape(title),
        "style": _asset("explorer.css"),
        "script": script,
        "script_hash": f"sha256-{digest}",
        "data": _json_for_script(data),
    }
    return re.sub(r"\{\{(\w+)\}\}", lambda match: parts[match.group(1)], _asset(template))


@cache
def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
