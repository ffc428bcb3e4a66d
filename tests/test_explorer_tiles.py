"""The served explorer for large maps: its tiles and look-ups, and a real headless Chromium."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from picmap.explore.tiles import TILE_PX, TileMap

CENTRES = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
PER_CLASS = 300
NAMES = ["cats", "<script>window.pwned=1</script>", "dogs"]
TARGET = 7  # a "cats" point, alone at the map's corner, with a red image
RED = (220, 30, 40)


@pytest.fixture(scope="module")
def data() -> dict:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), PER_CLASS)
    Y = CENTRES[labels] + rng.uniform(-2, 2, (len(labels), 2))
    Y[TARGET] = [-4.0, -4.0]
    images = rng.integers(0, 120, (len(labels), 3, 12, 12), dtype=np.uint8)
    images[TARGET] = np.array(RED, np.uint8)[:, None, None]
    names = [f"img_{i:04d}.png" for i in range(len(labels))]
    return dict(Y=Y, labels=labels, class_names=NAMES, file_names=names, images=images)


@pytest.fixture(scope="module")
def tiles(data) -> TileMap:
    return TileMap(**data, lists={"odd": [TARGET]}, title="<b>T</b>")


def _png(raw: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGBA"))


def test_the_whole_map_tile_holds_every_point_in_its_class_colour(tiles, data):
    tile = _png(tiles.tile(0, 0, 0, frozenset(), -1))
    assert tile.shape == (TILE_PX, TILE_PX, 4)
    u = (data["Y"][:, 0] - tiles.centre[0]) / tiles.span + 0.5
    v = 0.5 - (data["Y"][:, 1] - tiles.centre[1]) / tiles.span
    px, py = (np.floor(c * TILE_PX).astype(int) for c in (u, v))
    assert (tile[py, px, 3] > 0).all()
    # A pixel where only one class lies has that class's colour.
    r, g, b = tile[py[TARGET], px[TARGET], :3]
    expected = tiles.rgb[0]
    assert np.abs(np.array([r, g, b]) - expected).max() <= 1
    drawn = np.count_nonzero(tile[..., 3])
    assert drawn < TILE_PX * TILE_PX / 4  # empty space stays transparent


def test_tiles_of_one_zoom_level_together_show_what_the_level_above_shows(tiles):
    whole = _png(tiles.tile(1, 0, 0, frozenset(), -1))[..., 3] > 0
    parts = [_png(tiles.tile(2, x, y, frozenset(), -1))[..., 3] > 0 for y in (0, 1) for x in (0, 1)]
    top = np.vstack([np.hstack(parts[:2]), np.hstack(parts[2:])])
    # Each point of the quarter lies in the enlarged image where the level-1 tile has one.
    shrunk = top.reshape(TILE_PX, 2, TILE_PX, 2).any(axis=(1, 3))
    assert (shrunk <= np.roll(whole, 0)).mean() > 0.98
    assert shrunk.sum() > 0


def test_hidden_classes_and_lists_change_the_tiles(tiles):
    everything = _png(tiles.tile(0, 0, 0, frozenset(), -1))
    no_cats = _png(tiles.tile(0, 0, 0, frozenset({0}), -1))
    assert np.count_nonzero(no_cats[..., 3]) < np.count_nonzero(everything[..., 3])
    marked = _png(tiles.tile(0, 0, 0, frozenset(), 0))
    assert (marked[..., :3].sum(axis=2) < 60).any()  # the list's point, dark
    assert not (everything[..., :3].sum(axis=2)[everything[..., 3] > 0] < 60).any()


def test_near_finds_the_nearest_shown_point(tiles, data):
    u, v = tiles.tree.data[TARGET]
    assert tiles.near(u, v, 0.01, frozenset())["index"] == TARGET
    assert tiles.near(u, v, 0.01, frozenset({0})) is None  # its class hidden
    assert tiles.near(u + 0.5, v, 0.001, frozenset()) is None  # nothing that close
    point = tiles.point(TARGET)
    assert point == {"index": TARGET, "label": "cats", "name": "img_0007.png", "lists": ["odd"]}


def test_the_server_answers_only_the_map(tiles):
    with tiles.serve() as url:
        page = urllib.request.urlopen(url).read().decode()
        assert "<title>&lt;b&gt;T&lt;/b&gt;</title>" in page
        assert NAMES[1] not in page  # escaped in the JSON block
        thumb = _png(urllib.request.urlopen(f"{url}thumb/{TARGET}.png").read())
        assert thumb.shape[0] >= 96 and np.abs(thumb[0, 0, :3] - RED).max() == 0
        near = json.loads(urllib.request.urlopen(f"{url}near?x=0.5&y=0.5&r=1").read())
        assert set(near) == {"index", "label", "name", "lists"}
        for bad in ("model.safetensors", "tile/1/5/0.png", "thumb/99999.png", "near?x=1", "../"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(url + bad)
            assert err.value.code in (400, 404)


@pytest.fixture
def page(browser, tiles):
    context = browser.new_context(viewport={"width": 900, "height": 700})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    with tiles.serve() as url:
        page.goto(url)
        page.wait_for_function("() => window.picmap && window.picmap.ready")
        yield page
        assert not page.evaluate("window.pwned === 1")
        context.close()  # before the server stops: tiles may still be on their way
    assert errors == []


def _hover(page, point) -> int:
    page.mouse.move(*page.evaluate("([x, y]) => window.picmap.toPage(x, y)", list(point)))
    page.wait_for_function("() => !document.getElementById('tip').hidden", timeout=5000)
    return page.evaluate("window.picmap.hovered()")


@pytest.mark.browser
def test_hover_shows_the_right_image_label_and_name(page, data):
    assert _hover(page, data["Y"][TARGET]) == TARGET
    assert page.locator("#tip-label").text_content() == "cats"
    assert page.locator("#tip-name").text_content() == "img_0007.png"
    page.wait_for_function("() => document.getElementById('thumb').complete")
    pixel = page.evaluate(
        """() => {
          const img = document.getElementById("thumb");
          const c = document.createElement("canvas");
          c.width = img.naturalWidth; c.height = img.naturalHeight;
          const g = c.getContext("2d");
          g.drawImage(img, 0, 0);
          return Array.from(g.getImageData(c.width / 2, c.height / 2, 1, 1).data);
        }"""
    )
    assert np.abs(np.array(pixel[:3]) - RED).max() < 3


@pytest.mark.browser
def test_panning_and_zooming_keep_points_under_the_pointer(page, data):
    canvas = page.locator("#map").bounding_box()
    centre = (canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2)
    page.mouse.move(*centre)
    page.mouse.down()
    page.mouse.move(centre[0] + 80, centre[1] + 40, steps=4)
    page.mouse.up()
    x, y = page.evaluate("([x, y]) => window.picmap.toPage(x, y)", CENTRES[0].tolist())
    page.evaluate("([x, y]) => window.picmap.zoomAt(x, y, 1.5)", [x - canvas["x"], y - canvas["y"]])
    page.wait_for_function("() => window.picmap.ready")
    on_page = np.array(
        page.evaluate("(ps) => ps.map(([x, y]) => window.picmap.toPage(x, y))", data["Y"].tolist())
    )
    inside = (on_page[:, 0] > canvas["x"] + 50) & (
        on_page[:, 0] < canvas["x"] + canvas["width"] - 50
    )
    inside &= (on_page[:, 1] > canvas["y"] + 50) & (
        on_page[:, 1] < canvas["y"] + canvas["height"] - 50
    )
    assert 0 < inside.sum() < len(inside)  # zoomed in: some points are off the page
    other = int(np.flatnonzero(inside)[0])
    found = _hover(page, data["Y"][other])
    assert np.linalg.norm(on_page[found] - on_page[other]) <= 6  # within the hover distance
    times = page.evaluate("window.picmap.frameTimes(5)")
    assert len(times["pan"]) == len(times["zoom"]) == 5


@pytest.mark.browser
def test_legend_hides_a_class_from_tiles_and_hover(page, data):
    page.locator(".legend-item", has_text="cats").click()
    page.wait_for_function("() => window.picmap.ready")
    page.mouse.move(
        *page.evaluate("([x, y]) => window.picmap.toPage(x, y)", list(data["Y"][TARGET]))
    )
    page.wait_for_timeout(300)
    assert page.evaluate("window.picmap.hovered()") == -1
    assert page.locator("#tip").is_hidden()
    assert page.locator(".legend-item", has_text="script").text_content().startswith(NAMES[1])
