"""A folder that appears whole: assembled and locked under a temporary name beside its final one,
then renamed into place.

Run directories and study folders are both made this way, so a folder with the final name always
holds what makes it one. A process killed while assembling leaves ``.NAME.XXXX.partial`` behind;
the next creation of the same name clears it unless a live process still holds its lock.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from ..atomic_files import TEMP_SUFFIX, fsync_dir, make_temp_dir
from .run_lock import RunLock


def half_made(target: Path) -> list[Path]:
    """Folders a killed creation of ``target`` left beside it."""
    return sorted(p for p in target.parent.glob(f".{target.name}.*{TEMP_SUFFIX}") if p.is_dir())


def clear_if_abandoned(folder: Path) -> None:
    """Remove a half-made folder unless a live process is still assembling it."""
    lock = RunLock.try_take(folder)
    if lock is not None:
        lock.release()
        shutil.rmtree(folder, ignore_errors=True)


def create_staged(target: Path, fill: Callable[[Path], None]) -> RunLock:
    """Make ``target`` whole: ``fill(staging)`` writes its contents under the temporary name, then
    it is renamed into place. Returns the folder's lock, held by this process; on any failure
    nothing is left behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in half_made(target):
        clear_if_abandoned(stale)
    # Made with the umask's mode (tempfile.mkdtemp's 0700 would stay with the folder once renamed).
    staging = make_temp_dir(target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX)
    lock = None
    try:
        lock = RunLock.take(staging)
        fill(staging)
        staging.replace(target)
    except BaseException:
        if lock is not None:
            lock.release()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(target.parent)
    return lock
