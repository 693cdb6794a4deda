"""A run directory: what one training run leaves behind, and how it is laid out.

::

    RUN_DIR/
      config.toml         the resolved task (a task file itself: every key, every default)
      run.json            the command that started the run, each resume, versions
      metrics.jsonl       one JSON line per logged iteration
      checkpoints/        last.pt (latest), best.pt (best validation score)
      plots/              learning_curves.png, learned_lr.png
      results.json        the final test result and its provenance (when training finished)

A run directory appears whole: it is assembled under a temporary name beside its final one
and renamed into place, so a directory with the final name always holds ``config.toml`` and
``run.json``; that is what makes it a run.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

from . import toml_writer
from ..atomic_files import atomic_write_text, fsync_dir
from .errors import RunError
from .provenance import git_commit, package_version
from .task_config import TaskConfig, read_task_file, task_from_dict

CONFIG_HEADER = "The resolved task of this run: every key with the value it ran with.\nRerun it with: fewshot-metaopt train {path}"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

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
        target = Path(path)
        if target.exists() and not (target.is_dir() and not any(target.iterdir())):
            raise RunError(f"{target} already exists; continue that run with --resume {target}, or choose another --out")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
        try:
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
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(target.parent)
        return cls(target)

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        run = cls(path)
        if not run.path.is_dir():
            raise RunError(f"{run.path} is not a run directory (it does not exist)" if not run.path.exists()
                           else f"{run.path} is not a run directory (it is a file)")
        missing = [p.name for p in (run.config, run.info) if not p.is_file()]
        if missing:
            raise RunError(f"{run.path} is not a run directory: it has no {' or '.join(missing)}")
        return run

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

    def checkpoint_for_use(self) -> Path:
        """The checkpoint that stands for the run: the best one, else the latest."""
        for path in (self.best_checkpoint, self.last_checkpoint):
            if path.is_file():
                return path
        raise RunError(f"run {self.path} has no checkpoint yet")
