"""Faults: hostile folders, kills and resumes, numerical faults, full disks, tampered files.

What these tests hold picmap to: a bad input gets a clear one-line message naming it, or the
image is used, or it is skipped with a warning that lists it — never a crash or a hang; a run
killed at any moment resumes to the very map an uninterrupted run makes; no file picmap
leaves behind is ever half-written; and no file picmap reads can run code.
"""

from __future__ import annotations

import ast
import csv
import errno
import io
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

from picmap import TSimCNE, datasets
from picmap._io import read_safetensors
from picmap.cli import main
from picmap.data.sources import to_store
from picmap.model import EmbeddingNet, make_backbone
from picmap.train import CHECKPOINT_FILE, DivergedError, Interrupted, Stage, TrainConfig, Trainer

SRC = Path(__file__).resolve().parents[1] / "src" / "picmap"
FIT_TINY = ["--epochs", "1,1,1", "--batch-size", "8", "--quiet", "--device", "cpu"]
NON_UTF8 = os.fsdecode(b"caf\xe9.png")  # Latin-1 "café": not valid UTF-8
NON_UTF8_SHOWN = "caf\ufffd.png"  # how picmap writes and shows it
ODD_NAME = 'comma, "quote"\nnewline.png'
RNG = np.random.default_rng(0)
POSIX = pytest.mark.skipif(os.name != "posix", reason="needs POSIX file names, FIFOs, signals")


def _noise(width: int = 12, height: int = 12) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _bomb_png(side: int = 100_000) -> bytes:
    """A valid 8×8 PNG whose header claims ``side × side`` pixels."""
    raw = bytearray(_encoded(Image.new("L", (8, 8)), "PNG"))
    ihdr = struct.pack(">II", side, side) + bytes(raw[24:29])
    raw[16:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(raw)


def _explorer_data(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    assert text.rstrip().endswith("</html>")
    found = re.search(
        r'<script type="application/json" id="picmap-data">(.*?)</script>', text, re.S
    )
    return json.loads(found.group(1))


def _assert_complete(out: Path) -> int:
    """Check that every file in ``out`` is whole and parseable; return how many are temporary."""
    temporary = 0
    for path in out.iterdir():
        suffix = path.suffix
        if suffix == ".tmp":
            temporary += 1
        elif suffix == ".safetensors":
            read_safetensors(path, "")
        elif suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif suffix == ".png":
            with Image.open(path) as image:
                image.load()
        elif suffix == ".npy":
            assert np.isfinite(np.load(path, allow_pickle=False)).all()
        elif suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as handle:
                assert list(csv.DictReader(handle))
        elif suffix == ".html":
            _explorer_data(path)
    return temporary


def _fit(source: Path | str, out: Path, *extra: str):
    return CliRunner().invoke(main, ["fit", str(source), "--out", str(out), *FIT_TINY, *extra])


def _one_error_line(output: str) -> str:
    """The CLI's error: exactly one ``picmap: error:`` line and no traceback."""
    errors = [line for line in output.splitlines() if line.startswith("picmap: error:")]
    assert len(errors) == 1, output
    assert "Traceback" not in output
    return errors[0]


# -- hostile folders ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory) -> tuple[Path, dict[str, set[str]]]:
    """A flat folder of every kind of awkward file, and what should happen to each."""
    root = tmp_path_factory.mktemp("hostile")
    used: dict[str, Image.Image | bytes] = {f"rgb_{i}.png": _noise() for i in range(6)}
    deep = (np.arange(144, dtype=np.uint16).reshape(12, 12) * 450).astype(np.uint16)
    palette = Image.new("P", (12, 12), 3)
    palette.putpalette([v % 256 for v in range(768)])
    frames = [_noise() for _ in range(3)]
    used |= {
        "gray.png": Image.new("L", (12, 12), 90),
        "deep_16bit.png": Image.fromarray(deep),
        "bilevel.png": Image.new("1", (12, 12), 1),
        "cmyk.jpg": Image.new("CMYK", (12, 12), (0, 255, 255, 0)),
        "palette.png": palette,
        "palette_transparent.gif": _encoded(palette, "GIF", transparency=3),
        "rgba.png": Image.new("RGBA", (12, 12), (255, 0, 0, 100)),
        "la.png": Image.new("LA", (12, 12), (40, 200)),
        "animated.gif": _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "float.tif": Image.fromarray(RNG.random((12, 12), dtype=np.float32)),
        "big_16x16.png": _noise(16, 16),
        "small_8x8.png": _noise(8, 8),
        "wide_14x10.jpg": _noise(14, 10),
        "UPPER.PNG": _noise(),
        "png_named.jpg": _encoded(_noise(), "PNG"),
        NON_UTF8: _noise(),
        ODD_NAME: _noise(),
    }
    good = _encoded(_noise(16, 16), "PNG")
    skipped = {
        "empty.png": b"",
        "truncated.png": good[: len(good) // 2],
        "truncated.jpg": _encoded(_noise(16, 16), "JPEG")[:200],
        "text.jpg": b"hello, I am not a picture",
        "bomb.png": _bomb_png(),
    }
    ignored = {
        ".hidden.png": _noise(),
        "._rgb_0.png": b"\0\5\0",
        ".DS_Store": b"\0\1",
        "a.txt": b"x",
    }
    for name, content in {**used, **skipped, **ignored}.items():
        if isinstance(content, Image.Image):
            content.save(root / name, Image.registered_extensions()[Path(name).suffix.lower()])
        else:
            (root / name).write_bytes(content)
    os.mkfifo(root / "fifo.png")  # opening it for reading would wait forever
    (root / "dangling.png").symlink_to("missing.png")
    (root / "self_loop.png").symlink_to("self_loop.png")
    (root / "link.png").symlink_to("rgb_0.png")
    (root / "loop").symlink_to(".", target_is_directory=True)  # a folder symlink loop
    (root / "folder.png").mkdir()
    (root / ".thumbnails").mkdir()
    _noise().save(root / ".thumbnails" / "hidden_folder.png")
    return root, {
        "used": set(used) - {NON_UTF8} | {NON_UTF8_SHOWN, "link.png"},
        "skipped": set(skipped) | {"fifo.png", "dangling.png", "self_loop.png"},
        "ignored": set(ignored) | {"hidden_folder.png", "folder.png"},
    }


@POSIX
def test_to_store_uses_or_skips_every_hostile_file(hostile_folder):
    root, names = hostile_folder
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = to_store(root, verbose=False)
    assert {Path(name).name for name in store.file_names} == names["used"]
    assert len(store) == len(names["used"]) and store.channels == 3 and store.image_size == 12
    assert store.labels is None  # a flat folder: the folder symlink loop added no class
    assert len(caught) == 1
    message = str(caught[0].message)
    assert all(f"{name}:" in message for name in names["skipped"])
    assert f"skipped {len(names['skipped'])} of" in message
    for name in names["used"] | names["ignored"]:
        assert f"{os.sep}{name}:" not in message


@POSIX
def test_cli_fits_a_hostile_folder_and_keeps_every_name(hostile_folder, tmp_path):
    root, names = hostile_folder
    out = tmp_path / "run"
    result = _fit(root, out)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    warning = result.output[result.output.index("picmap: warning: skipped") :]
    assert all(name in warning for name in names["skipped"])
    with open(out / "embedding.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {Path(row["file"]).name for row in rows} == names["used"]  # newline and quotes too
    page = _explorer_data(out / "explorer.html")
    assert {Path(name).name for name in page["names"]} == names["used"]
    assert _assert_complete(out) == 0
    assert not (out / CHECKPOINT_FILE).exists()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("empty", "empty|no image files"),
        ("hidden_only", "no image files"),
        ("unreadable_only", "no readable image"),
        ("one_image", "at least 2"),
    ],
)
@POSIX
def test_folders_without_enough_images_are_one_clear_error(tmp_path, case, expected):
    folder = tmp_path / "data"
    folder.mkdir()
    if case == "hidden_only":
        _noise().save(folder / ".hidden.png")
    elif case == "unreadable_only":
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        os.mkfifo(folder / "fifo.jpg")
    elif case == "one_image":
        _noise().save(folder / "only.png")
    result = _fit(folder, tmp_path / "out")
    assert result.exit_code == 1
    line = _one_error_line(result.output)
    assert re.search(expected, line), line


@POSIX
def test_one_class_folder_is_fine_and_keeps_its_class(tmp_path):
    """One class sub-folder (named in Latin-1): every label is that class; kNN is not scored."""
    folder = os.path.join(os.fsencode(tmp_path / "data"), b"chats-\xe0-poils")
    os.makedirs(folder)
    for i in range(10):
        _noise().save(os.path.join(folder, f"{i}.png".encode()))
    result = _fit(tmp_path / "data", tmp_path / "out")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "out" / "embedding.csv", newline="", encoding="utf-8") as handle:
        labels = {row["label"] for row in csv.DictReader(handle)}
    assert labels == {"chats-\ufffd-poils"}
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["knn_accuracy"] is None and "classes" in metrics["note"]
    assert _explorer_data(tmp_path / "out" / "explorer.html")["classNames"] == [*labels]
    assert _assert_complete(tmp_path / "out") == 0


# -- kills and resumes --------------------------------------------------------------------------

EPOCHS = (5, 3, 4)
STEPS = 8  # 512 images / batch 64
DONE = sum(EPOCHS) * STEPS  # training is over: outputs are being written
# Where the kills go: a random global step in [low, high]; then either a random moment soon
# after, or (mid_write) the moment a file is being written.
KILL_WINDOWS = [  # (low, high, mid_write)
    *[(9, 13, False), (17, 21, False), (25, 29, True), (33, 37, False)],  # stage 1: steps 0-39
    *[(41, 45, False), (49, 53, False)],  # stage 2: steps 40-63
    *[(66, 70, False), (74, 78, True), (82, 86, False), (89, 93, False)],  # stage 3: 64-95
    (DONE, DONE, True),
]


def _progress(out: Path) -> dict | None:
    """The position in the checkpoint, or None while there is none (reading also checks it)."""
    path = out / CHECKPOINT_FILE
    try:
        _, meta = read_safetensors(path, "")
    except ValueError:
        if path.exists():
            raise  # a checkpoint that is there must always be whole
        return None
    return json.loads(meta["progress"])


def _position(progress: dict) -> int:
    return (sum(EPOCHS[: progress["stage"]]) + progress["epoch"]) * STEPS + progress["step"]


def _stage_of(position: int) -> int:
    """0, 1, 2 for the stages, 3 once training is done."""
    return sum(position >= sum(EPOCHS[: s + 1]) * STEPS for s in range(3))


def _wait_for_writing(proc: subprocess.Popen, out: Path, timeout: float = 5) -> None:
    """Busy-wait until the run is writing a file in ``out`` (a temporary file exists)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if any(name.endswith(".tmp") for name in os.listdir(out)):
            return


def _wait_for(proc: subprocess.Popen, out: Path, target: int, timeout: float = 120) -> bool:
    """Wait until the run's checkpoint reaches ``target``; False when the run ended first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        progress = _progress(out)
        if progress is not None and _position(progress) >= target:
            return True
        assert time.monotonic() < deadline, f"no progress to step {target} in {timeout} s"
        time.sleep(0.02)
    return False


@pytest.mark.slow
@POSIX
def test_killed_runs_resume_to_the_same_map(tmp_path):
    """SIGKILL at random moments in every stage and while writing outputs, one Ctrl-C and one
    SIGTERM; then the resumed run's losses and map equal an uninterrupted run with the same seed."""
    started = time.monotonic()
    images, labels = datasets.load("digits")
    source = tmp_path / "digits.npz"
    np.savez(source, images=images[:512], labels=labels[:512])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    epochs = ",".join(map(str, EPOCHS))

    def start(out: Path, resume: bool) -> subprocess.Popen:
        command = [sys.executable, "-m", "picmap", "fit", str(source), "--out", str(out)]
        command += ["--epochs", epochs, "--batch-size", "64", "--device", "cpu", "--seed", "3"]
        # A checkpoint after every step: stage 2's steps are so fast that on a quick machine a
        # timed interval could skip the whole stage, and no kill would land in it.
        command += ["--backbone", "small", "--checkpoint-every", "0", "--quiet"]
        with open(out.with_suffix(".stderr"), "a") as log:
            return subprocess.Popen(command + ["--resume"] * resume, env=env, stderr=log)

    (tmp_path / "straight").mkdir()
    straight = start(tmp_path / "straight", resume=False)  # the reference, on the other core
    out = tmp_path / "killed"
    out.mkdir()
    rng = random.Random(0)
    proc = start(out, resume=False)
    assert _wait_for(proc, out, rng.randint(2, 6))
    proc.send_signal(signal.SIGINT)  # Ctrl-C: save a checkpoint and exit 130
    assert proc.wait(timeout=60) == 130
    assert "checkpoint saved" in out.with_suffix(".stderr").read_text()
    resumed_at = [_position(_progress(out))]
    proc = start(out, resume=True)
    assert _wait_for(proc, out, resumed_at[0] + rng.randint(2, 4))
    proc.send_signal(signal.SIGTERM)  # as torchrun or a batch scheduler stops a run
    assert proc.wait(timeout=60) == 130
    assert out.with_suffix(".stderr").read_text().count("checkpoint saved") == 2
    resumed_at.append(_position(_progress(out)))
    kills, temporary = 0, 0
    for low, high, mid_write in KILL_WINDOWS:
        proc = start(out, resume=True)
        reached = _wait_for(proc, out, rng.randint(low, high))
        if mid_write:
            _wait_for_writing(proc, out)
        else:
            time.sleep(rng.uniform(0, 0.15))
        if reached and proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait(timeout=60)
        temporary += _assert_complete(out)  # nothing half-written, whatever the moment
        progress = _progress(out)
        resumed_at.append(None if progress is None else _position(progress))
    if proc.returncode != 0:
        proc = start(out, resume=True)
    assert proc.wait(timeout=300) == 0 and straight.wait(timeout=300) == 0
    assert _assert_complete(out) == 0  # the stale temporary files were cleared on resume
    assert not (out / CHECKPOINT_FILE).exists()
    assert "Traceback" not in out.with_suffix(".stderr").read_text()
    assert kills >= 10
    assert {0, 1, 2} <= {_stage_of(p) for p in resumed_at if p is not None}, resumed_at
    losses = json.loads((out / "metrics.json").read_text())["loss_per_epoch"]
    reference = json.loads((tmp_path / "straight" / "metrics.json").read_text())["loss_per_epoch"]
    assert [len(stage) for stage in losses] == list(EPOCHS)
    assert np.allclose(np.concatenate(losses), np.concatenate(reference), rtol=1e-5)
    Y = np.load(out / "embedding.npy")
    assert np.allclose(Y, np.load(tmp_path / "straight" / "embedding.npy"), atol=1e-4)
    print(
        f"\n{kills} kills + 1 Ctrl-C + 1 SIGTERM survived, resumed at steps {resumed_at}, "
        f"{temporary} stale temporary files seen, 0 files lost, "
        f"{time.monotonic() - started:.0f} s"
    )


def _small_trainer(
    stages: list[Stage], checkpoint_dir: Path | None = None, interval: float = 0.0, **config
) -> Trainer:
    torch.manual_seed(0)
    backbone, dim = make_backbone("small", 1, 8)
    images = (torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 255).byte()
    train_config = TrainConfig(stages=stages, batch_size=16, image_size=8, verbose=False, **config)
    return Trainer(
        EmbeddingNet(backbone, dim, 32, stages[0].out_dim),
        images,
        train_config,
        1,
        checkpoint_dir,
        checkpoint_interval=interval,
    )


def _finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


class _Killed(Exception):
    """Stands in for SIGKILL in-process: the trainer stops without saving."""


def test_resume_at_a_stage_boundary_is_exact(tmp_path):
    """A kill before the first checkpoint of stage 2 resumes from the end-of-stage-1 checkpoint
    (whose readout is still the 128-D one) and continues exactly (found by the kill test)."""
    stages = [
        Stage(2, 0.05, 1, 128, False),
        Stage(2, 0.05, 0, 2, True),
        Stage(1, 1e-4, 0, 2, False),
    ]
    straight = _small_trainer(stages)
    straight.run()

    def kill_in_stage_2(trainer: Trainer) -> None:
        if trainer.progress.stage == 1:
            raise _Killed

    first = _small_trainer(stages, tmp_path, interval=float("inf"))
    first.on_epoch_end = kill_in_stage_2
    with pytest.raises(_Killed):
        first.run()
    resumed = _small_trainer(stages, tmp_path)
    assert resumed.resume()
    assert (resumed.progress.stage, resumed.progress.epoch, resumed.net.out_dim) == (1, 0, 128)
    assert np.allclose(np.concatenate(resumed.run()), np.concatenate(straight.progress.losses))
    probe = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(straight.net.eval()(probe), resumed.net.eval()(probe), atol=1e-6)


# -- numerical faults ---------------------------------------------------------------------------


def test_divergence_keeps_the_last_good_checkpoint(tmp_path):
    stages = [Stage(2, 0.05, 0, 128, False), Stage(2, 1e30, 0, 2, False)]
    trainer = _small_trainer(stages, tmp_path, grad_clip=None)
    with pytest.raises(DivergedError, match=r"stage 2, epoch 1"):
        trainer.run()
    tensors, _ = read_safetensors(tmp_path / CHECKPOINT_FILE, "")
    assert _finite(tensors)  # checkpoints are written every step here, but never a NaN one
    again = _small_trainer(stages, tmp_path, grad_clip=None)
    assert again.resume()
    assert (again.progress.stage, again.progress.epoch) == (1, 0)  # the end of stage 1
    assert _finite(again.net.state_dict())


def test_cli_divergence_names_stage_and_epoch(tmp_path):
    source = tmp_path / "d.npz"
    np.savez(source, images=datasets.load("digits")[0][:64])
    result = _fit(source, tmp_path / "out", "--lr", "1e30", "--checkpoint-every", "0")
    assert result.exit_code == 1
    assert "stage 1, epoch 1" in _one_error_line(result.output)
    checkpoint = tmp_path / "out" / CHECKPOINT_FILE
    assert not checkpoint.exists() or _finite(read_safetensors(checkpoint, "")[0])


# -- full disks and unwritable folders ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("src") / "tiny.npz"
    images, labels = datasets.load("digits")
    np.savez(path, images=images[:48], labels=labels[:48])
    return path


def test_full_disk_is_one_clear_error_and_the_run_can_finish(tiny_source, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_replace = os.replace

    def full_disk(src, dst):
        if Path(dst).name == "model.safetensors":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    result = _fit(tiny_source, out)
    assert result.exit_code == 1
    line = _one_error_line(result.output)
    assert "model.safetensors" in line and "No space left on device" in line
    assert _assert_complete(out) == 0  # the temporary file was removed
    assert (out / CHECKPOINT_FILE).exists()  # the finished training is not lost
    monkeypatch.setattr(os, "replace", real_replace)
    (out / ".map.png.0123abcd.tmp").write_bytes(b"what a writer killed mid-write leaves")
    (out / ".notes.tmp").write_text("not picmap's: kept")
    result = CliRunner().invoke(main, ["fit", str(tiny_source), "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").exists() and not (out / CHECKPOINT_FILE).exists()
    assert [p.name for p in out.glob("*.tmp")] == [".notes.tmp"]


def test_read_only_output_is_one_clear_error(tiny_source, tmp_path, monkeypatch):
    def read_only(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "replace", read_only)
    result = _fit(tiny_source, tmp_path / "out")
    assert result.exit_code == 1
    assert "Read-only file system" in _one_error_line(result.output)
    assert _assert_complete(tmp_path / "out") == 0


def test_output_under_a_regular_file_is_one_clear_error(tiny_source, tmp_path):
    (tmp_path / "file").write_text("I am a file")
    result = _fit(tiny_source, tmp_path / "file" / "out")
    assert result.exit_code == 1
    assert "cannot write to --out" in _one_error_line(result.output)


# -- tampered files -----------------------------------------------------------------------------

STAGES = [Stage(1, 0.05, 0, 128, False), Stage(1, 0.05, 0, 2, True), Stage(1, 1e-4, 0, 2, False)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A real mid-run checkpoint (stopped one step into stage 2), as tensors and metadata."""
    folder = tmp_path_factory.mktemp("ckpt")
    trainer = _small_trainer(STAGES, folder)
    trainer.on_epoch_end = lambda t: setattr(t, "stop_requested", t.progress.stage == 0)
    with pytest.raises(Interrupted):
        trainer.run()
    return read_safetensors(folder / CHECKPOINT_FILE, "")


def _progress_edit(**changes):
    def edit(tensors, meta):
        meta["progress"] = json.dumps({**json.loads(meta["progress"]), **changes})

    return edit


def _tensor_edit(name, value):
    def edit(tensors, meta):
        tensors[name] = value

    return edit


TAMPERED_CHECKPOINTS = {
    "progress not JSON": lambda t, m: m.update(progress="{oops"),
    "progress a list": lambda t, m: m.update(progress="[1, 2]"),
    "unknown progress key": _progress_edit(evil=1),
    "stage a string": _progress_edit(stage="1"),
    "step far too large": _progress_edit(step=10**9),
    "epoch negative": _progress_edit(epoch=-1),
    "losses of the wrong length": _progress_edit(losses=[[1.0, 2.0], [], []]),
    "loss sum NaN": _progress_edit(epoch_loss_sum=float("nan")),
    "stage count differs": _progress_edit(losses=[[1.0], []]),
    "huge readout": lambda t, m: m.update(readout=str(10**9)),
    "readout not a number": lambda t, m: m.update(readout="two"),
    "no progress": lambda t, m: m.pop("progress"),
    "no seed": lambda t, m: m.pop("seed"),
    "seed not a number": lambda t, m: m.update(seed="0x1f"),
    "seed too large": lambda t, m: m.update(seed=str(2**64)),
    "weights of another shape": _tensor_edit("model.head.readout.weight", torch.zeros(2, 5)),
    "unknown tensor": _tensor_edit("evil", torch.zeros(1)),
    "momentum of another shape": _tensor_edit("optim.0", torch.zeros(7)),
}


@pytest.mark.parametrize("edit", TAMPERED_CHECKPOINTS.values(), ids=TAMPERED_CHECKPOINTS.keys())
def test_tampered_checkpoint_is_refused(checkpoint, tmp_path, edit):
    tensors, meta = dict(checkpoint[0]), dict(checkpoint[1])
    edit(tensors, meta)
    save_file(tensors, str(tmp_path / CHECKPOINT_FILE), metadata=meta)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / CHECKPOINT_FILE))):
        _small_trainer(STAGES, tmp_path).resume()


def test_untampered_checkpoint_resumes(checkpoint, tmp_path):
    save_file(dict(checkpoint[0]), str(tmp_path / CHECKPOINT_FILE), metadata=checkpoint[1])
    trainer = _small_trainer(STAGES, tmp_path)
    assert trainer.resume()
    assert [len(x) for x in trainer.run()] == [1, 1, 1]


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_checkpoint_file_is_refused(checkpoint, tmp_path, damage):
    path = tmp_path / CHECKPOINT_FILE
    save_file(dict(checkpoint[0]), str(path), metadata=checkpoint[1])
    raw = path.read_bytes()
    path.write_bytes(
        {"truncated": raw[: len(raw) // 2], "empty": b"", "garbage": b"x" * 99}[damage]
    )
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        _small_trainer(STAGES, tmp_path).resume()


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    model = TSimCNE("small", total_epochs=[1, 0, 0], batch_size=16, hidden_dim=16, verbose=False)
    model.fit(datasets.load("digits")[0][:32]).save(folder)
    return folder


def _config_edit(**params):
    def edit(config):
        config["params"].update(params)

    return edit


TAMPERED_CONFIGS = {
    "hidden_dim a string": (_config_edit(hidden_dim="big"), "hidden_dim='big'"),
    "hidden_dim huge": (_config_edit(hidden_dim=10**9), "does not match"),
    "out_dim a string": (_config_edit(out_dim="2"), "out_dim='2'"),
    "total_epochs a string": (_config_edit(total_epochs="abc"), "total_epochs"),
    "temperature negative": (_config_edit(temperature=-1), "temperature=-1"),
    "unknown parameter": (_config_edit(evil=1), "unknown parameters"),
    "seed a string": (lambda c: c.update(seed="x"), "seed='x'"),
    "class names a number": (lambda c: c.update(class_names=5), "class_names"),
    "image size huge": (lambda c: c.update(image_size=10**9), "image_size"),
    "no keys": (lambda c: c.clear(), "keys of a picmap config"),
}


@pytest.mark.parametrize(("edit", "match"), TAMPERED_CONFIGS.values(), ids=TAMPERED_CONFIGS.keys())
def test_tampered_config_is_refused(saved_model, tmp_path, edit, match):
    for name in ("model.safetensors", "config.json"):
        (tmp_path / name).write_bytes((saved_model / name).read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    edit(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=re.escape(match)):
        TSimCNE.load(tmp_path)


@pytest.mark.parametrize("damage", ["config not JSON", "weights truncated", "extra tensor"])
def test_damaged_saved_model_is_one_clear_cli_error(saved_model, tmp_path, damage):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.safetensors", "config.json"):
        (run / name).write_bytes((saved_model / name).read_bytes())
    if damage == "config not JSON":
        (run / "config.json").write_text("{not json")
    elif damage == "weights truncated":
        raw = (run / "model.safetensors").read_bytes()
        (run / "model.safetensors").write_bytes(raw[: len(raw) - 100])
    else:
        weights, _ = read_safetensors(run / "model.safetensors", "")
        save_file({**weights, "evil": torch.zeros(1)}, str(run / "model.safetensors"))
    np.save(tmp_path / "new.npy", datasets.load("digits")[0][:4])
    result = CliRunner().invoke(
        main, ["transform", str(run), str(tmp_path / "new.npy"), "--out", str(tmp_path / "y.csv")]
    )
    assert result.exit_code == 1
    assert str(run) in _one_error_line(result.output)


@pytest.mark.parametrize("content", ["{oops", "[1]", '{"source": "digits", "seed": "abc"}'])
def test_damaged_run_json_is_refused_on_resume(tmp_path, content):
    (tmp_path / "run.json").write_text(content)
    result = CliRunner().invoke(main, ["fit", "digits", "--out", str(tmp_path), "--resume"])
    assert result.exit_code == 1
    assert "run.json is damaged" in _one_error_line(result.output)


# -- nothing is unpickled -----------------------------------------------------------------------

UNPICKLERS = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}
SAFE_LOADS = {"torch.load": ("weights_only", "True"), "np.load": ("allow_pickle", "False")}
SAFE_LOADS["numpy.load"] = SAFE_LOADS["np.load"]
TRUSTED = "# trusted-pickle:"  # the marked CIFAR call sites: the dataset ships as pickles


def _unsafe_lines(tree: ast.AST) -> list[int]:
    """Lines that import an unpickler, call one, or load without the no-pickle switch."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            )
            if any((m or "").split(".")[0] in UNPICKLERS for m in modules):
                found.append(node.lineno)
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            switch = SAFE_LOADS.get(name)
            if "pickle" in name or (switch and keywords.get(switch[0]) != switch[1]):
                found.append(node.lineno)
    return found


def test_no_code_path_unpickles_user_files():
    """The source never unpickles: no pickle module, torch.load only with weights_only=True,
    np.load only with allow_pickle=False. The one exception, torchvision's CIFAR reader, is
    marked where it is called."""
    unsafe, trusted = [], []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        where = path.relative_to(SRC).as_posix()
        unsafe += [f"{where}:{n}: {lines[n - 1].strip()}" for n in _unsafe_lines(ast.parse(text))]
        trusted += [f"{where}:{n}" for n, line in enumerate(lines, 1) if TRUSTED in line]
    assert unsafe == []
    assert trusted and all(where.startswith("data/datasets.py:") for where in trusted)
