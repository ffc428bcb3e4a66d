"""A time budget instead of epochs, and the defaults that work on any collection size."""

import json
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from picmap import TSimCNE, datasets
from picmap.budget import default_budget, epochs_for_budget, parse_duration
from picmap.cli import main
from picmap.model import EmbeddingNet, make_backbone
from picmap.train import CHECKPOINT_FILE, Stage, TrainConfig, Trainer, saved_epochs


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("600", 600), ("90s", 90), ("10m", 600), ("10min", 600), ("1h", 3600), ("1h30m", 5400)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "10x", "-5m", "0", "10m later", "m"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_default_budget_is_ten_minutes_for_ten_thousand_images_and_bounded():
    assert default_budget(10_000) == 600
    assert 40 < default_budget(1797) < 50  # the digits demo: under a minute
    assert default_budget(200) == 20
    assert default_budget(10**6) == 1800
    assert default_budget(20_000) == pytest.approx(600 * 2**1.5)


def test_epochs_fill_the_budget_in_the_recipe_proportions():
    # 10 steps an epoch; a full step 0.5 s, a readout-only step 0.1 s.
    epochs = epochs_for_budget(100.0, (60, 10, 30), (0.5, 0.1), 10)
    assert epochs == (13, 2, 7)
    seconds = (epochs[0] + epochs[2]) * 10 * 0.5 + epochs[1] * 10 * 0.1
    assert seconds == pytest.approx(100, rel=0.1)
    assert epochs_for_budget(0.0, (1, 0, 1), (1.0, 1.0), 5) == (1, 0, 1)  # at least one epoch


def test_a_budgeted_fit_ends_within_its_budget(digits):
    images = digits[0][:600]
    model = TSimCNE("tiny", recipe="picmap", time_budget=8.0, seed=0, verbose=False)
    started = time.perf_counter()
    model.fit(images)
    seconds = time.perf_counter() - started
    assert 0.6 * 8 < seconds < 1.15 * 8 + 1.0  # the fit also loads and places the images
    assert model.total_epochs_[0] > 1 and model.total_epochs_[1] > 0


@pytest.mark.slow
def test_no_arguments_on_200_images_fit_in_about_the_default_budget(digits):
    started = time.perf_counter()
    Y = TSimCNE(verbose=False).fit_transform(digits[0][:200])
    seconds = time.perf_counter() - started
    assert Y.shape == (200, 2) and np.isfinite(Y).all()
    assert 0.6 * default_budget(200) < seconds < 1.2 * default_budget(200) + 2


def test_auto_batch_leaves_at_least_four_steps_per_epoch(digits):
    model = TSimCNE("tiny", total_epochs=[1, 1, 1], seed=0, verbose=False)
    model.fit(digits[0][:200])
    assert model.batch_size_ == 32
    model.fit(digits[0][:1797])
    assert model.batch_size_ == 256


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"time_budget": -1}, "time_budget=-1 must be a positive number"),
        ({"time_budget": "10m"}, "time_budget='10m' must be a positive number"),
        ({"time_budget": float("nan")}, "time_budget=nan"),
        ({"time_budget": 5, "total_epochs": [1, 1, 1]}, "give one of them"),
        ({"total_epochs": "long"}, "total_epochs='long'"),
    ],
)
def test_bad_budgets_are_refused_naming_the_option(params, match, digits):
    with pytest.raises(ValueError, match=match):
        TSimCNE(**params, verbose=False).fit(digits[0][:100])


def test_large_images_are_downscaled_on_the_cpu_and_the_message_says_so(capsys):
    images = np.random.default_rng(0).integers(0, 256, (64, 48, 48, 3), dtype=np.uint8)
    model = TSimCNE("tiny", time_budget=2.0, seed=0).fit(images)
    assert model.image_size_ == 32
    err = capsys.readouterr().err
    assert "downscaled from 48 to 32 px" in err
    assert "training for 2 s (asked for" in err
    assert model.transform(images[:3]).shape == (3, 2)
    kept = TSimCNE("tiny", total_epochs=[1, 0, 0], image_size=48, seed=0, verbose=False)
    assert kept.fit(images).image_size_ == 48


def _trainer(epochs, checkpoint_dir=None):
    backbone, dim = make_backbone("tiny", 1, 8)
    images = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    stages = [Stage(epochs[0], 0.05, 0, 16, False), Stage(epochs[1], 0.05, 0, 2, True)]
    stages.append(Stage(epochs[2], 0.01, 0, 2, False))
    config = TrainConfig(stages, 16, image_size=8, verbose=False)
    return Trainer(EmbeddingNet(backbone, dim, 16, 16), images, config, 0, checkpoint_dir)


def test_timing_the_steps_leaves_the_network_as_it_was():
    trainer = _trainer((1, 1, 1))
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    full, readout = trainer.seconds_per_step(min_seconds=0.1)
    assert full > 0 and readout > 0
    after = trainer.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    trainer.reschedule(_trainer((2, 1, 3)).config.stages)
    assert [len(x) for x in trainer.run()] == [2, 1, 3]
    with pytest.raises(RuntimeError, match="before training"):
        trainer.reschedule(trainer.config.stages)


def test_a_resumed_fit_keeps_the_epochs_its_budget_chose(tmp_path):
    trainer = _trainer((3, 1, 2), tmp_path)
    trainer.save_checkpoint()
    assert saved_epochs(tmp_path) == [3, 1, 2]
    assert saved_epochs(tmp_path / "elsewhere") is None
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    assert saved_epochs(tmp_path) is None  # the trainer's own check explains it later


def test_cli_time_option(tmp_path):
    run = tmp_path / "run"
    args = ["fit", "digits", "--out", str(run), "--backbone", "tiny", "--quiet"]
    result = CliRunner().invoke(main, [*args, "--time", "4s"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["time_budget"] == 4 and len(metrics["total_epochs"]) == 3
    for extra, message in [
        (["--time", "soon"], "--time 'soon' is not a duration"),
        (["--time", "4s", "--epochs", "1,1,1"], "give one of them"),
    ]:
        result = CliRunner().invoke(main, [*args[:3], str(tmp_path / "other"), *extra])
        assert result.exit_code == 1
        assert message in result.output


def test_the_last_stage_is_fitted_to_the_deadline_from_the_measured_epochs(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("picmap.train.time.perf_counter", lambda: clock[0])
    trainer = _trainer((3, 0, 5))  # 2 steps an epoch
    trainer.net.register_forward_hook(lambda *_: clock.__setitem__(0, clock[0] + 1.0))
    trainer.deadline = 20.0  # one forward pass a step, 1 s each on the fake clock: 2 s an epoch
    losses = trainer.run()
    # Stage 1 took 6 s, so 14 s are left: 7 epochs of 2 s, not the 5 planned.
    assert trainer.config.stages[2].epochs == 7 and len(losses[2]) == 7
    assert clock[0] == pytest.approx(20.0, abs=2.5)  # the final checks add a few passes
