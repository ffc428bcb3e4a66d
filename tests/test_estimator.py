import json

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from torch import nn

from picmap import TSimCNE, datasets
from picmap.evaluate import knn_accuracy
from picmap.train import DivergedError


@pytest.fixture(scope="module")
def digits():
    images, labels = datasets.load("digits")
    return images, labels


def _quick(**kw):
    params = dict(
        backbone="small",
        total_epochs=[1, 1, 1],
        batch_size=64,
        hidden_dim=64,
        seed=0,
        verbose=False,
    )
    params.update(kw)
    return TSimCNE(**params)


@pytest.fixture(scope="module")
def fitted(digits):
    images, labels = digits
    model = _quick()
    Y = model.fit_transform(images[:300], labels[:300])
    return model, Y


def test_fit_transform_gives_float32_map(fitted):
    model, Y = fitted
    assert Y.shape == (300, 2) and Y.dtype == np.float32
    assert np.isfinite(Y).all()
    assert model.image_size_ == 8 and model.channels_ == 1
    assert [len(x) for x in model.loss_history_] == [1, 1, 1]


def test_transform_places_new_images_deterministically(fitted, digits):
    model, Y = fitted
    images, _ = digits
    again = model.transform(images[:300])
    assert np.allclose(again, Y, atol=1e-5)
    new = model.transform(images[300:310])
    assert new.shape == (10, 2)


def test_save_load_round_trip(tmp_path, fitted, digits):
    model, Y = fitted
    model.save(tmp_path / "run")
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"model.safetensors", "config.json"}
    loaded = TSimCNE.load(tmp_path / "run")
    assert np.allclose(loaded.transform(digits[0][:300]), Y, atol=1e-5)
    assert loaded.get_params()["total_epochs"] == [1, 1, 1]


def test_rgb_images_on_a_grey_map_are_converted(fitted, digits):
    model, _ = fitted
    grey = digits[0][:5]
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    assert np.allclose(model.transform(rgb), model.transform(grey), atol=1e-4)


def test_same_seed_same_map_other_seed_other_map(digits):
    images = digits[0][:200]
    a = _quick(seed=3).fit_transform(images)
    b = _quick(seed=3).fit_transform(images)
    c = _quick(seed=4).fit_transform(images)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_out_dim_3_and_cosine_metric(digits):
    Y = _quick(out_dim=3, metric="cosine").fit_transform(digits[0][:200])
    assert Y.shape == (200, 3)


def test_custom_backbone(tmp_path, digits):
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
    model = _quick(backbone=backbone, feature_dim=16)
    Y = model.fit_transform(digits[0][:200])
    model.save(tmp_path / "m")
    with pytest.raises(ValueError, match="custom backbone: pass backbone="):
        TSimCNE.load(tmp_path / "m")
    fresh = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
    loaded = TSimCNE.load(tmp_path / "m", backbone=fresh)
    assert np.allclose(loaded.transform(digits[0][:200]), Y, atol=1e-5)


def test_tiny_backbone_saves_and_loads_by_name(tmp_path, digits):
    model = _quick(backbone="tiny")
    Y = model.fit_transform(digits[0][:200])
    assert model.model_.head.hidden[0].in_features == 64
    small_size = sum(p.numel() for p in _quick().fit(digits[0][:200]).model_.backbone.parameters())
    assert sum(p.numel() for p in model.model_.backbone.parameters()) < small_size / 3
    model.save(tmp_path / "m")
    assert np.allclose(TSimCNE.load(tmp_path / "m").transform(digits[0][:200]), Y, atol=1e-5)


def test_mlp_backbone_reads_the_pixels_and_saves_and_loads_by_name(tmp_path, digits):
    images = digits[0][:200]
    model = _quick(backbone="mlp")
    Y = model.fit_transform(images)
    assert model.model_.backbone[1].in_features == 8 * 8  # one input per pixel
    model.save(tmp_path / "m")
    loaded = TSimCNE.load(tmp_path / "m")
    assert np.allclose(loaded.transform(images), Y, atol=1e-5)
    # Images of another size are resized to the fitted one, so the MLP still takes them.
    assert loaded.transform(images[:50].repeat(2, axis=1).repeat(2, axis=2)).shape == (50, 2)


@pytest.mark.parametrize(
    ("kw", "colour", "backbone"),
    [
        ({}, False, "mlp"),  # grey: the neighbours recipe, and the MLP on a CPU
        ({}, True, "tiny"),  # colour: the colour recipe, the tiny CNN (fast enough on a CPU)
        ({"recipe": "neighbours"}, True, "mlp"),  # pixel neighbours: the MLP, grey or not
        ({"recipe": "picmap"}, False, "small"),  # augmentations want a CNN
        ({"image_size": 72}, False, "small"),  # 72² > 64² pixels: too wide for the MLP
    ],
)
def test_auto_backbone_on_a_cpu_follows_recipe_and_size(tmp_path, digits, kw, colour, backbone):
    images = digits[0][:64]
    if colour:
        images = np.repeat(images[..., None], 3, axis=-1)
    model = _quick(backbone="auto", total_epochs=[0, 0, 0], device="cpu", **kw).fit(images)
    assert model.backbone_ == backbone
    model.save(tmp_path)
    assert TSimCNE.load(tmp_path).backbone == backbone  # saved as chosen, not as "auto"


def test_tensor_input_nchw(digits):
    x = torch.from_numpy(digits[0][:100]).unsqueeze(1)
    assert _quick(batch_size=32).fit_transform(x).shape == (100, 2)


# -- bad input -----------------------------------------------------------------------------------


def test_transform_before_fit():
    with pytest.raises(NotFittedError, match="not fitted yet"):
        _quick().transform(np.zeros((2, 8, 8), np.uint8))


def test_one_image_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        _quick().fit(np.zeros((1, 8, 8), np.uint8))


def test_batch_larger_than_data(digits):
    with pytest.raises(ValueError, match="batch_size=64 is larger than the data"):
        _quick().fit(digits[0][:20])


@pytest.mark.parametrize(
    ("param", "match"),
    [
        ({"total_epochs": [1, 2]}, "total_epochs"),
        ({"metric": "l2"}, "metric='l2'"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"backbone": "vgg"}, "backbone='vgg'"),
        ({"backbone": nn.Identity()}, "feature_dim"),
    ],
)
def test_bad_parameters(param, match, digits):
    with pytest.raises(ValueError, match=match):
        _quick(**param).fit(digits[0][:100])


def test_nan_loss_stops_with_epoch(digits):
    model = _quick(learning_rate=1e30, grad_clip=None, total_epochs=[2, 0, 0])
    with pytest.raises(DivergedError, match=r"stage 1, epoch 1"):
        model.fit(digits[0][:200])


def test_tampered_config_is_refused(tmp_path, fitted):
    model, _ = fitted
    model.save(tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    config = json.loads(config_path.read_text())
    config["params"]["hidden_dim"] = 10**9
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match"):
        TSimCNE.load(tmp_path / "m")
    config["params"]["evil"] = 1
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown parameters"):
        TSimCNE.load(tmp_path / "m")


# -- end to end ----------------------------------------------------------------------------------


def test_training_beats_chance_and_untrained_network(digits):
    images, labels = digits
    params = dict(batch_size=256, hidden_dim=256, seed=0, verbose=False, learning_rate=0.06)
    untrained = TSimCNE("small", total_epochs=[0, 0, 0], **params).fit_transform(images)
    trained = TSimCNE("small", total_epochs=[12, 3, 3], **params).fit_transform(images)
    acc_untrained = knn_accuracy(untrained, labels)
    acc_trained = knn_accuracy(trained, labels)
    assert acc_trained > 0.4  # chance is 0.1
    assert acc_trained > acc_untrained + 0.1
