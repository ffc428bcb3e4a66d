"""Pretrained backbones: every loader with weight files the tests write, offline errors, the
frozen and fine-tune modes, and the feature cache."""

import json
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from sklearn.datasets import load_digits

from picmap import TSimCNE, features
from picmap.pretrained import PretrainedBackbone, build_backbone, check_name, load_backbone

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)


def _save(state, path):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    return net, _save(net.state_dict(), tmp_path_factory.mktemp("w") / "resnet18.safetensors")


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return (d.images * 16).clip(0, 255).astype(np.uint8), d.target


@pytest.fixture(scope="module")
def picmap_folder(tmp_path_factory, digits):
    """A small saved picmap map of the digits (the tiny CNN)."""
    folder = tmp_path_factory.mktemp("source")
    X, _ = digits
    model = TSimCNE("tiny", total_epochs=[2, 1, 1], batch_size=64, seed=0, verbose=False)
    model.fit(X[:400]).save(folder)
    return folder


def _probe_images(n=3, size=20, channels=3):
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, channels, size, size, generator=gen)


# -- torchvision -------------------------------------------------------------------------------


def test_torchvision_backbone_from_a_safetensors_file_is_the_network_without_its_classifier(
    resnet18_file,
):
    net, path = resnet18_file
    backbone = load_backbone("torchvision:resnet18", weights=path, verbose=False)
    assert backbone.feature_dim == 512 and backbone.input_size == 224
    images = _probe_images()
    net.fc = torch.nn.Identity()
    expected = net.eval()(
        (F.interpolate(images, size=224, mode="bilinear") - IMAGENET_MEAN) / IMAGENET_STD
    )
    assert torch.allclose(backbone.eval()(images), expected, atol=1e-5)
    grey = images[:, :1]  # repeated into three channels
    assert torch.allclose(backbone(grey), backbone(grey.expand(-1, 3, -1, -1)))


def test_torchvision_backbone_from_a_pth_file_loads_with_weights_only(tmp_path):
    pth = tmp_path / "resnet18.pth"
    torch.save({"state_dict": torchvision.models.resnet18().state_dict()}, pth)  # nested
    from_pth = load_backbone("torchvision:resnet18", weights=pth, verbose=False)
    reference = torch.load(pth, weights_only=True)["state_dict"]
    assert torch.equal(from_pth.network.conv1.weight, reference["conv1.weight"])


class _NotTensors:
    pass


def test_a_pickle_with_objects_is_refused_not_run(tmp_path):
    pth = tmp_path / "evil.pth"
    torch.save({"weights": _NotTensors()}, pth)
    with pytest.raises(ValueError, match=r"evil\.pth.*not a state dict torch can read safely"):
        load_backbone("torchvision:resnet18", weights=pth)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("torchvision:resnet5", r"no classification network of that name; did you mean resnet50"),
        ("torchvision:resnet18/NOPE", r"has no weights 'NOPE'; it has IMAGENET1K_V1"),
        ("torch:resnet18", r"names no pretrained network"),
        ("timm:", r"names no pretrained network"),
    ],
)
def test_wrong_names_say_what_exists(name, message):
    with pytest.raises(ValueError, match=message):
        load_backbone(name, verbose=False)


def test_a_missing_weights_file_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"weights='.*absent\.safetensors': no such file"):
        load_backbone("torchvision:resnet18", weights=tmp_path / "absent.safetensors")


def test_weights_of_another_architecture_are_refused_with_the_tensors_that_differ(tmp_path):
    path = _save(torchvision.models.resnet34().state_dict(), tmp_path / "resnet34.safetensors")
    with pytest.raises(ValueError, match=r"do not fit this architecture: \d+ tensors differ"):
        load_backbone("torchvision:resnet18", weights=path)


def test_offline_torchvision_says_which_file_is_missing_and_how_to_pass_it(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ValueError) as caught:
        load_backbone("torchvision:resnet18", verbose=False)
    text = str(caught.value)
    assert "https://download.pytorch.org/models/resnet18-" in text
    assert str(tmp_path / "checkpoints" / "resnet18-") in text
    assert "weights=FILE (--weights FILE)" in text and "no network" in text


# -- timm and open_clip (optional extras) -----------------------------------------------------


def test_timm_backbone_from_a_file_matches_timm_without_classifier(tmp_path):
    timm = pytest.importorskip("timm", reason="the timm extra is not installed")
    torch.manual_seed(0)
    full = timm.create_model("test_resnet", pretrained=False)
    path = _save(full.state_dict(), tmp_path / "test_resnet.safetensors")  # with its classifier
    backbone = load_backbone("timm:test_resnet", weights=path, verbose=False)
    cfg = full.pretrained_cfg
    assert backbone.input_size == cfg["input_size"][-1] == 160
    assert backbone.feature_dim == full.num_features
    images = _probe_images()
    full.reset_classifier(0)
    mean = torch.tensor(cfg["mean"]).reshape(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).reshape(1, 3, 1, 1)
    expected = full.eval()((F.interpolate(images, size=160, mode="bilinear") - mean) / std)
    assert torch.allclose(backbone.eval()(images), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"timm has no network of that name; did you mean"):
        load_backbone("timm:test_resnett")


def test_offline_timm_names_the_hub_file_and_the_weights_option(monkeypatch):
    pytest.importorskip("timm", reason="the timm extra is not installed")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"timm/test_resnet\..*not in its cache.*weights=FILE"):
        load_backbone("timm:test_resnet", verbose=False)


@pytest.fixture()
def tiny_clip(tmp_path):
    """A two-layer CLIP registered with open_clip under the name "picmap-test-clip"."""
    open_clip = pytest.importorskip("open_clip", reason="the open_clip extra is not installed")
    config = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "head_width": 16,
            "patch_size": 8,
        },
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    }
    path = tmp_path / "picmap-test-clip.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    return open_clip.create_model("picmap-test-clip", pretrained=None)


@pytest.mark.parametrize("part", ["whole model", "image tower"])
def test_open_clip_backbone_is_the_image_tower(tiny_clip, tmp_path, part):
    state = tiny_clip.state_dict() if part == "whole model" else tiny_clip.visual.state_dict()
    path = _save(state, tmp_path / "clip.safetensors")
    backbone = load_backbone("open_clip:picmap-test-clip", weights=path, verbose=False)
    assert backbone.feature_dim == 16 and backbone.input_size == 32
    images = _probe_images(size=32)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).reshape(1, 3, 1, 1)
    expected = tiny_clip.visual.eval()((images - mean) / std)
    assert torch.allclose(backbone.eval()(images), expected, atol=1e-5)


def test_open_clip_without_weights_or_tag_lists_the_tags(tiny_clip):
    with pytest.raises(ValueError, match=r"names no weights: write open_clip:ViT-B-32/TAG.*laion"):
        load_backbone("open_clip:ViT-B-32")
    with pytest.raises(ValueError, match=r"has no pretrained weights 'nope'; it has openai"):
        load_backbone("open_clip:ViT-B-32/nope")


# -- picmap's own ------------------------------------------------------------------------------


def test_picmap_backbone_gives_the_saved_models_features(picmap_folder, digits):
    X, _ = digits
    backbone = load_backbone(f"picmap:{picmap_folder}", verbose=False)
    saved = TSimCNE.load(picmap_folder)
    ours = backbone.eval()(torch.from_numpy(X[:50]).float()[:, None] / 255)
    assert np.allclose(ours.detach().numpy(), saved.features(X[:50]), atol=1e-5)
    rebuilt = build_backbone(json.loads(json.dumps(backbone.description)))  # no folder needed
    assert set(rebuilt.state_dict()) == set(backbone.state_dict())


def test_picmap_backbone_errors(picmap_folder, tmp_path):
    with pytest.raises(ValueError, match=r"picmap:.*holds no saved picmap model"):
        load_backbone(f"picmap:{tmp_path}")
    with pytest.raises(ValueError, match=r"weights= is for torchvision, timm, open_clip"):
        load_backbone(f"picmap:{picmap_folder}", weights=tmp_path / "x.safetensors")


def test_check_name_splits_library_and_rest():
    assert check_name("picmap:runs/a:b") == ("picmap", "runs/a:b")
    assert check_name("open_clip:ViT-B-32/openai") == ("open_clip", "ViT-B-32/openai")


# -- frozen and fine-tune modes ----------------------------------------------------------------


def _backbone_state(model):
    return {k: v.clone() for k, v in model.model_.backbone.state_dict().items()}


def test_frozen_mode_trains_the_head_alone_and_saves_a_loadable_map(
    picmap_folder, digits, tmp_path
):
    X, _ = digits
    source = load_backbone(f"picmap:{picmap_folder}", verbose=False)
    model = TSimCNE(
        f"picmap:{picmap_folder}",
        backbone_mode="frozen",
        total_epochs=[3, 1, 3],
        seed=0,
        verbose=False,
    ).fit(X[:600])
    assert model.backbone_mode_ == "frozen" and model.recipe_ == "neighbours"
    after = _backbone_state(model)
    assert all(torch.equal(after[k], v) for k, v in source.state_dict().items())
    assert model.embedding_.shape == (600, 2) and np.isfinite(model.embedding_).all()
    # The map placed through the whole network equals the one trained on cached features.
    assert np.allclose(model.transform(X[:600]), model.embedding_, atol=1e-4)
    model.save(tmp_path / "m")
    loaded = TSimCNE.load(tmp_path / "m")
    assert isinstance(loaded.model_.backbone, PretrainedBackbone)
    assert np.allclose(loaded.transform(X[:50]), model.embedding_[:50], atol=1e-4)


def test_finetune_mode_changes_the_backbone_at_the_recipes_lower_rate(picmap_folder, digits):
    X, _ = digits
    source = load_backbone(f"picmap:{picmap_folder}", verbose=False)
    ratios = []

    def record(trainer):
        groups = trainer.optimizer.param_groups
        ratios.append(groups[0]["lr"] / groups[-1]["lr"])

    model = TSimCNE(
        f"picmap:{picmap_folder}",
        backbone_mode="finetune",
        total_epochs=[2, 0, 0],
        batch_size=64,
        seed=0,
        verbose=False,
    )
    model.fit(X[:400], on_epoch_end=record)
    after = _backbone_state(model)
    assert any(not torch.equal(after[k], v) for k, v in source.state_dict().items())
    assert ratios and all(r == pytest.approx(0.1) for r in ratios)


def test_modes_that_cannot_work_are_refused(picmap_folder, digits):
    X, _ = digits
    with pytest.raises(ValueError, match=r"backbone_mode='frozen' needs a pretrained backbone"):
        TSimCNE("mlp", backbone_mode="frozen").fit(X[:100])
    colour = TSimCNE(f"picmap:{picmap_folder}", backbone_mode="frozen", recipe="colour")
    with pytest.raises(ValueError, match=r"frozen backbone's fixed features cannot vary"):
        colour.fit(X[:100])
    with pytest.raises(ValueError, match=r"weights=.* is for a torchvision, timm or open_clip"):
        TSimCNE("tiny", weights="w.safetensors").fit(X[:100])


def test_feature_cache_is_reused_and_invalidated_by_new_images_or_weights(
    picmap_folder, digits, tmp_path, monkeypatch
):
    X, _ = digits
    passes = []
    compute = features.compute_features
    monkeypatch.setattr(
        features,
        "compute_features",
        lambda backbone, images, *a, **k: (
            passes.append(len(images)) or compute(backbone, images, *a, **k)
        ),
    )

    def fit(images, source=picmap_folder):
        params = {"total_epochs": [1, 0, 1], "seed": 0, "verbose": False}
        params["backbone_mode"] = "frozen"
        return TSimCNE(f"picmap:{source}", feature_cache=tmp_path / "cache", **params).fit(images)

    first = fit(X[:300])
    assert len(passes) == 1 and len(list((tmp_path / "cache").glob("features-*"))) == 1
    again = fit(X[:300])
    assert len(passes) == 1  # read back
    assert np.allclose(first.embedding_, again.embedding_)
    changed = X[:300].copy()
    changed[0, 0, 0] ^= 1
    fit(changed)
    assert len(passes) == 2
    other = tmp_path / "other"
    TSimCNE("tiny", total_epochs=[1, 1, 1], seed=5, verbose=False).fit(X[:200]).save(other)
    fit(X[:300], source=other)
    assert len(passes) == 3
    assert len(list((tmp_path / "cache").glob("features-*"))) == 3


def test_a_damaged_cache_file_is_computed_again(picmap_folder, digits, tmp_path):
    X, _ = digits
    backbone = load_backbone(f"picmap:{picmap_folder}", verbose=False)
    images = torch.from_numpy(X[:100])[:, None]
    kept = features.frozen_features(
        backbone, backbone.description, images, torch.device("cpu"), tmp_path, verbose=False
    )
    (path,) = tmp_path.glob("features-*")
    path.write_bytes(path.read_bytes()[:100])
    again = features.frozen_features(
        backbone, backbone.description, images, torch.device("cpu"), tmp_path, verbose=False
    )
    assert torch.allclose(kept, again)


def test_a_stopped_frozen_fit_resumes_to_the_same_map(picmap_folder, digits, tmp_path):
    from picmap.train import Interrupted

    X, _ = digits
    params = {"total_epochs": [2, 1, 2], "seed": 0, "verbose": False, "checkpoint_interval": 0}
    params["backbone_mode"] = "frozen"
    straight = TSimCNE(f"picmap:{picmap_folder}", **params).fit(X[:300])

    def stop_in_stage_3(trainer):
        if trainer.progress.stage == 2:
            trainer.stop_requested = True

    stopped = TSimCNE(f"picmap:{picmap_folder}", checkpoint_dir=tmp_path, **params)
    with pytest.raises(Interrupted):
        stopped.fit(X[:300], on_epoch_end=stop_in_stage_3)
    resumed = TSimCNE(f"picmap:{picmap_folder}", checkpoint_dir=tmp_path, **params).fit(X[:300])
    assert np.allclose(resumed.embedding_, straight.embedding_, atol=1e-5)


def test_a_pretrained_backbone_keeps_images_up_to_its_input_size_on_a_cpu(resnet18_file):
    _, path = resnet18_file
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 48, 48, 3), dtype=np.uint8)  # > 32 px, < 224 px
    params = {"weights": path, "total_epochs": [1, 0, 0], "device": "cpu", "verbose": False}
    model = TSimCNE("torchvision:resnet18", recipe="picmap", backbone_mode="finetune", **params)
    model.fit(images)
    assert model.image_size_ == 48
    assert TSimCNE("tiny", total_epochs=[1, 0, 0], verbose=False).fit(images).image_size_ == 32


def test_auto_freezes_library_networks_and_fine_tunes_picmaps(picmap_folder, resnet18_file, digits):
    X, _ = digits
    params = {"total_epochs": [1, 0, 0], "batch_size": 64, "verbose": False}
    own = TSimCNE(f"picmap:{picmap_folder}", **params).fit(X[:200])
    assert own.backbone_mode_ == "finetune" and own.recipe_ == "neighbours"
    library = TSimCNE("torchvision:resnet18", weights=resnet18_file[1], **params).fit(X[:100])
    assert library.backbone_mode_ == "frozen" and library.recipe_ == "neighbours"
    assert TSimCNE("tiny", **params).fit(X[:100]).backbone_mode_ == "train"
