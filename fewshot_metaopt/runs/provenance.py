"""What a result needs beside it to be reproduced: the package version and the source's git commit."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .. import __version__

SOURCE = Path(__file__).resolve().parents[2]


def package_version() -> str:
    """The version of the code imported, ``fewshot_metaopt.__version__`` (the one version source;
    the installed metadata of an editable install keeps the version it was installed with)."""
    return __version__


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(SOURCE), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit() -> dict[str, object] | None:
    """The commit the package was imported from, and whether tracked files differ from it;
    None for an installed copy that is not a git checkout."""
    if not (SOURCE / ".git").exists():
        return None
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None
    changes = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "modified": bool(changes)}
