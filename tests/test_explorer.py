"""The explorer page: static checks of the HTML, and a real headless Chromium session."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from picmap.explore import write_explorer

EVIL_NAME = "<img src=x onerror=alert(1)>.png"
EVIL_CLASS = "<script>window.pwned=1</script>"
CLASS_NAMES = ["cats", EVIL_CLASS, "dogs"]
CENTRES = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
PER_CLASS = 40
RED = (220, 30, 40)
TARGET, EVIL = 7, 45  # a "cats" point with a red image; a class-1 point with a hostile name
EVIL_LIST = "<b onmouseover=alert(1)>odd ones</b>"
LISTS = {"outliers": [TARGET, 50], EVIL_LIST: [EVIL]}
ARTIFACTS = Path(__file__).parent / "artifacts"


def _dataset() -> dict:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), PER_CLASS)
    Y = CENTRES[labels] + rng.uniform(-2, 2, (len(labels), 2))
    images = rng.integers(0, 120, (len(labels), 3, 24, 24), dtype=np.uint8)
    images[TARGET] = np.array(RED, np.uint8)[:, None, None]
    names = [f"img_{i:03d}.png" for i in range(len(labels))]
    names[EVIL] = EVIL_NAME
    return dict(
        Y=Y, labels=labels, class_names=CLASS_NAMES, file_names=names, images=images, lists=LISTS
    )


@pytest.fixture(scope="module")
def data() -> dict:
    return _dataset()


@pytest.fixture(scope="module")
def page_path(tmp_path_factory, data) -> Path:
    return write_explorer(
        tmp_path_factory.mktemp("explorer") / "map.html", **data, title="<b>T</b>"
    )


def test_page_is_self_contained_and_escapes_user_strings(page_path):
    text = page_path.read_text(encoding="utf-8")
    assert not re.search(r"https?://", text)
    assert "\\u003cimg src=x onerror=alert(1)\\u003e.png" in text
    assert "\\u003cscript\\u003ewindow.pwned=1\\u003c/script\\u003e" in text
    assert EVIL_NAME not in text
    assert EVIL_CLASS not in text
    assert EVIL_LIST not in text
    assert '"name":"\\u003cb onmouseover=alert(1)\\u003eodd ones\\u003c/b\\u003e"' in text
    assert "<title>&lt;b&gt;T&lt;/b&gt;</title>" in text


def test_csp_allows_only_the_page_script(page_path):
    text = page_path.read_text(encoding="utf-8")
    script = re.search(r"<script>(.*?)</script>", text, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    policy = re.search(r'http-equiv="Content-Security-Policy"\s+content="([^"]*)"', text).group(1)
    assert "default-src 'none'" in policy
    assert f"script-src 'sha256-{digest}'" in policy


def test_no_file_names_or_images_still_writes(tmp_path):
    path = write_explorer(tmp_path / "plain.html", np.random.default_rng(0).normal(size=(10, 2)))
    assert '"names":null' in path.read_text(encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["plain.html"]


def test_rejects_mismatched_file_names(tmp_path):
    with pytest.raises(ValueError, match="file_names has 2 entries"):
        write_explorer(tmp_path / "x.html", np.zeros((3, 2)), file_names=["a", "b"])


def test_rejects_lists_that_are_not_point_indices(tmp_path):
    with pytest.raises(ValueError, match=r"lists\['outliers'\] holds indices outside 0..2"):
        write_explorer(tmp_path / "x.html", np.zeros((3, 2)), lists={"outliers": [0, 3]})
    with pytest.raises(TypeError, match="integer point indices"):
        write_explorer(tmp_path / "x.html", np.zeros((3, 2)), lists={"outliers": [0.5]})


# -- in the browser ----------------------------------------------------------------------------


class Session:
    """A loaded explorer page plus everything it reported: console errors and dialogs."""

    def __init__(self, browser, path: Path) -> None:
        self.context = browser.new_context(viewport={"width": 1000, "height": 700})
        self.context.grant_permissions(["clipboard-read", "clipboard-write"])
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", self._on_dialog)
        self.page.goto(path.as_uri())
        self.page.wait_for_function("() => window.picmap && window.picmap.ready")

    def _on_dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def to_page(self, x: float, y: float) -> tuple[float, float]:
        return tuple(self.page.evaluate("([x, y]) => window.picmap.toPage(x, y)", [x, y]))

    def hover(self, point: np.ndarray) -> int:
        self.page.mouse.move(*self.to_page(*point))
        return self.page.evaluate("window.picmap.hovered()")

    def text(self, selector: str) -> str:
        return self.page.locator(selector).text_content()

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=ARTIFACTS / f"explorer_{name}.png")


@pytest.fixture
def session(browser, page_path):
    session = Session(browser, page_path)
    yield session
    session.context.close()
    assert session.errors == []
    assert session.dialogs == []


@pytest.mark.browser
def test_loads_cleanly_and_hover_shows_thumbnail_label_and_name(session, data):
    assert session.errors == []
    assert session.page.evaluate("window.picmap.visibleCount()") == 3 * PER_CLASS
    assert session.hover(data["Y"][TARGET]) == TARGET
    assert session.page.locator("#tip").is_visible()
    assert session.text("#tip-label") == "cats"
    assert session.text("#tip-name") == f"img_{TARGET:03d}.png"
    centre = """() => {
      const c = document.getElementById("thumb");
      return Array.from(c.getContext("2d").getImageData(c.width / 2, c.height / 2, 1, 1).data);
    }"""
    session.page.wait_for_function(f"() => ({centre})()[3] === 255")
    pixel = session.page.evaluate(centre)
    assert np.abs(np.array(pixel[:3]) - RED).max() < 25
    session.screenshot("hover")


@pytest.mark.browser
def test_legend_click_hides_and_shows_a_class(session, data):
    cats = session.page.locator(".legend-item", has_text="cats")
    cats.click()
    assert session.page.evaluate("window.picmap.visibleCount()") == 2 * PER_CLASS
    assert session.hover(data["Y"][TARGET]) == -1
    assert session.page.locator("#tip").is_hidden()
    session.screenshot("legend_hidden")
    cats.click()
    assert session.page.evaluate("window.picmap.visibleCount()") == 3 * PER_CLASS
    assert session.hover(data["Y"][TARGET]) == TARGET


@pytest.mark.browser
def test_lasso_selection_exports_and_copies_file_names(session, data):
    x, y = CENTRES[2]  # the "dogs" cluster, all within ±2 of its centre
    corners = [session.to_page(x + dx, y + dy) for dx, dy in [(-3, -3), (3, -3), (3, 3), (-3, 3)]]
    mouse = session.page.mouse
    session.page.keyboard.down("Shift")
    mouse.move(*corners[0])
    mouse.down()
    for corner in [*corners[1:], corners[0]]:
        mouse.move(*corner, steps=8)
    mouse.up()
    session.page.keyboard.up("Shift")
    expected = [data["file_names"][i] for i in np.flatnonzero(data["labels"] == 2)]
    assert session.page.evaluate("window.picmap.selectedNames()") == expected
    session.screenshot("lasso")

    with session.page.expect_download() as download:
        session.page.click("#export")
    exported = Path(download.value.path()).read_text(encoding="utf-8")
    assert exported.splitlines() == expected
    assert download.value.suggested_filename == "picmap-selection.txt"

    session.page.click("#copy")
    copied = f"Copied {len(expected)} file names"
    session.page.wait_for_function(
        "(t) => document.getElementById('status').textContent === t", arg=copied
    )
    assert session.page.evaluate("navigator.clipboard.readText()").splitlines() == expected


@pytest.mark.browser
def test_search_highlights_matching_names_and_labels(session):
    session.page.fill("#search", "dogs")
    assert session.text("#match-count") == f"{PER_CLASS} matches"
    session.page.fill("#search", "IMG_00")
    assert session.text("#match-count") == "10 matches"
    session.screenshot("search")
    session.page.fill("#search", "")
    assert session.text("#match-count") == ""


@pytest.mark.browser
def test_hostile_names_show_as_text_and_run_nothing(session, data):
    assert session.hover(data["Y"][EVIL]) == EVIL
    assert session.text("#tip-name") == EVIL_NAME
    assert session.text("#tip-label") == EVIL_CLASS
    assert session.page.locator(".legend-item .name").all_text_contents() == CLASS_NAMES
    assert session.page.evaluate("document.querySelectorAll('img, #legend script').length") == 0
    assert session.page.evaluate("window.pwned") is None
    assert session.page.title() == "<b>T</b>"
    session.screenshot("hostile_names")


@pytest.mark.browser
def test_show_filter_highlights_a_list(session, data):
    page = session.page
    assert page.locator("#show-box").is_visible()
    options = page.locator("#show option").all_text_contents()
    assert options == ["all", "outliers (2)", f"{EVIL_LIST} (1)"]  # the hostile name as text
    assert page.evaluate("document.querySelectorAll('#show b').length") == 0
    assert page.evaluate("window.picmap.highlightedCount()") == 0

    page.select_option("#show", label="outliers (2)")
    assert page.evaluate("window.picmap.highlightedCount()") == 2
    assert session.hover(data["Y"][TARGET]) == TARGET
    assert session.text("#tip-lists") == "outliers"
    session.screenshot("show_filter")
    page.locator(".legend-item", has_text="cats").click()  # hides TARGET, keeps point 50
    assert page.evaluate("window.picmap.highlightedCount()") == 1
    page.fill("#search", "img_050")  # the filter and the search together
    assert page.evaluate("window.picmap.highlightedCount()") == 1
    page.fill("#search", "img_051")
    assert page.evaluate("window.picmap.highlightedCount()") == 0

    page.fill("#search", "")
    page.select_option("#show", label="all")
    assert page.evaluate("window.picmap.highlightedCount()") == 0


def test_atlases_read_in_chunks_equal_those_of_the_whole_array(monkeypatch):
    from picmap.explore import _atlases, _jpeg_url, _tile
    from picmap.plot import _thumbnails

    monkeypatch.setattr("picmap.explore.ATLAS_PX", 256)  # 2×2 thumbnails of 128 px per atlas
    pixels = torch.randint(0, 256, (30, 3, 200, 200), generator=torch.Generator().manual_seed(0))
    pixels = pixels.to(torch.uint8)
    chunked = _atlases(pixels)
    assert (chunked["w"], chunked["perAtlas"], len(chunked["urls"])) == (128, 4, 8)
    whole = _thumbnails(pixels, 128)  # every thumbnail shrunk at once, as before
    expected = [_jpeg_url(_tile(whole[i : i + 4], 2)) for i in range(0, 30, 4)]
    assert chunked["urls"] == expected
