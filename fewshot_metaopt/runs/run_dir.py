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

from ..atomic_files import TEMP_SUFFIX, atomic_write_text, fsync_dir, make_temp_dir
from . import toml_writer
from .errors import RunError
from .provenance import git_commit, package_version
from .run_lock import RunLock
from .task_config import TaskConfig, read_task_file, task_from_dict

CONFIG_HEADER = "The resolved task of this run: every key with the value it ran with.\nRerun it with: fewshot-metaopt train {path}"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def _half_made(target: Path) -> list[Path]:
    """Folders a killed ``create`` of ``target`` left beside it."""
    return sorted(p for p in target.parent.glob(f".{target.name}.*{TEMP_SUFFIX}") if p.is_dir())


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
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in _half_made(target):
            cls._clear_if_abandoned(stale)
        # Made with the umask's mode (tempfile.mkdtemp's 0700 would stay with the run once renamed).
        staging = make_temp_dir(target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX)
        lock = None
        try:
            lock = RunLock.take(staging)
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
            staging.replace(target)
        except BaseException:
            if lock is not None:
                lock.release()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(target.parent)
        return cls(target, lock)

    @staticmethod
    def _clear_if_abandoned(folder: Path) -> None:
        """Remove a half-made run folder unless a live process is still assembling it."""
        lock = RunLock.try_take(folder)
        if lock is not None:
            lock.release()
            shutil.rmtree(folder, ignore_errors=True)

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
        for folder in reversed(_half_made(target)):
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
