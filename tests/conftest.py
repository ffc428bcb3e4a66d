"""Fixtures shared by the browser tests: one headless Chromium per test module."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest


def _unavailable(reason: str) -> None:
    """Skip locally, but fail in CI, where the browser tests must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true, so this is an error, not a skip)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if importlib.util.find_spec("playwright") is None:
        _unavailable("playwright is not installed: pip install playwright")
    chromium = shutil.which("chromium")
    if chromium is None:
        _unavailable("chromium not found: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        yield browser
        browser.close()
