"""A run directory: what one training run leaves behind, and how it is laid out.

::

    RUN_DIR/
      config.toml         the resolved task (a task file itself: every key, every default)
      run.json            the command that started the run, each resume, versions
      metrics.jsonl       one JSON line per logged iteration
      checkpoints/        last.pt (latest), best.pt (best validation score; see checkpoint_pair)
      plots/              learning_curves.png, learned_lr.png
      results.json        the final test result and its provenance (when training finished)

A run directory appears whole: it is assembled under a temporary name beside its final one
(``.NAME.XXXX.partial``), locked (see :mod:`.run_lock`), and renamed into place, so a directory with the final name
always holds ``config.toml`` and ``run.json``; that is what makes it a run. A process killed
while assembling one leaves the temporary folder behind: the next ``create`` of the same name
clears it, and ``open`` finishes it when it is whole or clears it when it is not.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path
from typing import Any, Sequence

from ..atomic_files import atomic_write_text, fsync_dir
from . import toml_writer
from .errors import RunError
from .provenance import git_commit, package_version
from .run_lock import RunLock
from .staged_folder import clear_if_abandoned, create_staged, half_made
from .task_config import TaskConfig, read_task_file, task_from_dict

CONFIG_HEADER = "The resolved task of this run: every key with the value it ran with.\nRerun it with: fewshot-metaopt train {path}"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def _whole(folder: Path) -> bool:
    return all(p.exists() for p in (folder / "config.toml", folder / "run.json", folder / "checkpoints",
                                    folder / "plots"))


class RunDir:
    def __init__(self, path: str | Path, lock: RunLock | None = None) -> None:
        self.path = Path(path)
        self._lock = lock

    config = property(lambda self: self.path / "config.toml")
    info = property(lambda self: self.path / "run.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    results = property(lambda self: self.path / "results.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    plots = property(lambda self: self.path / "plots")
    last_checkpoint = property(lambda self: self.checkpoints / "last.pt")
    best_checkpoint = property(lambda self: self.checkpoints / "best.pt")

    @classmethod
    def create(cls, path: str | Path, task: TaskConfig, command: Sequence[str]) -> "RunDir":
        """A new run directory, locked by this process until :meth:`release`."""
        target = Path(path)
        if target.exists() and not (target.is_dir() and not any(target.iterdir())):
            raise RunError(f"{target} already exists; continue that run with --resume {target}, or choose another --out")
        def fill(staging: Path) -> None:
            staged = cls(staging)
            header = CONFIG_HEADER.format(path=target / "config.toml")
            atomic_write_text(staged.config, toml_writer.dumps(task.to_dict(), header=header))
            write_json(staged.info, {
                "command": list(command),
                "started": now(),
                "resumed": [],
                "package_version": package_version(),
                "git": git_commit(),
            })
            staged.checkpoints.mkdir()
            staged.plots.mkdir()

        return cls(target, create_staged(target, fill))

    _clear_if_abandoned = staticmethod(clear_if_abandoned)

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        run = cls(path)
        if not run.path.exists():
            cls._recover(run.path)
        if not run.path.is_dir():
            raise RunError(f"{run.path} is not a run directory (it does not exist)" if not run.path.exists()
                           else f"{run.path} is not a run directory (it is a file)")
        missing = [p.name for p in (run.config, run.info) if not p.is_file()]
        if missing:
            raise RunError(f"{run.path} is not a run directory: it has no {' or '.join(missing)}")
        return run

    @classmethod
    def _recover(cls, target: Path) -> None:
        """Finish a run folder whose creation was killed after its files were written, or clear
        one killed before; a folder still being assembled is left alone."""
        for folder in reversed(half_made(target)):
            lock = RunLock.try_take(folder)
            if lock is None:
                continue
            try:
                if _whole(folder) and not target.exists():
                    folder.replace(target)
                    fsync_dir(target.parent)
                    continue
            finally:
                lock.release()
            shutil.rmtree(folder, ignore_errors=True)
            if not target.exists():
                raise RunError(f"{target} was never created: the process creating it was stopped first, and its "
                               "half-made folder was cleared; start the run again")

    def lock(self) -> "RunDir":
        """Hold the run directory for this process (refused while another process holds it)."""
        if self._lock is None:
            self._lock = RunLock.take(self.path)
        return self

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def task(self, data_root: str | None = None) -> TaskConfig:
        return task_from_dict(read_task_file(self.config), str(self.config), data_root)

    def read_info(self) -> dict[str, Any]:
        try:
            return json.loads(self.info.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise RunError(f"{self.info} is not valid JSON: {err}") from None

    def record_resume(self, command: Sequence[str]) -> None:
        info = self.read_info()
        info.setdefault("resumed", []).append({"command": list(command), "at": now()})
        write_json(self.info, info)
