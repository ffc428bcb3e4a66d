"""The served explorer, for maps too large for one file: tiles drawn on demand, images on hover.

The page (``tiles.html`` with ``tiles.js``) draws the map from 256-pixel PNG tiles, as web maps
do, so a pan or zoom frame costs a few image copies whatever the number of points. This
process draws each tile when first asked for: the points are sorted once into a grid of cells,
so a tile reads only the points that fall in it, and one tile of the whole map (a million
points) takes about 0.1 s. Each pixel shows the mean colour of the classes of its points, more
opaque where more points fall; zoomed in far enough, points grow to discs. The hovered point is
found here with a k-d tree, and its image is read from the store (memory-mapped for a packed
collection) and sent as a PNG: nothing is read into memory before it is shown.

Only ``127.0.0.1`` is listened on, and only the page, its tiles, point lookups and images are
answered. User strings (file and class names) travel as JSON and are shown with
``textContent``; the page's Content-Security-Policy allows only its own script (by hash) and
requests to this server.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import torch
from PIL import Image
from scipy.spatial import cKDTree

from ..plot import UNLABELLED_COLOR, _check_embedding, _check_images, _class_codes, class_colors
from . import _check_lists, _check_names, _page

TILE_PX = 256
GRID = 1024  # cells per side of the point index
MAX_ZOOM = 16
_TILE_CACHE = 4096  # tiles kept, as PNG bytes (a few MB)
_NEAR_CANDIDATES = 32  # nearest points checked for one that is shown
_THUMB_PX = 128


class TileMap:
    """A map's points indexed for tiles and hover look-ups; :meth:`serve` starts the server."""

    def __init__(
        self,
        Y: np.ndarray,
        *,
        labels: np.ndarray | None = None,
        class_names: list[str] | None = None,
        file_names: list[str] | None = None,
        images: np.ndarray | torch.Tensor | None = None,
        lists: Mapping[str, Sequence[int]] | None = None,
        title: str = "picmap",
    ) -> None:
        points = _check_embedding(Y)
        n = len(points)
        classes = _class_codes(labels, class_names, n)
        self.title = str(title)
        self.names = _check_names(file_names, n)
        self.images = None if images is None else _check_images(images, n)
        self.codes = np.zeros(n, np.int64) if classes is None else classes[0]
        self.class_names = None if classes is None else classes[1]
        hex_colors = [UNLABELLED_COLOR] if classes is None else class_colors(len(classes[1]))
        self.colors = hex_colors
        self.rgb = np.array([[int(h[i : i + 2], 16) for i in (1, 3, 5)] for h in hex_colors], float)
        self.lists = _check_lists(lists, n) or []
        self.list_members = [np.asarray(item["indices"], np.int64) for item in self.lists]
        # World coordinates: the map in the unit square, v pointing down as on screen.
        low, high = points.min(0), points.max(0)
        self.span = float(max(high - low).max() * 1.04 or 1.0)
        self.centre = (low + high) / 2
        world = (points - self.centre) / self.span * [1, -1] + 0.5
        cells = np.clip((world * GRID).astype(np.int64), 0, GRID - 1)
        keys = cells[:, 1] * GRID + cells[:, 0]
        self.order = np.argsort(keys, kind="stable")
        self.starts = np.searchsorted(keys[self.order], np.arange(GRID * GRID + 1))
        self.u, self.v = world[self.order, 0].copy(), world[self.order, 1].copy()
        self.sorted_codes = self.codes[self.order]
        self.tree = cKDTree(world)
        self.n = n
        self.tile = functools.lru_cache(maxsize=_TILE_CACHE)(self._draw_tile)

    # -- what the page asks for ----------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        """The page's start-up data: title, classes and their counts, lists, extent."""
        counts = np.bincount(self.codes, minlength=len(self.colors)).tolist()
        return {
            "title": self.title,
            "n": self.n,
            "tilePx": TILE_PX,
            "maxZoom": MAX_ZOOM,
            "centre": self.centre.tolist(),
            "span": self.span,
            "colors": self.colors,
            "classNames": self.class_names,
            "counts": counts,
            "lists": [
                {"name": item["name"], "count": len(m)}
                for item, m in zip(self.lists, self.list_members, strict=True)
            ],
            "images": self.images is not None,
        }

    def _draw_tile(self, z: int, tx: int, ty: int, hidden: frozenset[int], shown: int) -> bytes:
        """Tile ``(tx, ty)`` of zoom ``z`` as PNG bytes, without the ``hidden`` classes and with
        list ``shown`` (an index into the lists, or -1) drawn dark on top."""
        scale = TILE_PX * 2**z  # pixels per world unit
        radius = self._radius(z)
        margin = (radius + 1) / scale
        u0, v0 = tx / 2**z, ty / 2**z
        rows = self._rows_in(
            u0 - margin, v0 - margin, u0 + 1 / 2**z + margin, v0 + 1 / 2**z + margin
        )
        if hidden and len(rows):
            rows = rows[~np.isin(self.sorted_codes[rows], list(hidden))]
        px = np.floor((self.u[rows] - u0) * scale).astype(np.int64)
        py = np.floor((self.v[rows] - v0) * scale).astype(np.int64)
        rgba = _splat(px, py, self.rgb[self.sorted_codes[rows]], radius)
        if shown >= 0:
            members = np.isin(self.order[rows], self.list_members[shown])
            dark = np.full((int(members.sum()), 3), 17.0)
            marks = _splat(px[members], py[members], dark, radius + 1, solid=True)
            rgba = np.where(marks[..., 3:] > 0, marks, rgba)
        buffer = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    def _radius(self, z: int) -> int:
        """Point radius in pixels at zoom ``z``: 0 (one pixel) while points are dense, then 1-2."""
        per_pixel = self.n / (TILE_PX * 2**z) ** 2
        return 0 if per_pixel > 0.02 else 1 if per_pixel > 0.002 else 2

    def _rows_in(self, u0: float, v0: float, u1: float, v1: float) -> np.ndarray:
        """Positions (in the sorted order) of the points in the cells that the box touches."""
        c0, r0 = (max(0, min(GRID - 1, math.floor(c * GRID))) for c in (u0, v0))
        c1, r1 = (max(0, min(GRID - 1, math.floor(c * GRID))) for c in (u1, v1))
        firsts = self.starts[np.arange(r0, r1 + 1) * GRID + c0]
        lasts = self.starts[np.arange(r0, r1 + 1) * GRID + c1 + 1]
        if c0 == 0 and c1 == GRID - 1:  # whole rows are contiguous
            return np.arange(firsts[0], lasts[-1])
        return np.concatenate([np.arange(a, b) for a, b in zip(firsts, lasts, strict=True)])

    def near(self, x: float, y: float, radius: float, hidden: frozenset[int]) -> dict | None:
        """The shown point nearest to world position ``(x, y)`` within ``radius``, or None."""
        count = min(_NEAR_CANDIDATES, self.n)
        distances, found = self.tree.query([x, y], count, distance_upper_bound=radius)
        for distance, i in zip(np.atleast_1d(distances), np.atleast_1d(found), strict=True):
            if not math.isfinite(distance):
                break
            if int(self.codes[i]) not in hidden:
                return self.point(int(i))
        return None

    def point(self, i: int) -> dict[str, Any]:
        """What the tooltip shows of point ``i``."""
        return {
            "index": i,
            "label": None if self.class_names is None else self.class_names[self.codes[i]],
            "name": self.names[i] if self.names is not None else f"#{i}",
            "lists": [
                item["name"]
                for item, m in zip(self.lists, self.list_members, strict=True)
                if i in m
            ],
        }

    def thumbnail(self, i: int) -> bytes:
        """Image ``i`` as PNG bytes, enlarged (nearest neighbour) to about 128 pixels."""
        pixels = self.images[i].permute(1, 2, 0).numpy()
        image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        factor = max(1, _THUMB_PX // max(image.size))
        image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    def page(self) -> str:
        """The page: ``tiles.html`` with its script and the styles inlined."""
        return _page("tiles.html", "tiles.js", self.title, self.meta())

    @contextlib.contextmanager
    def serve(self, port: int = 0) -> Iterator[str]:
        """Serve on ``127.0.0.1:port`` (0: any free port) in a thread; yields the page's URL."""
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()
            server.server_close()


def _splat(
    px: np.ndarray, py: np.ndarray, colors: np.ndarray, radius: int, solid: bool = False
) -> np.ndarray:
    """An RGBA tile of points at pixels ``(px, py)``: discs of ``radius``, each pixel the mean
    colour of its points and more opaque the more there are (opaque with ``solid``)."""
    offsets = [
        (dx, dy)
        for dx in range(-radius, radius + 1)
        for dy in range(-radius, radius + 1)
        if dx * dx + dy * dy <= radius * radius + radius
    ]
    size = TILE_PX * TILE_PX
    counts = np.zeros(size)
    sums = np.zeros((3, size))
    for dx, dy in offsets:
        x, y = px + dx, py + dy
        inside = (x >= 0) & (x < TILE_PX) & (y >= 0) & (y < TILE_PX)
        flat = (y * TILE_PX + x)[inside]
        counts += np.bincount(flat, minlength=size)
        for c in range(3):
            sums[c] += np.bincount(flat, weights=colors[inside, c], minlength=size)
    rgba = np.zeros((size, 4), np.uint8)
    drawn = counts > 0
    rgba[drawn, :3] = (sums[:, drawn] / counts[drawn]).T.round()
    alpha = 1.0 if solid else 1 - np.exp(-0.8 * counts[drawn])
    rgba[drawn, 3] = np.round(255 * alpha)
    return rgba.reshape(TILE_PX, TILE_PX, 4)


def _handler(tiles: TileMap) -> type[http.server.BaseHTTPRequestHandler]:
    """Answers ``/``, ``/tile/Z/X/Y.png``, ``/near``, ``/thumb/I.png`` (and ``/favicon.ico``
    with nothing); 404 for anything else."""

    class TileRequests(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {key: values[-1] for key, values in parse_qs(url.query).items()}
            parts = url.path.strip("/").split("/")
            try:
                if url.path == "/":
                    self._send(tiles.page().encode("utf-8"), "text/html; charset=utf-8")
                elif url.path == "/favicon.ico":  # browsers ask; there is none
                    self.send_response(204)
                    self.end_headers()
                elif parts[0] == "tile" and len(parts) == 4 and parts[3].endswith(".png"):
                    z, tx, ty = int(parts[1]), int(parts[2]), int(parts[3][:-4])
                    if not (0 <= z <= MAX_ZOOM and 0 <= tx < 2**z and 0 <= ty < 2**z):
                        raise ValueError("tile out of range")
                    shown = int(query.get("list", -1))
                    if not -1 <= shown < len(tiles.lists):
                        raise ValueError("no such list")
                    png = tiles.tile(z, tx, ty, _hidden(query), shown)
                    self._send(png, "image/png", cache=True)
                elif url.path == "/near":
                    x, y, r = (float(query[key]) for key in ("x", "y", "r"))
                    found = tiles.near(x, y, r, _hidden(query))
                    self._send(json.dumps(found).encode("utf-8"), "application/json")
                elif parts[0] == "thumb" and len(parts) == 2 and tiles.images is not None:
                    i = int(parts[1].removesuffix(".png"))
                    if not 0 <= i < tiles.n:
                        raise ValueError("no such image")
                    self._send(tiles.thumbnail(i), "image/png", cache=True)
                else:
                    self.send_error(404, "not part of the map")
            except (KeyError, ValueError):
                self.send_error(400, "malformed request")

        def _send(self, body: bytes, kind: str, cache: bool = False) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per tile would drown the terminal

    return TileRequests


def _hidden(query: dict[str, str]) -> frozenset[int]:
    text = query.get("hide", "")
    return frozenset(int(c) for c in text.split(",") if c) if text else frozenset()
