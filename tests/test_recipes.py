import json

import pytest

from picmap import TSimCNE, datasets
from picmap.recipes import RECIPES, Recipe, recipe_for_images, resolve_recipe


def test_named_recipes_and_their_json_round_trip():
    assert resolve_recipe("paper") == Recipe(0.03, 1e-3, (0.2, 1.0), "random")
    custom = Recipe(lr_per_256=0.5, crop_scale=(0.5, 1), readout_init="pca")
    assert resolve_recipe(custom.to_json()) == custom
    features = Recipe(neighbour_space="features", neighbour_refresh=3, epoch_shares=(2, 1, 1))
    assert resolve_recipe(json.loads(json.dumps(features.to_json()))) == features
    assert set(RECIPES) >= {"paper", "picmap", "neighbours"}


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ("fast", "recipe='fast' is not known; use one of .*'auto'"),
        (
            "auto",
            r"recipe='auto' is not known; use one of "
            r"\['colour', 'neighbours', 'paper', 'picmap'\]$",
        ),
        ({"lr_per_256": -1}, "lr_per_256=-1 must be a positive number"),
        ({"crop_scale": [0.5, 0.2]}, "needs 0 < low ≤ high ≤ 1"),
        ({"readout_init": "zeros"}, "readout_init='zeros' is not one of"),
        ({"warmup": 3}, "unknown settings"),
        ({"neighbour_share": 1.5}, "neighbour_share=1.5 must be in"),
        ({"neighbour_share": "all"}, "neighbour_share='all' must be in"),
        ({"neighbour_k": 0}, "neighbour_k=0 must be an int ≥ 1"),
        ({"neighbour_space": "labels"}, "neighbour_space='labels' is not one of"),
        ({"neighbour_refresh": -1}, "neighbour_refresh=-1 must be an int ≥ 0"),
        ({"hue": 0.7}, r"hue=0.7 must be a number in \[0, 0.5\]"),
        ({"grayscale_p": True}, "grayscale_p=True must be a number"),
        ({"epoch_shares": [0, 1, 1]}, "epoch_shares=.* the first > 0"),
        ({"epoch_shares": [1, 1]}, "epoch_shares=.* must be three numbers"),
    ],
)
def test_bad_recipes_are_refused(recipe, message):
    with pytest.raises(ValueError, match=message):
        resolve_recipe(recipe)


@pytest.mark.parametrize(
    ("recipe", "lr", "finetune", "crop", "neighbours"),
    [
        ("paper", 0.03, 1e-3, (0.2, 1.0), 0.0),
        ("picmap", 0.12, 0.1, (0.2, 1.0), 0.0),
        ("neighbours", 0.12, 1.0, (1.0, 1.0), 1.0),
        ("colour", 0.12, 0.1, (0.4, 1.0), 0.0),
    ],
)
def test_recipe_sets_the_learning_rates_and_positives(recipe, lr, finetune, crop, neighbours):
    images, _ = datasets.load("digits")
    seen = {}

    def keep_stages(trainer) -> None:
        seen["lrs"] = [stage.lr for stage in trainer.config.stages]
        seen["crop"] = trainer.config.augment.crop_scale
        seen["neighbours"] = trainer.config.neighbour_share

    model = TSimCNE("small", recipe=recipe, total_epochs=[1, 0, 0], batch_size=128, verbose=False)
    model.fit(images[:256], on_epoch_end=keep_stages)
    base = lr * 128 / 256
    assert seen["lrs"] == pytest.approx([base, base, base * finetune])
    assert seen["crop"] == crop
    assert seen["neighbours"] == neighbours


def test_auto_recipe_pairs_grey_images_with_neighbours_and_colour_ones_with_views(tmp_path):
    grey, _ = datasets.load("digits")
    colour = grey[..., None].repeat(3, axis=-1)
    assert recipe_for_images("auto", 1, 16) == "neighbours"
    assert recipe_for_images("auto", 1, 15) == "picmap"  # too few for 15 neighbours each
    assert recipe_for_images("auto", 3, 1000) == "colour"
    assert recipe_for_images("auto", 3, 10) == "colour"
    assert recipe_for_images("paper", 1, 1000) == "paper"  # a recipe asked for is kept
    # On CUDA nothing of picmap's is measured: the paper's recipe, never pixel neighbours.
    assert recipe_for_images("auto", 1, 1000, on_gpu=True) == "paper"
    assert recipe_for_images("auto", 3, 1000, on_gpu=True) == "paper"
    shares = []

    def keep_share(trainer) -> None:
        shares.append((trainer.config.neighbour_share, trainer.config.augment.hue))

    for images, chosen, share, hue in [
        (grey, "neighbours", 1.0, 0.1),
        (colour, "colour", 0.0, 0.5),  # the hue turned anywhere: views match by shape
    ]:
        model = TSimCNE("small", total_epochs=[1, 0, 0], batch_size=64, verbose=False)
        model.fit(images[:128], on_epoch_end=keep_share)
        assert (model.recipe, model.recipe_, shares[-1]) == ("auto", chosen, (share, hue))
        model.save(tmp_path / chosen)
        assert TSimCNE.load(tmp_path / chosen).recipe == chosen


def test_a_custom_recipe_is_saved_and_loaded(tmp_path):
    images, _ = datasets.load("digits")
    recipe = Recipe(lr_per_256=0.06, crop_scale=(0.5, 1.0))
    model = TSimCNE("small", recipe=recipe, total_epochs=[1, 0, 0], batch_size=64, verbose=False)
    model.fit(images[:128]).save(tmp_path)
    assert TSimCNE.load(tmp_path).get_params()["recipe"] == recipe.to_json()
    assert resolve_recipe(TSimCNE.load(tmp_path).recipe) == recipe
