"""Where preprocessed datasets are kept, and how they are written, verified and rebuilt.

A cache entry is one ``.npz`` file named by what it was built from (a checksum of the
source files and the preprocessing settings), written to a temporary file in the same folder,
flushed to disk and renamed into place: a reader sees the whole file or none. Every data set
goes through :func:`cached`, which verifies an entry before using it, rebuilds a damaged one,
goes on without the cache when the disk refuses to store it, and clears temporary files that
a killed writer left behind.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from ..atomic_files import TEMP_SUFFIX, atomic_writer

log = logging.getLogger(__name__)

CACHE_ENV = "FEWSHOT_METAOPT_CACHE"
# The sha256 of an entry's arrays is stored inside the entry, as one more array, rather than
# in a file beside it: entry and checksum then arrive together in one atomic rename, so no
# reader can pair one writer's arrays with another writer's checksum, a crash cannot leave one
# without the other, and an entry stays a single file to list, copy or delete.
CHECKSUM = "sha256"
# A writer keeps writing to its temporary file until it renames it, so one untouched for this
# long belongs to a killed process; a younger one may be another process's entry in the
# making, and deleting it would make that process fail.
STALE_AFTER_S = 600.0


def default_cache_dir() -> Path:
    """``$FEWSHOT_METAOPT_CACHE``, else ``$XDG_CACHE_HOME/fewshot_metaopt``, else ``~/.cache/...``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fewshot_metaopt"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    return default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()


def file_digest(path: str | os.PathLike, algorithm: str = "md5", chunk: int = 1 << 20) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def tree_digest(folder: str | os.PathLike, pattern: str = "**/*") -> str:
    """A sha256 over every file's relative path and bytes below ``folder``."""
    root = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in root.glob(pattern) if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def key_of(parts: Iterable[str]) -> str:
    """A short stable name for a cache entry built from ``parts``."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def atomic_write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` as an uncompressed ``.npz`` at ``path``, atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(target) as f:
        np.savez(f, **arrays)
    return target


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of a cache entry (no pickles: string arrays are stored as unicode)."""
    # Opened here rather than by np.load, which leaves its file open when the zip is unreadable.
    with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """A sha256 over every array's name, dtype, shape and bytes (the checksum entry aside)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        if name == CHECKSUM:
            continue
        array = np.ascontiguousarray(arrays[name])
        h.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        h.update(array.reshape(-1).view(np.uint8))
    return h.hexdigest()


def _reason(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def remove_stale_temporaries(folder: str | os.PathLike, older_than: float = STALE_AFTER_S) -> list[Path]:
    """Delete the cache-entry temporaries in ``folder`` untouched for ``older_than`` seconds.

    Only ``.<entry>.npz.<random>.partial`` names are considered, so that a cache folder shared
    with other files loses nothing else. Returns what was deleted.
    """
    cutoff = time.time() - older_than
    gone = []
    for path in sorted(Path(folder).glob(f".*.npz.*{TEMP_SUFFIX}")):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                gone.append(path)
        except OSError:  # renamed or removed by its writer meanwhile, or not ours to delete
            continue
    if gone:
        log.info("removed %d temporary file(s) a killed cache writer left in %s", len(gone), folder)
    return gone


def read_entry(
    path: str | os.PathLike,
    name: str,
    check: Callable[[dict[str, np.ndarray]], str | None] | None = None,
) -> dict[str, np.ndarray] | None:
    """The verified arrays of the cache entry at ``path``, or None when it must be (re)built.

    A missing entry is None silently. An entry that cannot be read (truncated, not a zip, a bad
    CRC), whose arrays do not hash to the sha256 stored with them (or that stores none), or
    that ``check`` refuses (``check`` returns what is wrong, or None) is warned about once,
    naming the file, and deleted (unless another process replaced it meanwhile) so that it is
    rebuilt.
    """
    path = Path(path)
    if not path.is_file():
        return None
    judged = _identity(path)
    try:
        arrays = load_npz(path)
    except Exception as err:  # whatever fails to read, the entry is not trusted
        problem = (
            f"cannot read cache entry {path} ({_reason(err)}); ignoring the unreadable cache file "
            f"and rebuilding it"
        )
    else:
        stored = arrays.pop(CHECKSUM, None)
        actual = arrays_sha256(arrays)
        if stored is None:
            problem = f"cache entry {path} does not match its checksum (it stores none); rebuilding it"
        elif str(stored) != actual:
            problem = (
                f"cache entry {path} does not match its checksum (stored sha256 {str(stored)[:16]}..., "
                f"its arrays hash to {actual[:16]}...); rebuilding it"
            )
        else:
            try:
                wrong = check(arrays) if check is not None else None
            except KeyError as err:
                wrong = f"it lacks the array {err}"
            except (TypeError, ValueError, IndexError) as err:
                wrong = f"its arrays are not what the check expects: {_reason(err)}"
            if wrong is None:
                return arrays
            problem = f"cache entry {path} does not match what it should hold ({wrong}); rebuilding it"
    warnings.warn(f"{name}: {problem}", stacklevel=3)
    # Another process may have renamed its rebuilt entry into place meanwhile; that one stays.
    if _identity(path) == judged:
        try:
            path.unlink()
        except OSError:  # the rebuilt entry replaces it anyway, when it can be written
            pass
    return None


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _refused_by_file_system(err: OSError) -> bool:
    """Whether ``err`` is the file system refusing the write (full, read-only, forbidden...).

    Those carry an errno, or arrive as an OSError subclass naming the cause; a bare OSError
    with neither did not come from the file system, and dropping the cache over it would hide
    a fault. The atomic writer re-raises a failure as one line naming the file (``raise ...
    from None``), so such an error is judged by the failure it replaced, unless it already
    found the disk full.
    """
    if err.errno == errno.ENOSPC:
        return True
    origin = err.__context__ if err.__suppress_context__ and err.__context__ is not None else err
    if not isinstance(origin, OSError):
        return False
    return origin.errno is not None or type(origin) is not OSError


def write_entry(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], name: str) -> bool:
    """Store ``arrays`` and their sha256 as the cache entry ``path``; whether it was stored.

    When the file system refuses (no space, read-only, no permission...) the caller holds the
    arrays already, so it goes on without the cache: a warning names the file and the reason.
    """
    path = Path(path)
    if CHECKSUM in arrays:
        raise ValueError(f"{name}: {CHECKSUM!r} names the checksum of a cache entry; rename that array")
    entry = {**arrays, CHECKSUM: np.array(arrays_sha256(arrays))}
    try:
        atomic_write_npz(path, entry)
    except OSError as err:
        if not _refused_by_file_system(err):
            raise
        if err.errno is not None:
            reason = os.strerror(err.errno)
            reason = reason[:1].lower() + reason[1:]
        else:
            reason = " ".join(str(err).split()) or type(err).__name__
        warnings.warn(
            f"{name}: {reason} writing {path}; going on without the cache "
            f"(cannot write cache entry, so it is built again next time: free space there, or pass "
            f"a writable cache_dir or set ${CACHE_ENV})",
            stacklevel=3,
        )
        return False
    return True


def cached(
    path: str | os.PathLike,
    build: Callable[[], dict[str, np.ndarray]],
    name: str,
    check: Callable[[dict[str, np.ndarray]], str | None] | None = None,
) -> dict[str, np.ndarray]:
    """The arrays of the cache entry ``path``: read and verified, or built and stored.

    ``build()`` makes the arrays when the entry is missing or damaged (see :func:`read_entry`);
    they are then stored with :func:`write_entry`. Stale temporaries of the entry's folder are
    removed first (see :func:`remove_stale_temporaries`).
    """
    path = Path(path)
    remove_stale_temporaries(path.parent)
    arrays = read_entry(path, name, check)
    if arrays is None:
        arrays = build()
        write_entry(path, arrays, name)
    return arrays
