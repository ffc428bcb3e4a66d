"""Turn user input (arrays, tensors, Datasets, image folders, file lists) into an ImageStore.

Every image is decoded, converted to grayscale or RGB and resized here, once.
"""

from __future__ import annotations

import gzip
import os
import stat
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from .._io import displayable
from .store import ImageStore

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_PROGRESS_MIN = 500  # show a progress bar from this many images on
_MAX_LISTED = 20  # skipped files named one by one in the warning
_R = TypeVar("_R")
_Labels = tuple[np.ndarray, list[str] | None]  # label codes and class names


def to_store(
    source: Any,
    labels: Sequence | np.ndarray | None = None,
    *,
    image_size: int | None = None,
    on_error: str = "skip",
    verbose: bool = True,
) -> ImageStore:
    """Decode, convert and resize ``source`` into an :class:`ImageStore`.

    Args:
        source: one of
            - a numpy array ``N×H×W`` (grayscale) or ``N×H×W×C`` with C = 1, 3 or 4;
            - a torch tensor ``N×C×H×W`` with C = 1, 3 or 4;
            - a torch ``Dataset`` (anything with ``__len__`` and ``__getitem__``, a list of
              images included) yielding ``image`` or ``(image, label)``, where ``image`` is a
              PIL image, a ``C×H×W`` tensor or an ``H×W`` / ``H×W×C`` array;
            - a path to a folder of images (searched recursively, hidden files and folders
              skipped); when the images sit in sub-folders, the first-level sub-folder names
              are the classes (sorted names → labels 0..K-1, like torchvision's ImageFolder)
              and images lying directly in the folder are left out, with a warning; files
              that are not regular files (FIFOs, devices) count as unreadable. In
              ``file_names`` and class names, bytes of a name that are not valid UTF-8
              become U+FFFD (�), so every name can be written to a file and shown;
            - a path to one image file, or a list of image file paths;
            - a ``.npy`` file made by :func:`~picmap.data.packed.pack` (with its ``.json``
              sidecar): memory-mapped, not read into memory — unless ``image_size`` asks for
              another size than the packed one, which resizes every image in memory;
            - an ImageStore (resized when ``image_size`` asks for another size).

            Pixel values are ``uint8`` (integers in 0..255 are accepted) or floats in [0, 1].
            Alpha is composited on white. The store is grayscale (C=1) when every image is
            grayscale and RGB (C=3) otherwise.
        labels: one label per input image (integers, or names that become ``class_names``);
            overrides labels found in the source. For folders and file lists they follow the
            files in order (sorted paths for a folder), counted before unreadable ones are
            skipped.
        image_size: side of the square output images. **Size rule:** when None and all images
            share one square size, that size is kept; otherwise it is the median of the
            images' shorter sides. Images of another size, or not square, are resized
            (antialiased) so that their shorter side equals ``image_size``, then centre-cropped
            to a square.
        on_error: for folders and file lists, what to do with a file that is not a readable
            image (empty, truncated, not an image, a decompression bomb, no permission):
            ``"skip"`` leaves it out and emits one warning listing every skipped file and why;
            ``"raise"`` raises ``ValueError`` naming the file.
        verbose: show a progress bar when there are many images.

    Raises:
        ValueError: empty input, wrong shape, values out of range, a missing path, a folder
            without images, no readable image left, or labels of the wrong length.
        TypeError: an input kind or dtype that cannot hold images.
    """
    _check_options(image_size, on_error)
    given = None if labels is None else encode_labels(labels)
    if isinstance(source, str | os.PathLike):
        from .packed import is_packed, open_packed  # imported here: packed.py builds on this module

        if is_packed(source):
            source = open_packed(source)
    if _is_file_source(source):
        return _from_files(*_list_files(source, given), image_size, on_error, verbose)
    store = _from_memory(source, image_size, verbose)
    if given is None:
        return store
    _check_label_count(given[0], len(store))
    return ImageStore(store.images, given[0], given[1], store.file_names)


def _from_memory(source: Any, image_size: int | None, verbose: bool) -> ImageStore:
    """Stores, arrays, tensors and Datasets: everything that is not a path."""
    if isinstance(source, ImageStore):
        return _from_store(source, image_size)
    if isinstance(source, np.ndarray):
        return _from_array_batch(_uint8_batch(source, "the array"), image_size)
    if isinstance(source, torch.Tensor):
        return _from_array_batch(_tensor_batch(source), image_size)
    if hasattr(source, "__len__") and hasattr(source, "__getitem__"):
        return _from_dataset(source, image_size, verbose)
    raise TypeError(
        f"cannot read images from a {type(source).__name__}; pass a numpy array, a torch "
        "tensor, a Dataset, a folder path or a list of image file paths"
    )


def _check_options(image_size: int | None, on_error: str) -> None:
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error={on_error!r} is not known; use 'skip' or 'raise'")
    if image_size is None:
        return
    if isinstance(image_size, bool) or not isinstance(image_size, int | np.integer):
        raise TypeError(f"image_size={image_size!r} must be an int (or None to choose it)")
    if image_size < 1:
        raise ValueError(f"image_size={image_size!r} must be a positive number of pixels")


# -- labels -------------------------------------------------------------------------------------


def encode_labels(
    labels: Sequence | np.ndarray, what: str = "labels"
) -> tuple[np.ndarray, list[str] | None]:
    """Integer labels as ``int64``; names (strings) as indices into their sorted unique names."""
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {array.shape}")
    if array.dtype.kind in "iub":
        return array.astype(np.int64), None
    if array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
        return array.astype(np.int64), None
    if array.dtype.kind in "UO" and all(isinstance(x, str) for x in array):
        names, codes = np.unique(array.astype(str), return_inverse=True)
        return codes.astype(np.int64), [str(n) for n in names]
    raise TypeError(f"{what} must be integers or strings (class names), got dtype {array.dtype}")


def _check_label_count(codes: np.ndarray, count: int) -> None:
    if len(codes) != count:
        raise ValueError(
            f"labels has {len(codes)} entries but the input holds {count} images; "
            "pass one label per image"
        )


# -- in-memory arrays ---------------------------------------------------------------------------


def _to_uint8(values: np.ndarray, what: str) -> np.ndarray:
    """Check the dtype and value range of pixel values and return them as ``uint8``."""
    kind = values.dtype.kind
    if kind == "u" and values.dtype.itemsize == 1:
        return values
    if kind == "b":
        return values.astype(np.uint8) * np.uint8(255)
    if kind == "f":
        low, high = float(np.min(values)), float(np.max(values))
        if not (low >= 0.0 and high <= 1.0):  # also catches NaN
            raise ValueError(
                f"{what} holds floats in [{low:g}, {high:g}], but float images must lie in "
                "[0, 1]; divide by 255 (or rescale) first, or pass uint8"
            )
        return np.rint(values * 255).astype(np.uint8)
    if kind in "iu":
        low, high = int(np.min(values)), int(np.max(values))
        if low < 0 or high > 255:
            raise ValueError(
                f"{what} holds {values.dtype} values in [{low}, {high}], but integer images "
                "must lie in 0..255; rescale to uint8 (0..255) or to floats in [0, 1]"
            )
        return values.astype(np.uint8)
    raise TypeError(
        f"{what} has dtype {values.dtype}, which cannot hold pixel values; "
        "pass uint8 (0..255) or floats in [0, 1]"
    )


def _uint8_batch(array: np.ndarray, what: str) -> np.ndarray:
    """Validate an ``N×H×W`` or ``N×H×W×C`` array; return ``uint8`` ``N×H×W×C``, C ∈ {1, 3}."""
    if array.ndim == 3 and array.shape[-1] in (3, 4) and array.shape[1] > 4:
        raise ValueError(
            f"{what} has shape {array.shape}, which looks like one H×W×C image; "
            "add a leading axis (array[None]) to pass it as a batch of one"
        )
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise ValueError(
            f"{what} has shape {array.shape}; images must be N×H×W (grayscale) or N×H×W×C"
        )
    if array.shape[-1] not in (1, 3, 4):
        hint = (
            " (it looks channels-first: use array.transpose(0, 2, 3, 1))"
            if array.shape[1] in (1, 3, 4)
            else ""
        )
        raise ValueError(
            f"{what} has shape {array.shape}; the last axis must be 1, 3 or 4 channels{hint}"
        )
    if min(array.shape) == 0:
        raise ValueError(f"{what} is empty (shape {array.shape}); pass at least one image")
    array = _to_uint8(array, what)
    return _composite_on_white(array) if array.shape[-1] == 4 else array


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """``…×4`` RGBA uint8 → ``…×3`` RGB uint8, transparent parts white."""
    alpha = rgba[..., 3:].astype(np.float32) / 255
    rgb = rgba[..., :3].astype(np.float32) * alpha + 255 * (1 - alpha)
    return np.rint(rgb).astype(np.uint8)


def _tensor_batch(tensor: torch.Tensor) -> np.ndarray:
    """Validate an ``N×C×H×W`` tensor; return ``uint8`` ``N×H×W×C``, C ∈ {1, 3}."""
    if tensor.ndim != 4 or tensor.shape[1] not in (1, 3, 4):
        raise ValueError(
            f"the tensor has shape {tuple(tensor.shape)}; images must be N×C×H×W with "
            "C = 1, 3 or 4 (for one C×H×W image use tensor[None])"
        )
    return _uint8_batch(tensor.detach().cpu().permute(0, 2, 3, 1).numpy(), "the tensor")


def _from_array_batch(batch: np.ndarray, image_size: int | None) -> ImageStore:
    """Store a validated ``uint8`` ``N×H×W×C`` batch, resizing only when needed."""
    _, height, width, _ = batch.shape
    if height == width and image_size in (None, height):
        return ImageStore(torch.from_numpy(batch.transpose(0, 3, 1, 2).copy()))
    images = [Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image) for image in batch]
    size = image_size or _size_rule([(width, height)])
    return ImageStore(_stack([_fit(image, size) for image in images]))


def _from_store(store: ImageStore, image_size: int | None) -> ImageStore:
    if image_size in (None, store.image_size):
        return store
    resized = _from_array_batch(_tensor_batch(store.images), image_size)
    return ImageStore(resized.images, store.labels, store.class_names, store.file_names)


# -- images, one at a time ----------------------------------------------------------------------


def _size_rule(sizes: Sequence[tuple[int, int]]) -> int:
    """The one shared square size if there is one, else the median shorter side."""
    if len(set(sizes)) == 1 and sizes[0][0] == sizes[0][1]:
        return sizes[0][0]
    return max(1, round(float(np.median([min(size) for size in sizes]))))


def _target_mode(image: Image.Image) -> str:
    """``"L"`` for grayscale images, ``"RGB"`` for everything else."""
    return "L" if image.mode in _GRAY_MODES else "RGB"


def _canonical(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to ``L`` or ``RGB``: alpha on white, 16-bit and float scaled."""
    if image.mode in ("L", "RGB"):
        return image
    mode = _target_mode(image)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return Image.fromarray(_scale_deep(np.asarray(image)))
    if "A" in image.mode or "a" in image.mode or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert(mode)
    return image.convert(mode)


def _scale_deep(values: np.ndarray) -> np.ndarray:
    """Pixels of more than 8 bits (16-bit, 32-bit, float) → uint8."""
    high = float(values.max()) if values.size else 0.0
    if values.dtype.kind == "f" and high <= 1.0:
        scale = 255.0
    elif high <= 255:
        scale = 1.0
    else:
        scale = 255.0 / max(high, 65535.0)
    return np.clip(np.rint(values.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def _fit(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` and centre-crop to ``size×size``, in one step."""
    image = _canonical(image)
    width, height = image.size
    if (width, height) == (size, size):
        return image
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    box = (left, top, left + side, top + side)
    return image.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)


def _stack(images: Sequence[Image.Image]) -> torch.Tensor:
    """Square ``L``/``RGB`` images of one size → ``uint8`` ``N×C×H×W`` (RGB if any is)."""
    mode = "L" if all(image.mode == "L" for image in images) else "RGB"
    batch = np.stack(
        [np.asarray(image if image.mode == mode else image.convert(mode)) for image in images]
    )
    batch = batch[:, None] if mode == "L" else batch.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(batch))


# -- Datasets -----------------------------------------------------------------------------------


def _item_image(image: Any, index: int) -> Image.Image:
    """One Dataset image (PIL, ``C×H×W`` tensor or ``H×W[×C]`` array) as a PIL image."""
    what = f"dataset item {index}"
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, torch.Tensor):
        if image.ndim != 3:
            raise ValueError(f"{what} is a tensor of shape {tuple(image.shape)}; need C×H×W")
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3):
            raise ValueError(f"{what} is an array of shape {image.shape}; need H×W or H×W×C")
        array = _uint8_batch(image[None], what)[0]
        return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    raise TypeError(
        f"{what} is a {type(image).__name__}; a Dataset must yield a PIL image, a tensor or "
        "an array, or an (image, label) pair"
    )


def _split_item(item: Any) -> tuple[Any, Any]:
    """``image`` → (image, None); ``(image, label)`` → (image, label)."""
    if isinstance(item, tuple | list):
        if len(item) == 2:
            return item[0], item[1]
        if len(item) == 1:
            return item[0], None
        raise ValueError(f"a Dataset item has {len(item)} parts; yield image or (image, label)")
    return item, None


def _dataset_labels(labels: list, source: Any) -> tuple[np.ndarray | None, list[str] | None]:
    """Labels collected from the items (all or none), with the Dataset's ``classes`` if any."""
    given = [label is not None for label in labels]
    if not any(given):
        return None, None
    if not all(given):
        raise ValueError("some Dataset items have a label and others not; label all or none")
    plain = [label.item() if hasattr(label, "item") else label for label in labels]
    codes, names = encode_labels(plain, "the Dataset's labels")
    classes = getattr(source, "classes", None)
    if names is None and isinstance(classes, Sequence) and len(classes) > codes.max():
        names = [str(name) for name in classes]
    return codes, names


def _from_dataset(source: Any, image_size: int | None, verbose: bool) -> ImageStore:
    count = len(source)
    if count == 0:
        raise ValueError(f"the {type(source).__name__} is empty; pass at least one image")
    images, labels = [], []
    for index in tqdm(
        range(count), desc="reading images", disable=not verbose or count < _PROGRESS_MIN
    ):
        image, label = _split_item(source[index])
        images.append(_item_image(image, index))
        labels.append(label)
    size = image_size or _size_rule([image.size for image in images])
    codes, names = _dataset_labels(labels, source)
    return ImageStore(_stack([_fit(image, size) for image in images]), codes, names)


# -- files and folders --------------------------------------------------------------------------


def _is_file_source(source: Any) -> bool:
    """A path, or a non-empty list of paths."""
    if isinstance(source, str | os.PathLike):
        return True
    return (
        isinstance(source, list | tuple)
        and len(source) > 0
        and all(isinstance(p, str | os.PathLike) for p in source)
    )


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image_file(name: str) -> bool:
    return not _is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted; hidden files and folders skipped."""
    found, seen = [], set()
    for directory, subdirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen:  # a symbolic link loop
            subdirs[:] = []
            continue
        seen.add(real)
        subdirs[:] = [d for d in subdirs if not _is_hidden(d)]
        found += [Path(directory, name) for name in names if _is_image_file(name)]
    return sorted(found, key=lambda path: path.relative_to(folder).parts)


def _list_files(source: Any, labels: _Labels | None) -> tuple[list[Path], _Labels | None, str]:
    """The image files of a path or path list, their labels, and the source's name for messages.

    A folder is searched recursively; its sub-folders, if any, give the labels.
    """
    if not isinstance(source, str | os.PathLike):
        return [Path(p) for p in source], labels, "the file list"
    path = Path(source)
    if not path.exists():
        raise ValueError(f"{path} does not exist; pass an existing folder of images or image file")
    if path.is_file():
        return [path], labels, str(path)
    files = find_images(path)
    if not files:
        raise ValueError(
            f"no image files ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) found in folder "
            f"{path} (searched recursively, hidden files skipped)"
        )
    if labels is None and any(len(file.relative_to(path).parts) > 1 for file in files):
        files, labels = _label_by_folder(path, files)
    return files, labels, f"folder {path}"


def _label_by_folder(folder: Path, files: list[Path]) -> tuple[list[Path], _Labels]:
    """Images in first-level sub-folders, labelled by the sub-folder; loose files left out."""
    nested = [file for file in files if len(file.relative_to(folder).parts) > 1]
    if len(nested) < len(files):
        warnings.warn(
            f"{len(files) - len(nested)} image(s) directly in {folder} were left out: the other "
            "images sit in class sub-folders, so these have no class. Move them into one.",
            stacklevel=4,
        )
    codes, names = encode_labels([file.relative_to(folder).parts[0] for file in nested])
    return nested, (codes, [displayable(name) for name in names or []])


def _thread_map(function: Callable[[Path], Any], items: Sequence[Path], desc: str, verbose: bool):
    """``function`` over ``items`` in a thread pool (PIL releases the GIL while decoding)."""
    workers = min(32, (os.cpu_count() or 1) + 4, max(1, len(items)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(function, items)
        disable = not verbose or len(items) < _PROGRESS_MIN
        return list(tqdm(results, total=len(items), desc=desc, unit="img", disable=disable))


def _try_each(
    function: Callable[[Path], _R],
    files: list[Path],
    failed: dict[int, str],
    desc: str,
    verbose: bool,
    span: range | None = None,
) -> dict[int, _R]:
    """Run ``function`` on the files (those in ``span`` if given) not failed yet.

    Results and new failures (recorded in ``failed``) are keyed by the index into ``files``.
    """

    def attempt(path: Path) -> _R | Exception:
        try:
            return function(path)
        except Exception as error:  # any failure means "not a readable image"
            return error

    todo = [i for i in (range(len(files)) if span is None else span) if i not in failed]
    done = {}
    for i, result in zip(
        todo, _thread_map(attempt, [files[i] for i in todo], desc, verbose), strict=True
    ):
        if isinstance(result, Exception):
            failed[i] = f"{type(result).__name__}: {result}"
        else:
            done[i] = result
    return done


def _open_image(path: Path) -> Image.Image:
    """Open an image file lazily; a FIFO, device or folder is refused before it is read."""
    if not stat.S_ISREG(path.stat().st_mode):  # reading a FIFO would wait forever
        raise ValueError("not a regular file (a folder, FIFO or device)")
    return Image.open(path)


def _read_header(path: Path) -> tuple[tuple[int, int], bool]:
    """An image's size and whether it decodes to grayscale, from its header alone."""
    with _open_image(path) as image:
        return image.size, _target_mode(image) == "L"


def _decoder(size: int) -> Callable[[Path], Image.Image]:
    def decode(path: Path) -> Image.Image:
        with _open_image(path) as image:
            image.draft(_target_mode(image), (size, size))  # JPEG: decode at a reduced scale
            image.load()
            return _fit(ImageOps.exif_transpose(image), size)  # photos: apply EXIF rotation

    return decode


def _from_files(
    files: list[Path],
    labels: _Labels | None,
    what: str,
    image_size: int | None,
    on_error: str,
    verbose: bool,
) -> ImageStore:
    """Decode ``files``; when the size must be chosen, read their headers first."""
    if labels is not None:
        _check_label_count(labels[0], len(files))
    failed: dict[int, str] = {}
    with _bombs_as_errors():
        if image_size is None:
            headers = _scan(files, failed, on_error, verbose)
            image_size = _size_rule([size for size, _ in headers.values()]) if headers else 1
        images = _try_each(_decoder(image_size), files, failed, "decoding", verbose)
    _check_failures(files, failed, on_error)
    _report_skipped(files, failed, what, bool(images))
    keep = sorted(images)
    return ImageStore(_stack([images[i] for i in keep]), *_kept_info(files, labels, keep))


def _kept_info(
    files: list[Path], labels: _Labels | None, keep: list[int]
) -> tuple[np.ndarray | None, list[str] | None, list[str]]:
    """Labels, class names and file names of the files that were kept (indices ``keep``)."""
    names = [displayable(str(files[i])) for i in keep]
    return (None, None, names) if labels is None else (labels[0][keep], labels[1], names)


@contextmanager
def _bombs_as_errors() -> Iterator[None]:
    """PIL only warns about images just over its pixel limit; count those as bombs too."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _scan(
    files: list[Path], failed: dict[int, str], on_error: str, verbose: bool
) -> dict[int, tuple[tuple[int, int], bool]]:
    """The headers (size, grayscale) of the readable files; call it under _bombs_as_errors."""
    headers = _try_each(_read_header, files, failed, "scanning", verbose)
    _check_failures(files, failed, on_error)
    return headers


def _check_failures(files: list[Path], failed: dict[int, str], on_error: str) -> None:
    if on_error == "raise" and failed:
        first = min(failed)
        raise ValueError(f"{files[first]} is not a readable image ({failed[first]})")


def _report_skipped(files: list[Path], failed: dict[int, str], what: str, kept_any: bool) -> None:
    """Warn once about every skipped file; raise when none was readable."""
    if failed:
        _warn_skipped(files, failed, what)
    if not kept_any:
        raise ValueError(f"no readable image in {what} ({len(files)} file(s) tried)")


def _warn_skipped(files: list[Path], failed: dict[int, str], what: str) -> None:
    lines = [f"  {files[i]}: {failed[i]}" for i in sorted(failed)[:_MAX_LISTED]]
    if len(failed) > _MAX_LISTED:
        lines.append(f"  … and {len(failed) - _MAX_LISTED} more")
    warnings.warn(
        f"skipped {len(failed)} of {len(files)} files in {what} that are not readable images "
        "(pass on_error='raise' to stop instead):\n" + "\n".join(lines),
        stacklevel=5,
    )


# -- IDX files ----------------------------------------------------------------------------------

_IDX_TYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not, into a numpy array.

    Raises ``ValueError`` naming the file when it is not a well-formed IDX file.
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise ValueError(f"{path} is a damaged gzip file ({error})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise ValueError(
            f"{path} is not an IDX file: it must start with two zero bytes, a type code "
            f"({', '.join(hex(code) for code in _IDX_TYPES)}) and a number of dimensions ≥ 1"
        )
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated: its header promises {ndim} dimensions")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path} holds {len(raw)} bytes but its header (shape {shape}, {dtype.name}) "
            f"needs {expected}; the file is truncated or damaged"
        )
    data = np.frombuffer(raw, dtype, offset=header)
    return data.astype(dtype.newbyteorder("=")).reshape(shape)
