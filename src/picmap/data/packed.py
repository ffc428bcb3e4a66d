"""Packed images: a folder decoded once into one uint8 ``.npy`` file that is memory-mapped.

:func:`pack` decodes chunk by chunk, so its memory use is bounded by the chunk, not by the
dataset. :func:`open_packed` maps the file instead of reading it: processes on one machine (e.g.
under torchrun) share one copy through the OS page cache, and data larger than memory is read
from disk as batches need it. Labels, class names and file names live in a JSON sidecar next to
the array (``images.npy`` → ``images.json``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from tqdm.auto import tqdm

from .._io import atomic_path, atomic_write, write_text_atomic
from .sources import (
    _PROGRESS_MIN,
    _bombs_as_errors,
    _check_failures,
    _check_label_count,
    _check_options,
    _decoder,
    _is_file_source,
    _kept_info,
    _Labels,
    _list_files,
    _report_skipped,
    _scan,
    _size_rule,
    _stack,
    _try_each,
    encode_labels,
    to_store,
)
from .store import ImageStore

_FORMAT = "picmap-packed"
_VERSION = 1


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The JSON file next to a packed ``.npy`` that holds its labels and names."""
    return Path(path).with_suffix(".json")


def is_packed(source: Any) -> bool:
    """Whether ``source`` is a path to a ``.npy`` file with a sidecar, as :func:`pack` makes."""
    if not isinstance(source, str | os.PathLike):
        return False
    path = Path(source)
    return path.suffix == ".npy" and path.is_file() and sidecar_path(path).is_file()


def pack(
    source: Any,
    path: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    labels: Sequence | np.ndarray | None = None,
    on_error: str = "skip",
    chunk_size: int = 4096,
    verbose: bool = True,
) -> Path:
    """Decode ``source`` once into the ``.npy`` file ``path`` and its JSON sidecar.

    ``source``, ``image_size``, ``labels`` and ``on_error`` mean what they mean for
    :func:`~picmap.data.sources.to_store`, and the packed file opens (with :func:`open_packed`
    or ``to_store(path)``) as the store ``to_store(source, …)`` would give. Folders and file
    lists are decoded ``chunk_size`` images at a time, so memory use is bounded by the chunk,
    not the dataset; a first pass over the headers picks the image size and the channels (RGB
    when any image is in colour, even one whose pixels then turn out unreadable). In-memory
    sources are converted as a whole by ``to_store``.

    Both files are written atomically, the sidecar first: the ``.npy`` appears at ``path`` only
    when complete. Returns ``path``.
    """
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"the packed file {path} must end in .npy")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer):
        raise TypeError(f"chunk_size={chunk_size!r} must be an int (images decoded at a time)")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be at least 1")
    if not _is_file_source(source) or is_packed(source):
        store = to_store(source, labels, image_size=image_size, on_error=on_error, verbose=verbose)
        with atomic_write(path) as file:
            np.save(file, np.ascontiguousarray(store.images.numpy()))
            info = (store.labels, store.class_names, store.file_names)
            write_text_atomic(sidecar_path(path), _sidecar(store.images.shape, *info))
        return path
    _check_options(image_size, on_error)
    given = None if labels is None else encode_labels(labels)
    files, found, what = _list_files(source, given)
    with atomic_path(path) as tmp:
        sidecar = _pack_files(tmp, files, found, what, image_size, on_error, chunk_size, verbose)
        write_text_atomic(sidecar_path(path), sidecar)
    return path


def _pack_files(
    tmp: Path,
    files: list[Path],
    labels: _Labels | None,
    what: str,
    image_size: int | None,
    on_error: str,
    chunk_size: int,
    verbose: bool,
) -> str:
    """Decode ``files`` chunk by chunk into a ``.npy`` at ``tmp``; return the sidecar's text."""
    if labels is not None:
        _check_label_count(labels[0], len(files))
    failed: dict[int, str] = {}
    kept: list[int] = []
    with _bombs_as_errors():
        headers = _scan(files, failed, on_error, verbose)
        if not headers:
            _report_skipped(files, failed, what, kept_any=False)
        size = image_size or _size_rule([size for size, _ in headers.values()])
        channels = 1 if all(gray for _, gray in headers.values()) else 3
        shape = (len(headers), channels, size, size)
        array = open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        decode, disable = _decoder(size), not verbose or len(files) < _PROGRESS_MIN
        with tqdm(total=len(files), desc="packing", unit="img", disable=disable) as bar:
            for start in range(0, len(files), chunk_size):
                span = range(start, min(start + chunk_size, len(files)))
                images = _try_each(decode, files, failed, "decoding", False, span)
                _check_failures(files, failed, on_error)
                if images:
                    order = sorted(images)
                    # A grayscale chunk in an RGB array broadcasts its channel to R, G and B,
                    # which is what PIL's convert("RGB") does in to_store.
                    chunk = _stack([images[i] for i in order]).numpy()
                    array[len(kept) : len(kept) + len(order)] = chunk
                    kept += order
                bar.update(len(span))
        array.flush()
        del array
    _report_skipped(files, failed, what, kept_any=bool(kept))
    if len(kept) < len(headers):
        _shrink(tmp, len(kept), chunk_size)
    return _sidecar((len(kept), channels, size, size), *_kept_info(files, labels, kept))


def _shrink(tmp: Path, rows: int, chunk_size: int) -> None:
    """Keep the first ``rows`` images of the ``.npy`` at ``tmp``, copying a chunk at a time.

    The array was sized by the readable headers; this is needed when some of those files then
    failed to decode.
    """
    with atomic_path(tmp) as short_tmp:
        full = open_memmap(tmp, mode="r")
        short = open_memmap(short_tmp, mode="w+", dtype=np.uint8, shape=(rows, *full.shape[1:]))
        for start in range(0, rows, chunk_size):
            short[start : start + chunk_size] = full[start : min(start + chunk_size, rows)]
        short.flush()
        del short, full


def _sidecar(
    shape: Sequence[int],
    labels: np.ndarray | None,
    class_names: list[str] | None,
    file_names: list[str] | None,
) -> str:
    """The sidecar's JSON text."""
    return json.dumps(
        {
            "format": _FORMAT,
            "version": _VERSION,
            "shape": [int(side) for side in shape],
            "labels": None if labels is None else labels.tolist(),
            "class_names": class_names,
            "file_names": file_names,
        }
    )


def open_packed(path: str | os.PathLike[str]) -> ImageStore:
    """The store of a file made by :func:`pack`, memory-mapped: no image is read until used.

    The store's tensor shares memory with the file (nothing is copied), so processes that open
    the same file share one copy through the OS page cache.

    Raises:
        ValueError: naming the file, when the ``.npy`` does not hold uint8 ``N×C×H×W`` images
            (C = 1 or 3, square) or its sidecar is missing, damaged or does not match it.
    """
    path = Path(path)
    remedy = f"make it again with `picmap pack SOURCE {path}`"
    try:
        # Copy-on-write ("c"), not read-only ("r"), because torch.from_numpy warns about arrays
        # that are not writable. Nothing writes to the images, so every page stays shared with
        # the page cache (a write would change a private copy, never the file).
        array = open_memmap(path, mode="c")
    except Exception as err:  # numpy's header parser raises ValueError, OverflowError, TokenError…
        raise ValueError(f"{path} is not a readable .npy file ({err}); {remedy}") from None
    shape = array.shape
    if not (
        array.dtype == np.uint8
        and len(shape) == 4
        and shape[0] > 0
        and shape[1] in (1, 3)
        and shape[2] == shape[3] > 0
        and array.flags.c_contiguous
    ):
        raise ValueError(
            f"{path} holds a {array.dtype} array of shape {shape}, not uint8 images "
            f"N×C×H×W (C = 1 or 3, square, C order); {remedy}"
        )
    labels, class_names, file_names = _read_sidecar(path, shape, remedy)
    return ImageStore(torch.from_numpy(array), labels, class_names, file_names)


def _read_sidecar(
    path: Path, shape: tuple[int, ...], remedy: str
) -> tuple[np.ndarray | None, list[str] | None, list[str] | None]:
    """Labels, class names and file names from the sidecar of ``path``, checked (untrusted)."""
    side = sidecar_path(path)
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(
            f"{path} has no sidecar {side.name} next to it (its labels and names); {remedy}"
        ) from None
    except (OSError, ValueError, RecursionError) as err:  # JSON and UTF-8 errors are ValueErrors
        raise ValueError(f"{side} is not readable JSON ({err}); {remedy}") from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError(f"{side} is not a picmap sidecar; {remedy}")
    if data.get("version") != _VERSION:
        raise ValueError(f"{side} has a version this picmap cannot read; {remedy}")
    if data.get("shape") != list(shape):
        raise ValueError(
            f"{side} does not describe {path} (images of shape {tuple(shape)}): they were not "
            f"packed together; {remedy}"
        )
    count = shape[0]
    class_names = _checked_list(data, "class_names", str, None, side, remedy)
    labels = _checked_list(data, "labels", int, count, side, remedy)
    file_names = _checked_list(data, "file_names", str, count, side, remedy)
    low, high = (0, len(class_names)) if class_names is not None else (-(2**63), 2**63)
    if labels is not None and not all(low <= label < high for label in labels):
        raise ValueError(f"{side} is damaged: a label lies outside {low}..{high - 1}; {remedy}")
    codes = None if labels is None else np.array(labels, dtype=np.int64)
    return codes, class_names, file_names


def _checked_list(
    data: dict, key: str, kind: type, count: int | None, side: Path, remedy: str
) -> list | None:
    """``data[key]``: None, or a list of ``count`` (if given) values of exactly type ``kind``."""
    value = data.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or (count is not None and len(value) != count)
        or not all(type(item) is kind for item in value)
    ):
        many = "" if count is None else f" {count}"
        raise ValueError(
            f"{side} is damaged: {key!r} must be null or a list of{many} {kind.__name__} values; "
            f"{remedy}"
        )
    return value
