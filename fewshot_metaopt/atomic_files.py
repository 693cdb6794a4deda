"""Writing files so that a reader, or a run killed mid-write, never sees half of one.

Each file is written to a temporary name in its own folder, flushed and fsynced, then
renamed over the target (``os.replace`` is atomic within a file system); the folder is
fsynced too, so the rename itself survives a power cut. A write that fails (a full disk, a
read-only folder) leaves the old file as it was, removes its temporary file and raises a
:class:`WriteFailed` naming the file and, for a full disk, the file system.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

TEMP_SUFFIX = ".partial"
# Below this many free bytes a failed write is put down to a full disk: torch's zip writer
# reports ENOSPC as a RuntimeError with no errno.
NEARLY_FULL = 1 << 20


class WriteFailed(OSError):
    """A file could not be written; ``errno`` and ``filename`` are set, the message says why."""

    def __str__(self) -> str:
        return self.strerror


def mount_point(path: Path) -> Path:
    """The mount point of the file system that holds ``path``."""
    path = path.resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path


def write_failure(path: str | os.PathLike, err: BaseException) -> WriteFailed:
    """``err`` (raised while writing ``path``) as one line naming the file and the fix."""
    path = Path(path)
    code = getattr(err, "errno", None)
    if code is None:
        try:
            if shutil.disk_usage(path.parent).free < NEARLY_FULL:
                code = errno.ENOSPC
        except OSError:
            pass
    if code == errno.ENOSPC:
        message = f"no space left on the device mounted at {mount_point(path.parent)} writing {path}; free some space"
    else:
        reason = getattr(err, "strerror", None) or " ".join(str(err).split()) or type(err).__name__
        message = f"cannot write {path}: {reason}"
    return WriteFailed(code or errno.EIO, message, str(path))


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import: reading it means setting it for a moment, which a thread creating a
# file at that moment would notice.
UMASK = _read_umask()


@contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file object whose content replaces ``path`` only when the block succeeds."""
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    except OSError as err:
        raise write_failure(target, err) from None
    try:
        # mkstemp makes the file private (0600); the finished file gets the usual mode.
        os.chmod(tmp, 0o666 & ~UMASK)
        with os.fdopen(fd, "wb") as f:
            try:
                yield f
                f.flush()
                os.fsync(f.fileno())
            except OSError as err:
                raise write_failure(target, err) from None
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_writer(path) as f:
        f.write(text.encode("utf-8"))


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete temporary files a killed process left in ``folder``; returns what went."""
    gone = sorted(folder.glob(f".*{TEMP_SUFFIX}"))
    for path in gone:
        path.unlink(missing_ok=True)
    return gone
