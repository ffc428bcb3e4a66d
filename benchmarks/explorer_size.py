"""Size, write time and Chromium load/redraw time of explorer pages with 10k and 100k points.

The thumbnails are random noise (28×28 grey), the worst case for image compression; real
photos and digits compress several times better. Run: ``python benchmarks/explorer_size.py``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from picmap.explore import write_explorer

SIZES = (10_000, 100_000, 200_000)

# Average time per frame over 20 wheel zooms, each waiting for the next animation frame.
REDRAW_JS = """async () => {
  const canvas = document.getElementById("map");
  const t0 = performance.now();
  for (let k = 0; k < 20; k++) {
    const deltaY = k % 2 ? 60 : -60;
    canvas.dispatchEvent(new WheelEvent("wheel", {deltaY, clientX: 300, clientY: 300}));
    await new Promise((resolve) => requestAnimationFrame(resolve));
  }
  return (performance.now() - t0) / 20;
}"""


def make_page(folder: Path, n: int) -> tuple[Path, float]:
    """Write an explorer for ``n`` random points in 10 classes; return its path and write time."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n)
    centres = rng.normal(size=(10, 2)) * 10
    Y = centres[labels] + rng.normal(size=(n, 2))
    images = rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
    names = [f"images/{i:06d}.png" for i in range(n)]
    start = time.perf_counter()
    path = write_explorer(
        folder / f"explorer_{n}.html", Y, labels=labels, file_names=names, images=images
    )
    return path, time.perf_counter() - start


def browser_times(path: Path) -> tuple[float, float] | None:
    """Seconds until the map is drawn, and ms per redraw, in headless Chromium (if available)."""
    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if chromium is None:
        return None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        start = time.perf_counter()
        page.goto(path.as_uri())
        page.wait_for_function("() => window.picmap && window.picmap.ready", timeout=120_000)
        load = time.perf_counter() - start
        redraw = page.evaluate(REDRAW_JS)
        browser.close()
    return load, redraw


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for n in SIZES:
            path, write = make_page(Path(tmp), n)
            size = path.stat().st_size / 1e6
            line = f"{n:>7,} points: {size:6.1f} MB, written in {write:4.1f} s"
            times = browser_times(path)
            if times is not None:
                line += f", loads in {times[0]:4.1f} s, {times[1]:5.1f} ms per redraw"
            print(line, flush=True)


if __name__ == "__main__":
    main()
