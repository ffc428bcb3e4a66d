"""A time budget instead of epochs: seconds in, the three stages' epochs out.

The step time is measured on the machine (``Trainer.seconds_per_step``); the epochs keep the
recipe's proportions (``Recipe.epoch_shares``) and fill the budget.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

# With no epochs and no budget on a CPU: 10 minutes for 10,000 images, growing as N^1.5 (twice
# the images, 2.8× the time: each epoch takes twice as long, and a larger map needs more of them
# to settle), at least 20 s and at most 30 minutes. The digits demo (1,797 images) gets 46 s.
REFERENCE = (10_000, 600.0)
GROWTH = 1.5
DEFAULT_RANGE = (20.0, 1800.0)
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|min|m|s)?", re.IGNORECASE)


# A frozen backbone's map trains only the projection head on fixed features, whose steps cost
# a fraction of a network's: it gets this share of the default (60 s for 10,000 images).
FROZEN_SHARE = 0.1


def default_budget(n_images: int, frozen: bool = False) -> float:
    """Seconds of training a CPU fit gets when neither epochs nor a budget are given (on a
    frozen backbone's features: ``FROZEN_SHARE`` of it)."""
    low, high = DEFAULT_RANGE
    images, seconds = REFERENCE
    full = seconds * (n_images / images) ** GROWTH
    return min(high, max(low, full * (FROZEN_SHARE if frozen else 1.0)))


def parse_duration(text: str) -> float:
    """Seconds in ``"600"``, ``"90s"``, ``"10m"``, ``"1h"`` or ``"1h30m"``; ValueError if not."""
    spec = str(text).strip()
    parts = list(_DURATION.finditer(spec))
    if not spec or "".join(m.group(0) for m in parts).replace(" ", "") != spec.replace(" ", ""):
        raise ValueError(f"{text!r} is not a duration; write e.g. 600, 90s, 10m or 1h30m")
    seconds = sum(float(m.group(1)) * _UNITS[(m.group(2) or "s").lower()] for m in parts)
    if not seconds > 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds


def check_budget(value: object) -> float:
    """A budget given in seconds, checked: a positive finite number."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value <= 0:
        raise ValueError(f"time_budget={value!r} must be a positive number of seconds (or None)")
    return float(value)


def epochs_for_budget(
    seconds: float,
    shares: Sequence[float],
    step_seconds: tuple[float, float],
    steps_per_epoch: int,
    readout_only: Sequence[bool] = (False, True, False),
) -> tuple[int, ...]:
    """The stages' epochs, in the proportions ``shares``, whose training takes ``seconds``.

    ``step_seconds`` is the time of a step of the whole network and of a readout-only step.
    A stage with a share gets at least one epoch.
    """
    full, readout = step_seconds
    per_unit = sum(
        share * steps_per_epoch * (readout if only else full)
        for share, only in zip(shares, readout_only, strict=True)
    )
    scale = seconds / per_unit
    return tuple(max(1, round(share * scale)) if share > 0 else 0 for share in shares)


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"`` or ``"1 h 05 min"``."""
    minutes = round(seconds / 60)
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"
