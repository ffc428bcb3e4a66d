"""Training recipes: the paper's settings, and picmap's for short runs.

A recipe fixes what the estimator's parameters leave open: the learning-rate rule, how fast
stage 3 fine-tunes, the augmentation strength and where positive pairs come from.
``benchmarks/RESULTS.md`` has the experiments behind the recipes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .augment import AugmentConfig

READOUT_INITS = ("random", "pca")
# The recipe (and estimator backbone) name that means: choose from the images.
AUTO = "auto"
# Settings that JSON stores as lists.
_TUPLES = ("crop_scale", "epoch_shares")


@dataclass(frozen=True)
class Recipe:
    """Settings of a training recipe."""

    # Learning rate per 256 images in a batch (the "auto" learning rate scales it linearly).
    lr_per_256: float = 0.03
    # Stage 3 (fine-tuning everything) runs at this fraction of the stage-1 learning rate.
    finetune_lr_ratio: float = 1e-3
    # Smallest and largest area fraction of a random crop.
    crop_scale: tuple[float, float] = (0.2, 1.0)
    # The 2-D readout of stage 2 starts "random" or as the "pca" of the 128-D output.
    readout_init: str = "random"
    # Probability that an image's positive is a view of one of its ``neighbour_k`` nearest
    # neighbours in pixel space instead of a second view of itself (0: augmentations only).
    neighbour_share: float = 0.0
    neighbour_k: int = 15
    # How a time budget is split between the three stages (proportions of their epochs).
    epoch_shares: tuple[float, float, float] = (1000, 50, 450)

    def __post_init__(self) -> None:
        for name in ("lr_per_256", "finetune_lr_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"recipe {name}={value!r} must be a positive number")
        share = self.neighbour_share
        if not isinstance(share, int | float) or isinstance(share, bool) or not 0 <= share <= 1:
            raise ValueError(f"recipe neighbour_share={self.neighbour_share!r} must be in [0, 1]")
        if not isinstance(self.neighbour_k, int) or self.neighbour_k < 1:
            raise ValueError(f"recipe neighbour_k={self.neighbour_k!r} must be an int ≥ 1")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"recipe crop_scale={self.crop_scale!r} needs 0 < low ≤ high ≤ 1")
        object.__setattr__(self, "crop_scale", (float(low), float(high)))
        shares = self.epoch_shares
        if (
            len(shares) != 3
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in shares)
            or min(shares) < 0
            or shares[0] <= 0
        ):
            raise ValueError(
                f"recipe epoch_shares={shares!r} must be three numbers ≥ 0, the first > 0"
            )
        object.__setattr__(self, "epoch_shares", tuple(float(v) for v in shares))
        if self.readout_init not in READOUT_INITS:
            raise ValueError(
                f"recipe readout_init={self.readout_init!r} is not one of {READOUT_INITS}"
            )

    def augment_config(self) -> AugmentConfig:
        """The augmentations this recipe trains with."""
        return AugmentConfig(crop_scale=self.crop_scale)

    def to_json(self) -> dict:
        """A JSON-ready dict (the inverse of :func:`resolve_recipe` on a dict)."""
        return {
            **asdict(self),
            "crop_scale": list(self.crop_scale),
            "epoch_shares": list(self.epoch_shares),
        }


RECIPES = {
    # Böhm, Berens & Kobak (ICLR 2023): lr 0.03 × batch/256, stage 3 at lr/1000.
    "paper": Recipe(),
    # Tuned for short runs (benchmarks/RESULTS.md): 4× the paper's learning rate, and stage 3
    # at a tenth of it, where the paper's thousandth leaves the map almost unchanged.
    "picmap": Recipe(lr_per_256=0.12, finetune_lr_ratio=0.1, epoch_shares=(60, 10, 30)),
    # For aligned images whose pixel distances mean something (digits, Fashion-MNIST, centred
    # cell or object crops): every positive is a view of a pixel-space neighbour, as in
    # contrastive neighbour embeddings (Damrich et al., ICLR 2023), and stage 3 runs at the full
    # learning rate. No random crops: the neighbours already vary the pair, and crops cost the
    # map 2-3 points. Not for photographs, where pixel neighbours share colours, not content.
    "neighbours": Recipe(
        lr_per_256=0.12,
        finetune_lr_ratio=1.0,
        crop_scale=(1.0, 1.0),
        neighbour_share=1.0,
        epoch_shares=(300, 2, 300),
    ),
}


def recipe_for_images(
    recipe: str | Recipe | dict, channels: int, count: int
) -> str | Recipe | dict:
    """``recipe``, or for "auto" the named recipe that suits ``count`` images of ``channels``
    channels.

    Single-channel images (digits, clothing, scans, cell crops) are mostly aligned shapes whose
    pixel neighbours share content: "neighbours" beats "picmap" on both such datasets measured
    (digits, demo schedule: 95.3 % with the MLP, 96.5 % with the small CNN, against 81.4 %;
    Fashion-MNIST: 80.1 % in 14 CPU minutes, where the best "picmap" map within 20 was 57 %).
    Colour images are taken for photographs, where augmentations ("picmap") are what t-SimCNE
    was made for, and so are collections too small to have ``neighbour_k`` neighbours each.
    """
    if recipe != AUTO:
        return recipe
    enough = count > RECIPES["neighbours"].neighbour_k
    return "neighbours" if channels == 1 and enough else "picmap"


def resolve_recipe(recipe: str | Recipe | dict) -> Recipe:
    """The recipe named (or given, or described by a dict from :meth:`Recipe.to_json`)."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        known = {f.name for f in fields(Recipe)}
        if not set(recipe) <= known:
            raise ValueError(f"recipe has unknown settings {sorted(set(recipe) - known)}")
        try:
            pairs = recipe.items()
            return Recipe(**{k: tuple(v) if k in _TUPLES else v for k, v in pairs})
        except (TypeError, ValueError) as err:
            raise ValueError(f"recipe {recipe!r} is not valid: {err}") from None
    if recipe not in RECIPES:
        known = sorted(RECIPES) + ([] if recipe == AUTO else [AUTO])
        raise ValueError(f"recipe={recipe!r} is not known; use one of {known}")
    return RECIPES[recipe]
