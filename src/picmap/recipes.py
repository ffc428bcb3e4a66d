"""Training recipes: the paper's settings, and picmap's for short runs.

A recipe fixes what the estimator's parameters leave open: the learning-rate rule, how fast
stage 3 fine-tunes, the augmentation strength and where positive pairs come from.
``benchmarks/RESULTS.md`` has the experiments behind the recipes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .augment import AugmentConfig

READOUT_INITS = ("random", "pca")
NEIGHBOUR_SPACES = ("pixels", "features")
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
    # Where neighbours are found: "pixels" (before training) or "features": the backbone's own
    # features after stage 1 (which then trains on views of each image alone), found again
    # every ``neighbour_refresh`` epochs of stage 3 (0: never).
    neighbour_space: str = "pixels"
    neighbour_refresh: int = 0
    # Colour jitter: hue shift (≤ 0.5 turns), saturation strength, and the probabilities of
    # jitter and of greyscale (torchvision's ColorJitter / RandomGrayscale).
    hue: float = 0.1
    saturation: float = 0.4
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    # How a time budget is split between the three stages (proportions of their epochs).
    epoch_shares: tuple[float, float, float] = (1000, 50, 450)
    # A pretrained backbone, fine-tuned, learns at this fraction of the learning rate (its
    # features are kept from being overwritten while the new head is still random).
    pretrained_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        for name in ("lr_per_256", "finetune_lr_ratio", "pretrained_lr_ratio"):
            value = getattr(self, name)
            if not _is_number(value) or not value > 0:
                raise ValueError(f"recipe {name}={value!r} must be a positive number")
        share = self.neighbour_share
        if not _is_number(share) or not 0 <= share <= 1:
            raise ValueError(f"recipe neighbour_share={self.neighbour_share!r} must be in [0, 1]")
        if not isinstance(self.neighbour_k, int) or self.neighbour_k < 1:
            raise ValueError(f"recipe neighbour_k={self.neighbour_k!r} must be an int ≥ 1")
        if self.neighbour_space not in NEIGHBOUR_SPACES:
            raise ValueError(
                f"recipe neighbour_space={self.neighbour_space!r} is not one of {NEIGHBOUR_SPACES}"
            )
        if not isinstance(self.neighbour_refresh, int) or self.neighbour_refresh < 0:
            raise ValueError(
                f"recipe neighbour_refresh={self.neighbour_refresh!r} must be an int ≥ 0"
            )
        for name, high in (("hue", 0.5), ("saturation", 1.0), ("jitter_p", 1), ("grayscale_p", 1)):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value <= high:
                raise ValueError(f"recipe {name}={value!r} must be a number in [0, {high}]")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"recipe crop_scale={self.crop_scale!r} needs 0 < low ≤ high ≤ 1")
        object.__setattr__(self, "crop_scale", (float(low), float(high)))
        shares = self.epoch_shares
        if (
            len(shares) != 3
            or not all(map(_is_number, shares))
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
        return AugmentConfig(
            crop_scale=self.crop_scale,
            hue=self.hue,
            saturation=self.saturation,
            jitter_p=self.jitter_p,
            grayscale_p=self.grayscale_p,
        )

    def to_json(self) -> dict:
        """A JSON-ready dict (the inverse of :func:`resolve_recipe` on a dict)."""
        return {
            **asdict(self),
            "crop_scale": list(self.crop_scale),
            "epoch_shares": list(self.epoch_shares),
        }


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


RECIPES = {
    # Böhm, Berens & Kobak (ICLR 2023): lr 0.03 × batch/256, stage 3 at lr/1000.
    "paper": Recipe(),
    # Tuned for short runs (benchmarks/RESULTS.md): 4× the paper's learning rate, and stage 3
    # at a tenth of it, where the paper's thousandth leaves the map almost unchanged.
    "picmap": Recipe(lr_per_256=0.12, finetune_lr_ratio=0.1, epoch_shares=(60, 10, 30)),
    # For colour images: t-SimCNE's augmentation positives, with the colour taken away — the
    # hue turned anywhere on the wheel, stronger saturation changes, jitter on every view and
    # greyscale on half — so that views must match by shape, not by colour; crops of 40–100 %
    # (objects in small images are often not centred). On colour Fashion-MNIST (garments tinted
    # and placed on colour backgrounds), 10 CPU minutes: map kNN 36.7 % against pixel t-SNE's
    # 16.9 %; with the "picmap" recipe's colour jitter the stage-1 features learn colour
    # (20.8 % kNN after 30 epochs, against 47.3 % here after 20; benchmarks/RESULTS.md).
    "colour": Recipe(
        lr_per_256=0.12,
        finetune_lr_ratio=0.1,
        crop_scale=(0.4, 1.0),
        hue=0.5,
        saturation=0.8,
        jitter_p=1.0,
        grayscale_p=0.5,
        epoch_shares=(20, 5, 20),
    ),
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
    recipe: str | Recipe | dict,
    channels: int,
    count: int,
    on_gpu: bool = False,
    frozen: bool = False,
) -> str | Recipe | dict:
    """``recipe``, or for "auto" the named recipe that suits ``count`` images of ``channels``
    channels on this device.

    On a CPU, single-channel images (digits, clothing, scans, cell crops) are mostly aligned
    shapes whose pixel neighbours share content: "neighbours" beats "picmap" on both such
    datasets measured (digits, demo schedule: 95.3 % with the MLP, 96.5 % with the small CNN,
    against 81.4 %; Fashion-MNIST: 80.1 % in 14 CPU minutes, where the best "picmap" map within
    20 was 57 %). Colour images get "colour" (colour Fashion-MNIST, 10 CPU minutes: 36.7 %
    against pixel t-SNE's 16.9 %), and so do collections too small to have ``neighbour_k``
    neighbours each (grey ones "picmap"). On CUDA nothing of picmap's has been measured yet,
    so "auto" is the paper's recipe, the one the paper measured on GPUs. On a ``frozen``
    backbone's features, which no augmentation can vary, every positive is a neighbour in that
    feature space: "neighbours".
    """
    if recipe != AUTO:
        return recipe
    if frozen:
        return "neighbours"
    if on_gpu:
        return "paper"
    if channels != 1:
        return "colour"
    return "neighbours" if count > RECIPES["neighbours"].neighbour_k else "picmap"


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
