"""Named datasets: digits (bundled with scikit-learn), Fashion-MNIST, CIFAR-10 and CIFAR-100.

Every loader returns numpy arrays: ``uint8`` images ``N×H×W`` (grayscale) or ``N×H×W×3`` and
``int64`` labels, ready for :func:`picmap.data.sources.to_store`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torchvision import datasets as tv_datasets

from .sources import read_idx

SPLITS = ("train", "test", "all")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

_Split = tuple[np.ndarray, np.ndarray, list[str]]  # images, labels, class names


def cache_dir() -> Path:
    """picmap's download folder: ``$XDG_CACHE_HOME/picmap``, by default ``~/.cache/picmap``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "picmap"


@dataclass(frozen=True)
class _Spec:
    """How to read one named dataset and where its files live."""

    description: str
    splits: tuple[str, ...]
    read: Callable[[Path | None, str, bool], _Split]  # (root, split, download)
    locate: Callable[[Path | None], tuple[bool, str]]  # (files present?, where they are/go)


# -- digits -------------------------------------------------------------------------------------


def _read_digits(root: Path | None, split: str, download: bool) -> _Split:
    from sklearn.datasets import load_digits  # imported here: scikit-learn is slow to import

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    return images, digits.target.astype(np.int64), [str(name) for name in digits.target_names]


# -- Fashion-MNIST ------------------------------------------------------------------------------


def _fashion_candidates(root: Path | None) -> list[Path]:
    """Folders searched for the four IDX files (torchvision's download layout included)."""
    bases = [root] if root is not None else [FASHION_MNIST_DIR, cache_dir() / "fashion-mnist"]
    return [folder for base in bases for folder in (base, base / "FashionMNIST" / "raw")]


def _idx_file(folder: Path, name: str) -> Path | None:
    """``name`` (gzip) or the same file unpacked, if either is in ``folder``."""
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _find_fashion(root: Path | None) -> Path | None:
    names = [name for pair in FASHION_MNIST_FILES.values() for name in pair]
    for folder in _fashion_candidates(root):
        if all(_idx_file(folder, name) for name in names):
            return folder
    return None


def _read_fashion(root: Path | None, split: str, download: bool) -> _Split:
    if download and _find_fashion(root) is None:
        _download(tv_datasets.FashionMNIST, root or cache_dir() / "fashion-mnist", "Fashion-MNIST")
    folder = _find_fashion(root)
    if folder is None:
        files = ", ".join(name for pair in FASHION_MNIST_FILES.values() for name in pair)
        raise ValueError(
            f"Fashion-MNIST not found in {_fashion_location(root)}. Install it with "
            "`apt-get install dataset-fashion-mnist`, pass root= a folder holding the four "
            f"files {files}, or pass download=True (CLI: --download)"
        )
    image_path, label_path = (_idx_file(folder, name) for name in FASHION_MNIST_FILES[split])
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{image_path} (shape {images.shape}) and {label_path} (shape {labels.shape}) "
            "are not N×28×28 images with N labels"
        )
    return images.astype(np.uint8), labels.astype(np.int64), list(FASHION_MNIST_CLASSES)


def _fashion_location(root: Path | None) -> str:
    return " or ".join(str(folder) for folder in _fashion_candidates(root))


def _locate_fashion(root: Path | None) -> tuple[bool, str]:
    folder = _find_fashion(root)
    return (True, str(folder)) if folder is not None else (False, _fashion_location(root))


# -- CIFAR --------------------------------------------------------------------------------------


def _cifar_root(root: Path | None) -> Path:
    return root if root is not None else cache_dir() / "cifar"


def _cifar_reader(cls: type[tv_datasets.CIFAR10], title: str) -> Callable:
    def read(root: Path | None, split: str, download: bool) -> _Split:
        folder = _cifar_root(root)
        if download:
            _download(cls, folder, title)
        try:
            # The one place picmap unpickles: torchvision reads the official CIFAR batches,
            # which are distributed as pickles, from a folder the user names (README).
            data = cls(str(folder), train=split == "train")  # trusted-pickle: CIFAR batches
        except RuntimeError:
            raise ValueError(
                f"{title} not found (or damaged) in {folder / cls.base_folder}. Pass "
                f"download=True (CLI: --download) to fetch it, or root= a folder that holds "
                f"{cls.base_folder}/"
            ) from None
        return np.asarray(data.data), np.asarray(data.targets, dtype=np.int64), list(data.classes)

    return read


def _cifar_locator(cls: type[tv_datasets.CIFAR10]) -> Callable[[Path | None], tuple[bool, str]]:
    def locate(root: Path | None) -> tuple[bool, str]:
        folder = _cifar_root(root) / cls.base_folder
        names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return all((folder / name).is_file() for name in names), str(folder)

    return locate


def _download(cls: type, root: Path, title: str) -> None:
    """Fetch a torchvision dataset into ``root``; network failures become a ValueError."""
    try:
        cls(str(root), train=True, download=True)  # trusted-pickle: loads CIFAR after download
    except (OSError, RuntimeError) as error:
        raise ValueError(f"could not download {title} into {root}: {error}") from None


# -- the registry -------------------------------------------------------------------------------

_DATASETS = {
    "digits": _Spec(
        "1,797 8×8 grayscale handwritten digits, 10 classes (bundled with scikit-learn)",
        ("all",),
        _read_digits,
        lambda root: (True, "bundled with scikit-learn"),
    ),
    "fashion-mnist": _Spec(
        "70,000 28×28 grayscale clothing images, 10 classes (60,000 train + 10,000 test)",
        ("train", "test"),
        _read_fashion,
        _locate_fashion,
    ),
    "cifar10": _Spec(
        "60,000 32×32 colour images, 10 classes (50,000 train + 10,000 test)",
        ("train", "test"),
        _cifar_reader(tv_datasets.CIFAR10, "CIFAR-10"),
        _cifar_locator(tv_datasets.CIFAR10),
    ),
    "cifar100": _Spec(
        "60,000 32×32 colour images, 100 classes (50,000 train + 10,000 test)",
        ("train", "test"),
        _cifar_reader(tv_datasets.CIFAR100, "CIFAR-100"),
        _cifar_locator(tv_datasets.CIFAR100),
    ),
}
_ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}


def _canonical_name(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(_DATASETS)}")
    return key


def is_known(name: str) -> bool:
    """Whether ``name`` (any case, aliases included) is a named dataset."""
    key = str(name).strip().lower().replace("_", "-")
    return _ALIASES.get(key, key) in _DATASETS


def has_test_split(name: str) -> bool:
    """Whether the named dataset has a held-out test split (``split="all"`` puts it last)."""
    return "test" in _DATASETS[_canonical_name(name)].splits


def load(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    split: str = "all",
    download: bool = False,
    return_class_names: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, list[str]]:
    """Load a named dataset as ``(images, labels)`` (plus ``class_names`` if asked).

    Args:
        name: ``"digits"``, ``"fashion-mnist"`` (or ``"fashion_mnist"``), ``"cifar10"`` or
            ``"cifar100"``; case does not matter.
        root: folder holding the dataset's files. Defaults: digits needs none (bundled with
            scikit-learn); fashion-mnist looks in ``/usr/share/datasets/fashion-mnist`` (Debian
            package ``dataset-fashion-mnist``) and ``~/.cache/picmap/fashion-mnist``; CIFAR looks
            in ``~/.cache/picmap/cifar`` (``$XDG_CACHE_HOME`` replaces ``~/.cache``).
        split: ``"train"``, ``"test"`` or ``"all"`` (train then test). digits has no split:
            only ``"all"`` is accepted.
        download: fetch missing files (fashion-mnist, CIFAR) through torchvision into ``root``.
        return_class_names: also return the name of each class (index = label).

    Returns:
        ``uint8`` images ``N×H×W`` (grayscale) or ``N×H×W×3``, ``int64`` labels of length N,
        and, when asked, the class names.
    """
    key = _canonical_name(name)
    spec = _DATASETS[key]
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not known; use one of {', '.join(SPLITS)}")
    if split not in spec.splits and split != "all":
        raise ValueError(f"{key} has no train/test split; use split='all'")
    folder = None if root is None else Path(root).expanduser()
    parts = [
        spec.read(folder, part, download) for part in (spec.splits if split == "all" else (split,))
    ]
    images = np.concatenate([part[0] for part in parts])
    labels = np.concatenate([part[1] for part in parts])
    if return_class_names:
        return images, labels, parts[0][2]
    return images, labels


def available(root: str | os.PathLike | None = None) -> list[dict[str, str | bool]]:
    """Describe every named dataset and whether it can be loaded offline now.

    Each entry has ``name``, ``description``, ``offline`` (files present, or bundled) and
    ``location`` (where the files were found, or where they are looked for).
    """
    folder = None if root is None else Path(root).expanduser()
    entries = []
    for key, spec in _DATASETS.items():
        offline, location = spec.locate(folder)
        entries.append(
            {
                "name": key,
                "description": spec.description,
                "offline": offline,
                "location": location,
            }
        )
    return entries
