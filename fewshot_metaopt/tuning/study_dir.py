"""A study folder: what one hyperparameter search leaves on this machine, and how it is laid out.

::

    STUDY_DIR/
      study.json          the study: its name and storage, objective, sampler, pruner, trials asked for
      task.toml           the searched task: every key resolved, and the [search] table searched
      study.db            the study's trials (SQLite), unless --storage named another database
      trials/trial-0003/  one run directory per trial run here, named by the trial's number
      logs/worker-2.log   what each worker process printed (with --workers N > 1)
      trials.csv          one row per trial: state, objective, iterations, values, run directory
      best.toml           the best trial's task, ready for fewshot-metaopt train
      plots/study.png     the optimisation history and the parameters' importances

A study folder appears whole, as a run directory does: it is assembled under a temporary name
beside its final one and renamed into place, so a folder with the final name holds
``study.json`` and ``task.toml``. One ``fewshot-metaopt tune`` process (with its workers) uses a
folder at a time: it holds the folder's lock (see :mod:`fewshot_metaopt.runs.run_lock`) until it
ends, however it ends.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

from ..atomic_files import atomic_write_text
from ..runs.errors import RunError
from ..runs.run_lock import RunLock
from ..runs.staged_folder import create_staged
from .storage import sqlite_url


@dataclass
class StudySettings:
    """``study.json``. ``storage`` is None for the SQLite file in the folder, else the
    database's URL with any password hidden; ``folder_id`` tells this folder's trials from
    those other machines run in a shared database."""

    study_name: str
    storage: str | None
    metric: str
    direction: str
    sampler: str
    pruner: str
    prune_after: int
    trials: int
    folder_id: str

    @staticmethod
    def new_folder_id() -> str:
        return uuid.uuid4().hex


class StudyDir:
    def __init__(self, path: str | Path, lock: RunLock | None = None) -> None:
        self.path = Path(path)
        self._lock = lock

    settings_file = property(lambda self: self.path / "study.json")
    task_file = property(lambda self: self.path / "task.toml")
    trials = property(lambda self: self.path / "trials")
    logs = property(lambda self: self.path / "logs")
    table = property(lambda self: self.path / "trials.csv")
    best = property(lambda self: self.path / "best.toml")
    plot = property(lambda self: self.path / "plots" / "study.png")

    def trial_dir(self, number: int) -> Path:
        return self.trials / f"trial-{number:04d}"

    def relative(self, path: Path) -> str:
        return path.relative_to(self.path).as_posix()

    @classmethod
    def create(cls, path: str | Path, settings: StudySettings, task_text: str,
               populate: Callable[["StudyDir"], None] = lambda folder: None) -> "StudyDir":
        """A new study folder holding ``study.json`` and ``task.toml``, locked by this process;
        ``populate(folder)`` adds what else must be there before it appears (the SQLite study)."""
        target = Path(path)
        if target.exists() and not (target.is_dir() and not any(target.iterdir())):
            raise RunError(f"{target} already exists; continue that study with fewshot-metaopt tune --resume {target}, "
                           "or choose another --out")
        def fill(staging: Path) -> None:
            staged = cls(staging)
            staged.write_settings(settings)
            atomic_write_text(staged.task_file, task_text)
            staged.trials.mkdir()
            populate(staged)

        return cls(target, create_staged(target, fill))

    @classmethod
    def open(cls, path: str | Path) -> "StudyDir":
        folder = cls(path)
        if not folder.path.is_dir():
            raise RunError(f"{folder.path} is not a study folder (it does not exist)" if not folder.path.exists()
                           else f"{folder.path} is not a study folder (it is a file)")
        missing = [p.name for p in (folder.settings_file, folder.task_file) if not p.is_file()]
        if missing:
            raise RunError(f"{folder.path} is not a study folder: it has no {' or '.join(missing)}")
        return folder

    def lock(self) -> "StudyDir":
        """Hold the folder for this process (refused while another process holds it)."""
        if self._lock is None:
            self._lock = RunLock.try_take(self.path)
            if self._lock is None:
                raise RunError(f"{self.path} is in use by another fewshot-metaopt tune process; wait for it to end "
                               "(or stop it), then --resume")
        return self

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def read_settings(self) -> StudySettings:
        try:
            values = json.loads(self.settings_file.read_text(encoding="utf-8"))
            return StudySettings(**{f.name: values[f.name] for f in fields(StudySettings)})
        except (ValueError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise RunError(f"{self.settings_file} is not a study's settings ({type(err).__name__}: {err}); "
                           "it is written by fewshot-metaopt tune, which the study folder must come from") from None

    def write_settings(self, settings: StudySettings) -> None:
        atomic_write_text(self.settings_file, json.dumps(asdict(settings), indent=2) + "\n")

    def storage_url(self, settings: StudySettings) -> str:
        return sqlite_url(self.path) if settings.storage is None else settings.storage
