"""Quality metrics against hand-computed values, and `picmap evaluate` end to end on digits."""

from __future__ import annotations

import csv
import json
import re
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from picmap import datasets
from picmap.cli import _held_out_mask, main
from picmap.evaluate import (
    Embedding,
    format_table,
    knn_accuracy,
    linear_accuracy,
    neighborhood_preservation,
    protocol_name,
    protocol_problem,
    quality_report,
)

# Two classes on a line; the held-out point at 9 is labelled 0 but lies next to class 1.
LINE = np.array([0, 1, 2, 10, 11, 12, 0.5, 10.5, 9.0])[:, None]
LINE_LABELS = np.array([0, 0, 0, 1, 1, 1, 0, 1, 0])
HELD_OUT = np.arange(9) >= 6


def _column(*values: float) -> np.ndarray:
    """Points on a line, as an N×2 map."""
    return np.stack([values, np.zeros(len(values))], axis=1)


def test_knn_accuracy_on_a_held_out_split():
    # k=3 votes: 0.5 → class 0 (right), 10.5 → class 1 (right), 9 → class 1 (wrong).
    assert knn_accuracy(LINE, LINE_LABELS, k=3, test_mask=HELD_OUT) == pytest.approx(2 / 3)


def test_linear_accuracy_on_a_held_out_split():
    # The classes separate at about 6, so the point at 9 labelled 0 is the one mistake.
    assert linear_accuracy(LINE, LINE_LABELS, test_mask=HELD_OUT) == pytest.approx(2 / 3)


def test_accuracies_cross_validate_without_a_split():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    Y = labels[:, None] * 10 + rng.normal(size=(40, 2))
    assert knn_accuracy(Y, labels) == 1.0
    assert linear_accuracy(Y, labels) == 1.0


def test_neighborhood_preservation_by_hand():
    features = _column(0, 1, 3, 7)  # nearest: a→b, b→a, c→b, d→c
    Y = _column(0, 1, 5, 4.5)  # nearest: a→b, b→a, c→d, d→c
    assert neighborhood_preservation(features, Y, k=1) == pytest.approx(3 / 4)
    # k=2 — features: a{b,c} b{a,c} c{b,a} d{c,b}; map: a{b,d} b{a,d} c{d,b} d{c,b}
    assert neighborhood_preservation(features, Y, k=2) == pytest.approx((1 + 1 + 1 + 2) / 8)
    assert neighborhood_preservation(features, 3 * Y[:, ::-1] + 1, k=2) == pytest.approx(5 / 8)
    assert neighborhood_preservation(features, features, k=3) == 1.0


def test_knn_votes_as_scikit_learn_does_in_many_dimensions():
    from sklearn.datasets import load_digits
    from sklearn.neighbors import KNeighborsClassifier

    digits = load_digits()
    X, y = digits.data + np.random.default_rng(0).normal(0, 1e-3, digits.data.shape), digits.target
    mask = np.arange(len(y)) % 4 == 0
    theirs = KNeighborsClassifier(15).fit(X[~mask], y[~mask]).score(X[mask], y[mask])
    assert knn_accuracy(X, y, test_mask=mask) == pytest.approx(theirs)


def test_large_collections_are_scored_on_one_stratified_held_out_split(monkeypatch):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier

    monkeypatch.setattr("picmap.evaluate.CV_UP_TO", 1000)
    monkeypatch.setattr("picmap.evaluate.HELD_OUT", 300)
    digits = load_digits()
    X, y = (
        digits.data[:, ::4]
        + np.random.default_rng(0).normal(0, 1e-3, (len(y := digits.target), 16)),
        y,
    )
    train, test = train_test_split(np.arange(len(y)), test_size=300, random_state=0, stratify=y)
    theirs = KNeighborsClassifier(15).fit(X[train], y[train]).score(X[test], y[test])
    assert knn_accuracy(X, y) == pytest.approx(theirs)
    assert protocol_name(y, None).startswith("300 of 1797 images held out")


def test_neighborhood_preservation_on_a_sample_estimates_the_whole():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(3000, 10))
    Y = features[:, :2] + rng.normal(0, 0.3, (3000, 2))
    whole = neighborhood_preservation(features, Y)
    sampled = neighborhood_preservation(features, Y, sample=600)
    assert sampled != whole
    assert sampled == pytest.approx(whole, abs=0.02)


def test_protocol_problems_are_named():
    assert "no labels" in protocol_problem(None)
    assert "5-fold" in protocol_problem(np.array([0] * 10 + [1] * 3))
    assert protocol_problem(np.array([0] * 5 + [1] * 5)) is None
    assert "hold out" in protocol_problem(LINE_LABELS, np.ones(9, bool))
    with pytest.raises(ValueError, match="5-fold cross-validation needs"):
        knn_accuracy(_column(0, 1, 2), np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="k=0 must be a positive"):
        knn_accuracy(LINE, LINE_LABELS, k=0)
    with pytest.raises(ValueError, match="features contains NaN"):
        neighborhood_preservation(_column(0, np.nan, 1), _column(0, 1, 2))


def test_quality_report_rows_metrics_and_text():
    the_map = Embedding("map", _column(*LINE[:, 0]), seconds=2.5)
    features = Embedding("features", np.hstack([LINE, LINE**2]))
    report = quality_report(the_map, features, LINE_LABELS, k=3, test_mask=HELD_OUT)
    metrics = report.metrics()
    assert metrics["knn_accuracy"] == pytest.approx(2 / 3)
    assert metrics["features_dims"] == 2
    assert metrics["protocol"] == "fitted on 6 training images, scored on 3 held out"
    assert "baselines" not in metrics
    lines = report.text().splitlines()
    assert lines[1].split() == ["method", "dims", "kNN", "acc", "linear", "acc", "time"]
    assert lines[2].split() == ["map", "2", "66.7%", "66.7%", "2.5", "s"]

    unlabelled = quality_report(the_map, features, None, k=3)
    assert unlabelled.scores[0].knn_accuracy is None
    assert unlabelled.protocol.startswith("the data has no labels")
    assert "—" in format_table(unlabelled.scores)


# -- the command -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits-run")
    fit = ["fit", "digits", "--out", str(out), "--epochs", "2,1,1", "--batch-size", "128"]
    result = CliRunner().invoke(main, [*fit, "--quiet"])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_evaluate_with_baselines_end_to_end(digits_run):
    result = CliRunner().invoke(main, ["evaluate", str(digits_run), "--baselines"])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    for method in ["picmap map", "backbone features", "pixel t-SNE", "features + t-SNE"]:
        assert method in result.output
    assert "stratified 5-fold cross-validation on 1797 images" in result.output

    metrics = json.loads((digits_run / "metrics.json").read_text())
    assert metrics["fit_seconds"] > 0  # what `fit` wrote is kept
    assert (metrics["backbone"], metrics["features_dims"]) == ("mlp", 512)  # auto, grey, CPU
    assert metrics["features_knn_accuracy"] > 0.5  # even 4 epochs learn useful features
    assert 0 <= metrics["neighborhood_preservation"] <= 1
    baselines = {(b["method"], b["dims"]): b for b in metrics["baselines"]}
    assert set(baselines) == {
        ("pixel PCA", 50),
        ("pixel PCA", 2),
        ("pixel t-SNE", 2),
        ("pixel UMAP", 2),
        ("features + t-SNE", 2),
    }
    assert baselines[("pixel t-SNE", 2)]["knn_accuracy"] > 0.9  # digits separate well in pixels
    assert (digits_run / "baselines.png").stat().st_size > 10_000

    with open(digits_run / "outliers.csv", newline="", encoding="utf-8") as handle:
        outliers = list(csv.DictReader(handle))
    assert len(outliers) == metrics["discoveries"]["outliers"] == 18  # 1 % of 1,797
    assert [int(r["rank"]) for r in outliers] == list(range(1, 19))
    assert (digits_run / "label_errors.csv").is_file()
    assert (digits_run / "duplicates.csv").is_file()
    page = (digits_run / "explorer.html").read_text(encoding="utf-8")
    assert '"name":"likely label errors"' in page


def test_missing_baselines_extra_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap now fails, as if not installed
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path), "--baselines"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        'picmap: error: baselines need umap-learn: pip install "picmap[baselines]"'
    ]


def test_evaluate_on_a_folder_that_is_no_run(tmp_path):
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path)])
    assert result.exit_code == 1
    assert (
        result.output.startswith("picmap: error:") and "not a finished picmap run" in result.output
    )


def test_evaluate_refuses_a_run_whose_source_changed(digits_run, tmp_path):
    for path in digits_run.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    np.save(tmp_path / "embedding.npy", np.load(digits_run / "embedding.npy")[:100])
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path)])
    assert result.exit_code == 1
    assert "has 100 points but its source 'digits' now holds 1797 images" in result.output


def test_named_dataset_with_a_split_is_scored_on_its_test_images():
    settings = {"source": "fashion-mnist", "split": "all", "root": None}
    if not next(d["offline"] for d in datasets.available() if d["name"] == "fashion-mnist"):
        pytest.skip("Fashion-MNIST is not on this machine: apt-get install dataset-fashion-mnist")
    mask = _held_out_mask(settings, 70_000)
    assert mask.sum() == 10_000 and mask[-10_000:].all()
    assert _held_out_mask({**settings, "split": "train"}, 60_000) is None
    assert _held_out_mask({**settings, "source": "digits"}, 1797) is None


def test_pixel_pca_in_chunks_equals_the_whole_array_projection(monkeypatch):
    from sklearn.decomposition import PCA

    from picmap.baselines import pixel_pca

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (900, 1, 8, 8), dtype=np.uint8)
    rows = images.reshape(900, -1).astype(np.float32) / 255
    monkeypatch.setattr("picmap.baselines._CHUNK", 128)
    np.testing.assert_allclose(
        np.abs(pixel_pca(images)), np.abs(PCA(50, random_state=0).fit_transform(rows)), atol=1e-4
    )
    monkeypatch.setattr("picmap.baselines.PCA_SAMPLE", 300)  # axes from every 3rd image
    axes = PCA(50, random_state=0).fit(rows[::3])
    np.testing.assert_allclose(np.abs(pixel_pca(images)), np.abs(axes.transform(rows)), atol=1e-4)


@pytest.mark.slow
def test_a_map_too_large_for_one_file_is_served_as_tiles_with_its_lists(tmp_path, monkeypatch):
    import urllib.request

    monkeypatch.setattr("picmap.explore.SINGLE_FILE_UP_TO", 1000)  # digits: 1,797 images
    out = tmp_path / "run"
    fit = ["fit", "digits", "--out", str(out), "--epochs", "1,1,1", "--batch-size", "128"]
    result = CliRunner().invoke(main, fit)
    assert result.exit_code == 0, result.output
    assert not (out / "explorer.html").exists()
    assert f"`picmap explore {out}` serves the map" in result.output
    assert CliRunner().invoke(main, ["evaluate", str(out)]).exit_code == 0
    with open(out / "outliers.csv", newline="") as handle:
        outliers = [int(row["index"]) for row in csv.DictReader(handle)]

    seen = {}

    def browse(url: str) -> None:  # while the server runs
        seen["page"] = urllib.request.urlopen(url).read().decode()
        seen["thumb"] = urllib.request.urlopen(f"{url}thumb/{outliers[0]}.png").read()
        seen["tile"] = urllib.request.urlopen(f"{url}tile/0/0/0.png?list=0").read()

    monkeypatch.setattr("webbrowser.open", browse)
    monkeypatch.setattr("threading.Event.wait", lambda self, timeout=None: True)
    result = CliRunner().invoke(main, ["explore", str(out), "--port", "0"])
    assert result.exit_code == 0, result.output
    assert "serving 1797 images at http://127.0.0.1:" in result.output
    data = json.loads(re.search(r'id="picmap-data">(.*?)</script>', seen["page"]).group(1))
    assert data["n"] == 1797 and data["images"]
    assert {"name": "outliers", "count": len(outliers)} in data["lists"]
    assert seen["thumb"].startswith(b"\x89PNG") and seen["tile"].startswith(b"\x89PNG")


def test_explore_names_a_folder_without_a_map(tmp_path):
    result = CliRunner().invoke(main, ["explore", str(tmp_path)])
    assert result.exit_code != 0
    assert f"{tmp_path} holds no map; run `picmap fit` with --out {tmp_path} first" in result.output
