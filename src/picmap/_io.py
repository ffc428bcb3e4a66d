"""Atomic file writing: a reader sees the old file or the complete new one, never a partial one.

Everything is first written to a hidden temporary file in the target's folder (so ``os.replace``
is atomic), synced to disk, then moved onto the target. If writing raises, the temporary file is
removed and an existing target is left untouched. Missing parent folders are created.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for a writer that wants a file name.

    Use it for libraries that write files themselves (``safetensors.save_file``); the file that
    exists at the temporary path when the block ends is moved onto ``path``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
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


def _fsync(path: Path) -> None:
    """Flush a closed file's data to disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
