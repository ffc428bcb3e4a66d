"""One process per output folder, and `explore --serve` serving the page alone."""

from __future__ import annotations

import http.server
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from picmap._folder_lock import LOCK_FILE
from picmap.cli import main
from picmap.explore.serve import page_only_handler

HOLD = (
    "import sys, time\n"
    "from picmap._folder_lock import exclusive_folder\n"
    "with exclusive_folder(sys.argv[1], 'a test holder'):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(120)\n"
)


def _picmap(*args: str) -> list[str]:
    return [sys.executable, "-m", "picmap", *args]


def _wait_for_holder(folder: Path, pid: int, timeout: float = 120) -> None:
    """Until the lock file names ``pid`` (the process holds the folder)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lock = folder / LOCK_FILE
        if lock.is_file() and f"pid {pid} " in lock.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} never took {folder}")


@pytest.fixture
def holder(tmp_path):
    """A live process holding tmp_path/run."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"held"
    yield run, proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("command", ["fit", "evaluate", "plot"])
def test_a_held_folder_is_refused_with_one_line_naming_it_and_the_holder(holder, command):
    run, proc = holder
    args = ["fit", "digits", "--out", str(run)] if command == "fit" else [command, str(run)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("picmap: error:")
    assert str(run) in lines[0]
    assert f"pid {proc.pid} " in lines[0]
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # nothing was written


def test_the_lock_of_a_killed_process_is_taken_over(holder):
    run, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert f"pid {proc.pid} " in (run / LOCK_FILE).read_text()  # the dead holder's line is left
    result = CliRunner().invoke(
        main, ["fit", "digits", "--out", str(run), "--epochs", "1,1,1", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert np.load(run / "embedding.npy").shape == (1797, 2)
    assert f"pid {proc.pid} " not in (run / LOCK_FILE).read_text()


@pytest.mark.slow
def test_two_fits_into_one_folder_one_refuses_the_other_finishes(tmp_path):
    run = tmp_path / "run"
    # Long enough (~30 s on 2 cores) that the second process starts while the first trains.
    first = subprocess.Popen(
        _picmap("fit", "digits", "--out", str(run), "--epochs", "60,5,30", "--quiet"),
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_holder(run, first.pid)
    second = subprocess.run(
        _picmap("fit", "digits", "--out", str(run), "--epochs", "1,1,1", "--seed", "7"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    still_training = first.poll() is None
    _, first_err = first.communicate(timeout=600)
    assert still_training, "the first fit ended before the second started; the test is moot"
    assert second.returncode == 1
    error = second.stderr.strip().splitlines()
    assert len(error) == 1 and str(run) in error[0] and f"pid {first.pid} " in error[0]
    assert first.returncode == 0, first_err
    # The first run's outputs are whole and its own: the refused one wrote nothing.
    assert json.loads((run / "run.json").read_text())["seed"] == 0
    assert json.loads((run / "metrics.json").read_text())["images"] == 1797
    assert np.load(run / "embedding.npy").shape == (1797, 2)
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture
def served(tmp_path):
    """A run folder with a page, a model and a checkpoint; its page served on localhost."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "explorer.html").write_text("<html>the map</html>")
    for name in ("model.safetensors", "config.json", "checkpoint.safetensors", "run.json"):
        (run / name).write_bytes(b"private")
    (tmp_path / "secret.txt").write_text("private")
    handler = page_only_handler(run / "explorer.html")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield run, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


@pytest.mark.parametrize("path", ["/", "/explorer.html", "/explorer.html?x=1"])
def test_serve_answers_the_page(served, path):
    run, base = served
    assert _get(base + path) == (200, b"<html>the map</html>")
    (run / "explorer.html").write_text("<html>rewritten</html>")
    assert _get(base + path) == (200, b"<html>rewritten</html>")


@pytest.mark.parametrize(
    "path",
    [
        "/model.safetensors",
        "/config.json",
        "/checkpoint.safetensors",
        "/run.json",
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/explorer.html/",
    ],
)
def test_serve_refuses_everything_else(served, path):
    _, base = served
    status, body = _get(base + path)
    assert status == 404
    assert b"private" not in body


def test_lock_file_is_not_a_stale_temporary_file(tmp_path):
    from picmap._io import remove_stale_temporary_files

    (tmp_path / LOCK_FILE).write_text("x")
    assert remove_stale_temporary_files(tmp_path) == []
    assert (tmp_path / LOCK_FILE).exists()
