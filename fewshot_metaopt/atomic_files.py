"""Writing files so that a reader, or a run killed mid-write, never sees half of one.

Each file is written to a temporary name in its own folder, flushed and fsynced, then
renamed over the target (``os.replace`` is atomic within a file system); the folder is
fsynced too, so the rename itself survives a power cut.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

TEMP_SUFFIX = ".partial"


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file object whose content replaces ``path`` only when the block succeeds."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
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
