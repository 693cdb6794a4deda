"""A run's latest and best checkpoints, kept consistent by construction.

``last.pt`` is the commit point: its ``progress`` names the iteration of the best checkpoint.
A new best is written to ``best.next.pt`` first, then ``last.pt`` (naming it), and only then
renamed to ``best.pt``. A crash between any two of these writes leaves either the old pair
(``last.pt`` names the old best; ``best.next.pt`` is an uncommitted leftover) or a committed
new best not yet renamed; :func:`settle` tells the two apart by the iterations the files
hold, and :func:`checkpoint_for_use` never hands out a best checkpoint that ``last.pt`` does
not name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..atomic_files import fsync_dir
from .checkpoint import load_checkpoint, save_checkpoint
from .errors import RunError
from .run_dir import RunDir


def pending_best(run: RunDir) -> Path:
    return run.checkpoints / "best.next.pt"


def save(run: RunDir, payload: dict[str, Any], best: bool) -> None:
    """Write the latest checkpoint, and with ``best`` the best one, in the safe order."""
    if best:
        save_checkpoint(pending_best(run), payload)
    save_checkpoint(run.last_checkpoint, payload)
    if best:
        promote(run)


def promote(run: RunDir) -> None:
    """``best.next.pt`` becomes ``best.pt`` (once ``last.pt`` names it)."""
    os.replace(pending_best(run), run.best_checkpoint)
    fsync_dir(run.checkpoints)


def _iteration(path: Path) -> int | None:
    return int(load_checkpoint(path)["iteration"]) if path.is_file() else None


def settle(run: RunDir, last: dict[str, Any]) -> None:
    """Finish or undo a best checkpoint a crash left half-written, given ``last.pt``'s content;
    refuse a pair that no crash could leave (an altered run directory)."""
    named = last["progress"]["best_iteration"]
    pending = pending_best(run)
    if pending.is_file():
        if named is not None and _iteration(pending) == named:
            promote(run)
        else:
            pending.unlink()
    have = _iteration(run.best_checkpoint)
    if have != named:
        raise RunError(
            f"{run.best_checkpoint} holds iteration {have}, but {run.last_checkpoint} names iteration {named} as the "
            "best: the run directory was altered; restore its checkpoints or start the run again"
        )


def checkpoint_for_use(run: RunDir) -> Path:
    """The checkpoint that stands for the run: the best one ``last.pt`` names (also when a crash
    left it as ``best.next.pt``), else the latest. Reads only."""
    if not run.last_checkpoint.is_file():
        raise RunError(f"run {run.path} has no checkpoint yet")
    named = load_checkpoint(run.last_checkpoint)["progress"]["best_iteration"]
    if named is None:
        return run.last_checkpoint
    for path in (run.best_checkpoint, pending_best(run)):
        if _iteration(path) == named:
            return path
    raise RunError(f"run {run.path} has no checkpoint of iteration {named}, which {run.last_checkpoint} names as "
                   "the best: the run directory was altered; restore its checkpoints or start the run again")
