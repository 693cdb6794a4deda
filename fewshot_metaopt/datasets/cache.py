"""Where preprocessed datasets are kept, and how they are written without ever being half-written.

A cache entry is one ``.npz`` file named by what it was built from (a checksum of the
source files and the preprocessing settings), written to a temporary file in the same folder,
flushed to disk and renamed into place: a reader sees the whole file or none.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ..atomic_files import atomic_writer

CACHE_ENV = "FEWSHOT_METAOPT_CACHE"


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
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}
