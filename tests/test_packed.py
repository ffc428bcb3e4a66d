"""Packed images: a folder decoded once into a memory-mapped .npy with a JSON sidecar."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from picmap.cli import main
from picmap.data import packed
from picmap.data.packed import open_packed, pack
from picmap.data.sources import to_store
from picmap.estimator import _place_images

CLASSES = ("circles", "greys", "stripes")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """27 small images in three class folders (grey, RGB, palette and RGBA mixed), one file that
    is not an image, and one truncated PNG whose header still reads."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for kind, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(9):
            if kind == 1:
                image = Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8))
            else:
                image = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
            if kind == 2 and i == 0:
                image = image.convert("P")
            if kind == 2 and i == 1:
                image = image.convert("RGBA")
            image.save(root / name / f"{name}_{i}.png")
    (root / "circles" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    whole = (root / "greys" / "greys_0.png").read_bytes()
    (root / "greys" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    return root


@pytest.fixture(scope="module")
def packed_file(folder, tmp_path_factory) -> Path:
    with pytest.warns(UserWarning, match="skipped 2"):
        return pack(folder, tmp_path_factory.mktemp("packed") / "images.npy", verbose=False)


def _warnings_of(function, *args, **kwargs) -> tuple[object, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = function(*args, **kwargs)
    return result, [str(warning.message) for warning in caught]


@pytest.mark.parametrize("chunk_size", [5, 4096], ids=["chunks-of-5", "one-chunk"])
def test_packed_folder_equals_to_store(folder, tmp_path, chunk_size):
    expected, expected_warnings = _warnings_of(to_store, folder, verbose=False)
    path, pack_warnings = _warnings_of(
        pack, folder, tmp_path / "images.npy", chunk_size=chunk_size, verbose=False
    )
    store = open_packed(path)
    assert pack_warnings == expected_warnings and len(pack_warnings) == 1
    assert "corrupt.png" in pack_warnings[0] and "truncated.png" in pack_warnings[0]
    assert store.images.shape == (27, 3, 12, 12)
    assert torch.equal(store.images, expected.images)
    assert np.array_equal(store.labels, expected.labels)
    assert store.class_names == expected.class_names == list(CLASSES)
    assert store.file_names == expected.file_names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.json", "images.npy"]


def test_grey_folder_packs_one_channel(folder, tmp_path):
    with pytest.warns(UserWarning, match="truncated.png"):
        store = open_packed(pack(folder / "greys", tmp_path / "greys.npy", image_size=8))
    assert store.images.shape == (9, 1, 8, 8)
    with pytest.warns(UserWarning, match="truncated.png"):
        assert torch.equal(store.images, to_store(folder / "greys", image_size=8).images)


def test_in_memory_source_is_packed(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (6, 5, 5, 3), dtype=np.uint8)
    store = open_packed(pack(images, tmp_path / "a.npy", labels=["x", "y"] * 3))
    assert torch.equal(store.images, to_store(images).images)
    assert store.labels.tolist() == [0, 1] * 3 and store.class_names == ["x", "y"]
    assert store.file_names is None


def _mapped_from(path: Path, address: int) -> bool:
    """Whether ``address`` lies in a region of this process that maps the file ``path``."""
    real = os.path.realpath(path)
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == real:
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            if start <= address < end:
                return True
    return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
def test_open_packed_maps_the_file_without_a_copy(packed_file):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's warning about a non-writable array
        store = open_packed(packed_file)
    assert _mapped_from(packed_file, store.images.data_ptr())
    assert _mapped_from(packed_file, to_store(packed_file).images.data_ptr())
    placed = _place_images(store.images, torch.device("cpu"))  # what TSimCNE.fit trains on
    assert placed.data_ptr() == store.images.data_ptr()


def test_to_store_resizes_a_packed_file(packed_file):
    store = to_store(packed_file, image_size=6, labels=list(range(27)))
    assert store.images.shape == (27, 3, 6, 6) and store.labels.tolist() == list(range(27))
    assert store.file_names == open_packed(packed_file).file_names


def test_interrupted_pack_leaves_the_old_file(folder, tmp_path, monkeypatch):
    with pytest.warns(UserWarning, match="corrupt.png"):
        path = pack(folder / "circles", tmp_path / "images.npy", verbose=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    calls = []

    def fail_on_second_chunk(images):
        calls.append(len(images))
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return torch.zeros(len(images), 3, 12, 12, dtype=torch.uint8)

    monkeypatch.setattr(packed, "_stack", fail_on_second_chunk)
    with pytest.raises(RuntimeError, match="interrupted"):
        pack(folder, path, chunk_size=5, verbose=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    path.unlink()
    calls.clear()
    with pytest.raises(RuntimeError, match="interrupted"):
        pack(folder, path, chunk_size=5, verbose=False)
    assert [p.name for p in tmp_path.iterdir()] == ["images.json"]  # the old sidecar


def _sidecar(path: Path) -> dict:
    return json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda side: "{not json", "not readable JSON"),
        (lambda side: json.dumps([1, 2]), "not a picmap sidecar"),
        (lambda side: json.dumps({**side, "version": 99}), "version"),
        (lambda side: json.dumps({**side, "shape": [3, 3, 12, 12]}), "not packed together"),
        (lambda side: json.dumps({**side, "labels": side["labels"][:-1]}), "'labels'"),
        (lambda side: json.dumps({**side, "labels": [True] * 27}), "'labels'"),
        (lambda side: json.dumps({**side, "labels": [7] * 27}), "outside 0..2"),
        (lambda side: json.dumps({**side, "class_names": "abc"}), "'class_names'"),
        (lambda side: json.dumps({**side, "file_names": [1] * 27}), "'file_names'"),
    ],
    ids=[
        "not-json",
        "not-a-dict",
        "version",
        "shape",
        "label-count",
        "label-type",
        "label-range",
        "class-names",
        "file-names",
    ],
)
def test_damaged_sidecar_is_a_clear_error(packed_file, tmp_path, change, pattern):
    path = Path(shutil.copy(packed_file, tmp_path / "images.npy"))
    path.with_suffix(".json").write_text(change(_sidecar(packed_file)), encoding="utf-8")
    with pytest.raises(ValueError, match=pattern) as error:
        open_packed(path)
    assert str(path.with_suffix(".json")) in str(error.value)
    assert "picmap pack" in str(error.value)


def test_missing_sidecar_is_a_clear_error(packed_file, tmp_path):
    path = Path(shutil.copy(packed_file, tmp_path / "images.npy"))
    with pytest.raises(ValueError, match=r"no sidecar images\.json.*picmap pack") as error:
        open_packed(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((27, 3, 12, 12), np.float32),
        np.zeros((27, 12, 12, 3), np.uint8),
        np.zeros((27, 3, 12, 10), np.uint8),
        np.zeros((27, 3, 12), np.uint8),
    ],
    ids=["float", "channels-last", "not-square", "three-axes"],
)
def test_wrong_array_is_a_clear_error(packed_file, tmp_path, array):
    path = tmp_path / "images.npy"
    np.save(path, array)
    shutil.copy(packed_file.with_suffix(".json"), path.with_suffix(".json"))
    with pytest.raises(ValueError, match=r"not uint8 images N×C×H×W") as error:
        open_packed(path)
    assert str(path) in str(error.value)


def test_not_a_npy_file_is_a_clear_error(tmp_path):
    path = tmp_path / "images.npy"
    path.write_bytes(b"hello")
    with pytest.raises(ValueError, match=r"images\.npy is not a readable \.npy file"):
        open_packed(path)


def test_bad_arguments(folder, tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.npy"):
        pack(folder, tmp_path / "images.bin")
    with pytest.raises(ValueError, match="chunk_size=0"):
        pack(folder, tmp_path / "images.npy", chunk_size=0)
    with pytest.raises(ValueError, match="on_error='ignore'"):
        pack(folder, tmp_path / "images.npy", on_error="ignore")
    assert list(tmp_path.iterdir()) == []


def test_cli_pack_then_fit(folder, tmp_path):
    out = tmp_path / "images.npy"
    result = CliRunner().invoke(main, ["pack", str(folder), str(out)])
    assert result.exit_code == 0, result.output
    assert "corrupt.png" in result.output and "packed 27 images (3×12×12)" in result.output
    run = tmp_path / "run"
    fit = ["--epochs", "1,1,1", "--batch-size", "16", "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(
        main, ["fit", str(out), "--out", str(run), *fit, "--backbone", "small"]
    )
    assert result.exit_code == 0, result.output
    assert np.load(run / "embedding.npy").shape == (27, 2)
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["images"] == 27 and metrics["image_size"] == 12
    assert "circles" in (run / "embedding.csv").read_text(encoding="utf-8")


def test_cli_pack_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(main, ["pack", str(tmp_path / "missing"), str(tmp_path / "a.npy")])
    assert result.exit_code != 0 and "picmap: error:" in result.output
    result = CliRunner().invoke(main, ["pack", "digits", str(tmp_path / "a.txt")])
    assert result.exit_code != 0 and "must end in .npy" in result.output
    assert "Traceback" not in result.output
