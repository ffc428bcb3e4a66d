import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from picmap.cli import main

FIT_FAST = ["--epochs", "2,1,1", "--batch-size", "32", "--quiet", "--device", "cpu"]


def _shape_image(kind: int, rng: np.random.Generator, size: int = 16) -> Image.Image:
    """Three visibly different classes: a bright square, a horizontal bar, a dark frame."""
    img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    o = rng.integers(1, 5)
    if kind == 0:
        img[o : o + 8, o : o + 8] = (230, 40, 40)
    elif kind == 1:
        img[o + 4 : o + 7, :] = (40, 200, 60)
    else:
        img[:2], img[-2:], img[:, :2], img[:, -2:] = 250, 250, 250, 250
    return Image.fromarray(img)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for kind, name in enumerate(["squares", "bars", "frames"]):
        (root / name).mkdir()
        for i in range(70):
            _shape_image(kind, rng).save(root / name / f"{name}_{i:03d}.png")
    (root / "bars" / 'odd, "quoted" name.png').write_bytes(
        (root / "bars" / "bars_000.png").read_bytes()
    )
    return root


@pytest.fixture(scope="module")
def fitted_run(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = CliRunner().invoke(main, ["fit", str(image_folder), "--out", str(out), *FIT_FAST])
    assert result.exit_code == 0, result.output
    return out


def test_fit_writes_every_output(fitted_run):
    names = {p.name for p in fitted_run.iterdir()}
    expected = {
        "embedding.csv",
        "embedding.npy",
        "model.safetensors",
        "config.json",
        "map.png",
        "thumbnails.png",
        "explorer.html",
        "metrics.json",
        "run.log",
        "run.json",
    }
    assert expected <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert "checkpoint.safetensors" not in names  # removed once the run is complete


def test_embedding_csv_quotes_names_and_matches_npy(fitted_run):
    Y = np.load(fitted_run / "embedding.npy")
    with open(fitted_run / "embedding.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(Y) == 211
    assert {r["label"] for r in rows} == {"bars", "frames", "squares"}
    quoted = [r for r in rows if r["file"].endswith('odd, "quoted" name.png')]
    assert len(quoted) == 1
    i = int(quoted[0]["index"])
    assert float(quoted[0]["x"]) == pytest.approx(Y[i, 0], rel=1e-4)


def test_metrics_json_has_knn_accuracy_and_timing(fitted_run):
    metrics = json.loads((fitted_run / "metrics.json").read_text())
    assert metrics["images"] == 211
    assert 0 <= metrics["knn_accuracy"] <= 1
    assert metrics["fit_seconds"] > 0


def test_transform_places_new_images(fitted_run, image_folder, tmp_path):
    out = tmp_path / "new.csv"
    result = CliRunner().invoke(
        main, ["transform", str(fitted_run), str(image_folder / "squares"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 70
    fitted = np.load(fitted_run / "embedding.npy")
    with open(fitted_run / "embedding.csv", newline="", encoding="utf-8") as handle:
        first_square = next(
            r for r in csv.DictReader(handle) if r["file"].endswith("squares_000.png")
        )
    placed = next(r for r in rows if r["file"].endswith("squares_000.png"))
    assert float(placed["x"]) == pytest.approx(fitted[int(first_square["index"]), 0], abs=1e-3)


def test_plot_redraws_figures(fitted_run):
    (fitted_run / "map.png").unlink()
    result = CliRunner().invoke(main, ["plot", str(fitted_run)])
    assert result.exit_code == 0, result.output
    assert (fitted_run / "map.png").stat().st_size > 1000


def test_wrong_path_is_one_clear_line(tmp_path):
    result = CliRunner().invoke(main, ["fit", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "neither an existing file or folder nor a named dataset" in result.output
    assert "Traceback" not in result.output


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(
        main, ["fit", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "picmap: error:" in result.output and "empty" in result.output
    assert "Traceback" not in result.output


def test_corrupt_image_is_skipped_with_a_warning(image_folder, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for p in sorted((image_folder / "squares").iterdir())[:40]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    result = CliRunner().invoke(main, ["fit", str(folder), "--out", str(tmp_path / "o"), *FIT_FAST])
    assert result.exit_code == 0, result.output
    assert "broken.png" in result.output and "warning" in result.output.lower()
    assert len(np.load(tmp_path / "o" / "embedding.npy")) == 40


def test_unfinished_run_needs_resume(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "checkpoint.safetensors").write_bytes(b"x")
    result = CliRunner().invoke(main, ["fit", "digits", "--out", str(out)])
    assert result.exit_code == 1 and "--resume" in result.output


def test_bad_epochs_option(tmp_path):
    result = CliRunner().invoke(main, ["fit", "digits", "--out", str(tmp_path), "--epochs", "5"])
    assert result.exit_code == 1 and "--epochs '5'" in result.output


def test_datasets_lists_digits_offline():
    result = CliRunner().invoke(main, ["datasets"])
    assert result.exit_code == 0
    assert any(
        line.startswith("digits") and "offline" in line for line in result.output.splitlines()
    )


def test_resume_of_a_finished_run_does_not_retrain(fitted_run):
    before = (fitted_run / "embedding.npy").stat().st_mtime_ns
    result = CliRunner().invoke(main, ["fit", "unused", "--out", str(fitted_run), "--resume"])
    assert result.exit_code == 0 and "already finished" in result.output
    assert (fitted_run / "embedding.npy").stat().st_mtime_ns == before


def test_fit_with_a_torchvision_backbone_and_a_local_weights_file(image_folder, tmp_path):
    import torch
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    weights = tmp_path / "resnet18.safetensors"
    save_file(torchvision.models.resnet18().state_dict(), str(weights))
    pretrained = ["--backbone", "torchvision:resnet18", "--weights", str(weights)]
    fast = ["--epochs", "2,1,2", "--device", "cpu", "--feature-cache", str(tmp_path / "cache")]
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main, ["fit", str(image_folder), "--out", str(out), *pretrained, *fast]
    )
    assert result.exit_code == 0, result.output
    assert "backbone features: 100%" in result.output  # the feature pass shows its progress
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["backbone"], metrics["backbone_mode"]) == ("torchvision:resnet18", "frozen")
    assert np.load(out / "embedding.npy").shape == (211, 2)
    assert metrics["knn_accuracy"] > 0.5  # three plain shapes, even on random-weight features
    again = CliRunner().invoke(
        main, ["fit", str(image_folder), "--out", str(tmp_path / "again"), *pretrained, *fast]
    )
    assert again.exit_code == 0 and "backbone features read from" in again.output


def test_fit_with_a_missing_weights_file_says_so_in_one_line(image_folder, tmp_path):
    args = ["--backbone", "torchvision:resnet18", "--weights", str(tmp_path / "none.pth")]
    result = CliRunner().invoke(
        main, ["fit", str(image_folder), "--out", str(tmp_path / "o"), *args]
    )
    assert result.exit_code != 0
    assert "none.pth': no such file" in result.output and "Traceback" not in result.output
    bad = CliRunner().invoke(
        main, ["fit", str(image_folder), "--out", str(tmp_path / "o"), "--backbone", "resnet"]
    )
    assert bad.exit_code == 2 and "LIBRARY:NAME" in bad.output
