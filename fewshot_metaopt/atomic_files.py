"""Writing files so that a reader, or a run killed mid-write, never sees half of one.

Each file is written to a temporary name in its own folder, flushed and fsynced, then
renamed over the target (``os.replace`` is atomic within a file system); the folder is
fsynced too, so the rename itself survives a power cut. A write that fails (a full disk, a
read-only folder) leaves the old file as it was, removes its temporary file and raises a
:class:`WriteFailed` naming the file and, for a full disk, the file system.

Temporary files and folders are made by :func:`make_temp_file` and :func:`make_temp_dir`
rather than :mod:`tempfile`, whose ``mkstemp``/``mkdtemp`` make them private (0600/0700):
renamed into place, they would keep that mode, and a colleague sharing a cluster could not
read a run's results or share the data cache. Ours are created with 0666/0777 and the kernel
applies the umask (or the folder's default ACL), as for any ``open`` or ``mkdir``.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, TypeVar

TEMP_SUFFIX = ".partial"
T = TypeVar("T")
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


# Random characters in a temporary name, and how many names to try before giving up: the
# chance that one is taken is nil unless something fills the folder with such names.
NAME_BYTES = 6
NAME_ATTEMPTS = 100


def _created(create: Callable[[Path], T], folder: str | os.PathLike, prefix: str, suffix: str) -> T:
    """``create(path)`` for the first random name in ``folder`` that is not taken."""
    folder = Path(folder)
    for _ in range(NAME_ATTEMPTS):
        try:
            return create(folder / f"{prefix}{secrets.token_hex(NAME_BYTES)}{suffix}")
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temporary name {prefix}*{suffix} in {folder} after "
                          f"{NAME_ATTEMPTS} tries; clear that folder of such names", str(folder))


def make_temp_file(folder: str | os.PathLike, prefix: str = "", suffix: str = "") -> tuple[int, Path]:
    """A new empty file in ``folder`` under a random name, open for writing: ``(fd, path)``.

    Like ``tempfile.mkstemp`` (created exclusively, never through a link), but with the mode a
    plain ``open`` gives: 0666 less the umask.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    return _created(lambda path: (os.open(path, flags, 0o666), path), folder, prefix, suffix)


def make_temp_dir(folder: str | os.PathLike, prefix: str = "", suffix: str = "") -> Path:
    """A new empty folder in ``folder`` under a random name; like ``tempfile.mkdtemp``, but
    with the mode a plain ``mkdir`` gives: 0777 less the umask."""

    def create(path: Path) -> Path:
        os.mkdir(path, 0o777)
        return path

    return _created(create, folder, prefix, suffix)


@contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file object whose content replaces ``path`` only when the block succeeds."""
    target = Path(path)
    try:
        fd, tmp = make_temp_file(target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX)
    except OSError as err:
        raise write_failure(target, err) from None
    try:
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
