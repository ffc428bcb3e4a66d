"""One picmap process per output folder at a time.

The lock is ``fcntl.flock`` on a hidden file in the folder. The kernel releases it when the
holding process ends in any way, SIGKILL included, so a lock left by a killed run is simply
taken over: there is no process id to check and no stale state to guess about. The file is
never deleted (deleting it would let a second process lock a new file while the first still
holds the old one); it keeps a line naming the current holder, for the refusal message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".picmap.lock"


class FolderBusyError(RuntimeError):
    """Another process holds the folder."""


@contextlib.contextmanager
def exclusive_folder(folder: str | os.PathLike[str], command: str) -> Iterator[None]:
    """Hold ``folder`` (created if missing) for the block; refuse at once if it is held.

    ``command`` names what this process does there (``"picmap fit"``), for the message
    another process gets while this one holds the folder.
    """
    path = Path(folder) / LOCK_FILE
    Path(folder).mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 1000, 0).decode("utf-8", "replace").strip() or "unknown"
            raise FolderBusyError(
                f"{folder} is in use by another picmap process ({holder}); wait for it to end "
                "or choose another output folder"
            ) from None
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        line = f"{command}, pid {os.getpid()} on {socket.gethostname()}, since {started}\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, line.encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
