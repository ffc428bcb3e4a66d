"""Atomic file writing: a reader sees the old file or the complete new one, never a partial one.

Everything is first written to a hidden temporary file in the target's folder (so ``os.replace``
is atomic), synced to disk, then moved onto the target. If writing raises, the temporary file is
removed and an existing target is left untouched. Missing parent folders are created. A process
killed while writing leaves at most a hidden ``.NAME.XXXXXXXX.tmp`` file behind, which
:func:`remove_stale_temporary_files` clears up.

Files picmap reads back (checkpoints, saved models) are safetensors + JSON, never pickle:
:func:`read_safetensors` turns a damaged file into a ``ValueError`` that names it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import torch
from safetensors.torch import load

_TMP_SUFFIX = ".tmp"
_TMP_NAME = re.compile(r"\..+\.[0-9a-f]{8}\.tmp", re.DOTALL)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for a writer that wants a file name.

    Use it for libraries that write files themselves (``safetensors.save_file``); the file that
    exists at the temporary path when the block ends is moved onto ``path``.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
    except OSError as err:
        _unlink_quietly(tmp)
        message = (
            f"cannot write {displayable(str(target))}: {err.strerror or err} "
            "(check that the folder is writable and the disk has space)"
        )
        raise (OSError(err.errno, message) if err.errno else OSError(message)) from err
    except BaseException:
        _unlink_quietly(tmp)
        raise


@contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "wb", **open_kwargs: Any
) -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; on success move it onto ``path``.

    ``mode`` is ``"wb"`` or ``"w"``; ``open_kwargs`` go to :func:`open` (e.g. ``encoding``).
    The file gets the usual permissions (``0o666`` minus the umask).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with open(fd, mode, **open_kwargs) as file:
            yield file


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as file:
        file.write(data)


def write_text_atomic(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (UTF-8 by default)."""
    with atomic_write(path, "w", encoding=encoding) as file:
        file.write(text)


def read_safetensors(
    path: str | os.PathLike[str], remedy: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors (on the CPU) and the metadata of a safetensors file.

    A missing, truncated or otherwise damaged file raises ``ValueError`` naming it, followed by
    ``remedy`` (what the user can do about it).
    """
    try:
        # One read of one open file: safetensors' own reader opens the path again for the
        # tensors, so a writer renaming a new file into place between the two opens made it
        # pair one file's header with another file's data (seen in the kill/resume test).
        with open(path, "rb") as file:
            data = file.read()
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        metadata = header.get("__metadata__") or {}
        if not isinstance(metadata, dict):
            raise TypeError("its metadata is not a JSON object")
        return load(data), metadata
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise ValueError(f"{path} is not a readable safetensors file ({err}); {remedy}") from None


def remove_stale_temporary_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that writers killed mid-write left in ``folder``.

    Only names of the form :func:`atomic_path` uses are touched. Call it where no other
    writer can be at work in the folder (e.g. when a run starts). Returns what was removed.
    """
    stale = sorted(Path(folder).glob(f".*{_TMP_SUFFIX}"))
    stale = [path for path in stale if _TMP_NAME.fullmatch(path.name) and path.is_file()]
    for path in stale:
        _unlink_quietly(path)
    return stale


def displayable(text: str) -> str:
    """``text`` as valid Unicode: undecodable file-name bytes become U+FFFD (�).

    On POSIX, Python decodes file names that are not valid UTF-8 with surrogate escapes; such
    strings cannot be written to UTF-8 files or drawn. Valid text is returned unchanged.
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
        raw = text.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace")


def _unlink_quietly(path: Path) -> None:
    with suppress(OSError):
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a closed file's data to disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
