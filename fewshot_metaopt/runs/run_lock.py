"""One process at a time in a run directory.

``fcntl.flock`` on the directory itself: the lock belongs to the open directory, so the
operating system releases it when the process ends however it ends (``kill -9`` included), a
lock left by a dead process never blocks the next one, and the run directory holds no lock
file. The lock stays with the directory when it is renamed (a new run is locked while it is
still assembled under its temporary name).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import RunError


class RunLock:
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def try_take(cls, folder: Path) -> "RunLock | None":
        """The lock of ``folder``, or ``None`` when another process holds it."""
        fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(fd)

    @classmethod
    def take(cls, folder: Path) -> "RunLock":
        """The lock of ``folder``, or a one-line refusal."""
        lock = cls.try_take(folder)
        if lock is None:
            raise RunError(f"{folder} is in use by another fewshot-metaopt process (training or resuming it); "
                           "wait for it to end (or stop it), then --resume")
        return lock

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
