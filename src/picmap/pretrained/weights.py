"""Reading a local weights file into a network, with errors that name the file and the fix."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .._io import read_safetensors
from ..model import state_mismatch

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
# Keys under which training scripts commonly nest the state dict in a .pth file.
_NESTED_KEYS = ("state_dict", "model", "model_state_dict")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, or of a ``.pth``/``.pt``/``.bin`` file read
    with ``torch.load(weights_only=True)`` (which refuses anything but tensors and plain
    containers, so no code in the file runs)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights={str(path)!r}: no such file")
    if path.suffix == ".safetensors":
        tensors, _ = read_safetensors(path, "pass a state dict saved with safetensors")
        return tensors
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(
            f"weights={str(path)!r}: picmap reads {', '.join(WEIGHT_SUFFIXES)} state dicts"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load refuses with UnpicklingError, RuntimeError, …
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"weights={str(path)!r} is not a state dict torch can read safely ({first_line}); "
            "save it as model.state_dict() (or as .safetensors)"
        ) from None
    for key in _NESTED_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(
            f"weights={str(path)!r} holds no state dict (a mapping of names to tensors); "
            "save it as model.state_dict()"
        )
    return dict(state)


def load_weights(network: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``network``, first checking names and shapes (``what`` names the
    weights' source in the error)."""
    # DataParallel and DistributedDataParallel save their wrapped module's names with this.
    if state and all(name.startswith("module.") for name in state):
        state = {name[len("module.") :]: value for name, value in state.items()}
    wrong = state_mismatch(network, state)
    if wrong:
        expected = network.state_dict()
        details = [
            f"{name} ({_shape(state.get(name))} in the file, {_shape(expected.get(name))} "
            "in the network)"
            for name in wrong[:3]
        ]
        raise ValueError(
            f"{what} do not fit this architecture: {len(wrong)} tensors differ, e.g. "
            f"{'; '.join(details)}. Pass weights saved from the same architecture"
        )
    network.load_state_dict(state)


def _shape(tensor: torch.Tensor | None) -> str:
    return "missing" if tensor is None else "×".join(map(str, tensor.shape)) or "scalar"
