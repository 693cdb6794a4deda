"""The hyperparameter search of a task: :class:`HyperparameterTuner`, on Optuna.

A search is a study: trials, each a normal run directory trained from the task with values
drawn from its ``[search]`` table (or the default space its configs publish), scored by the
best validation score the run reaches, and pruned at validation points. The study lives in a
storage (SQLite in the study folder by default), which any number of worker processes share,
on this machine (``workers``) or on several (a database URL, each machine with a study folder
of its own). A study killed at any moment resumes with every finished trial; the trials that
were running are queued again and continue their run directories.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..checks import ConfigError, choose, integer
from ..episodes.sampler import derive_seed
from ..runs.data_sources import open_split
from ..runs.errors import RunError
from ..runs.search_space import SearchSpace, apply
from ..runs.task_config import TaskConfig, load_task, task_from_dict
from ..runs.task_identity import identifying_keys
from ..runs.toml_writer import dumps
from .default_space import default_space
from .optuna_import import optuna, quiet_optuna
from .recovery import requeue_dead, retry, spent
from .report import StudyReport, write_report
from .search_algorithms import PRUNERS, SAMPLERS
from .storage import open_storage, shown, sqlite_url
from .study_dir import StudyDir, StudySettings
from .trial_objective import TRIAL_FAILURES, Objective, describe_values

DIRECTIONS = {"accuracy": "maximize", "mse": "minimize"}
TASK_HEADER = ("The task this study searches: every key resolved, and the [search] table its trials draw from.\n"
               "Continue the study with: fewshot-metaopt tune --resume {path}")


def _fingerprint(task: TaskConfig, space: SearchSpace) -> str:
    """What a study searches, as stored in its storage: a machine joining the study must search
    the same (data paths aside, which differ between machines)."""
    return json.dumps({"task": identifying_keys(task.to_dict()), "search": space.table()}, sort_keys=True)


NO_VALIDATION = ("a search scores its trials on validation, but validation.every is 0; set validation.every (for "
                 "example to a tenth of train.iterations)")


def check_space(task: TaskConfig, space: SearchSpace, source: str) -> None:
    """The task validates, and so does each value of the space (each end of a range, each
    choice) set on its own, giving a valid task; else a one-line error naming the key and value."""
    if task.validation.every == 0:
        raise RunError(f"{source}: {NO_VALIDATION}")
    for dimension in space:
        for where, value in dimension.probes():
            try:
                probe = task_from_dict(apply(task.to_dict(), {dimension.key: value}), "the search")
            except RunError as err:
                reason = " ".join(str(err).replace("the search: ", "").split())
                raise RunError(f"{source}: [search] {dimension.key} at {where} gives an invalid task: "
                               f"{reason}") from None
            if probe.validation.every == 0:
                raise RunError(f"{source}: [search] {dimension.key} at {where}: {NO_VALIDATION}")


def task_text(task: TaskConfig, space: SearchSpace, path: Path) -> str:
    return dumps(task.to_dict(), header=TASK_HEADER.format(path=path)) + "\n" + space.to_toml()


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker process does (picklable, for ``spawn``)."""

    folder: str
    storage: str
    index: int
    trials: int
    target: int
    device: str = "cpu"
    threads: int | None = None
    log: str | None = None
    quiet: bool = False
    command: tuple[str, ...] = ()


class HyperparameterTuner:
    """A hyperparameter search over a task, in a study folder (see :mod:`.study_dir`).

    ``HyperparameterTuner.create(task, "studies/x")`` starts one (the task's ``[search]`` table,
    or :func:`.default_space`), ``HyperparameterTuner.resume("studies/x")`` takes one up again;
    :meth:`optimize` runs trials until the study has ``trials``, :meth:`report` writes the
    table of trials, the best task file and the plot. The tuner holds the folder's lock until
    :meth:`close` (or the end of a ``with`` block).
    """

    def __init__(self, folder: StudyDir, settings: StudySettings, task: TaskConfig, space: SearchSpace,
                 storage: str) -> None:
        self.folder, self.settings, self.task, self.space, self.storage = folder, settings, task, space, storage
        self._storage = None  # opened on first use, then shared by every Study object of this process

    # ------------------------------------------------------------------------ making and opening

    @classmethod
    def create(cls, task: TaskConfig, out: str | os.PathLike, *, storage: str | None = None,
               study_name: str | None = None, sampler: str = "tpe", pruner: str = "median",
               prune_after: int = 5, source: str = "the task") -> "HyperparameterTuner":
        """A new study folder ``out`` searching ``task``; with ``storage`` (a database URL) the
        study is made there, or joined when another machine made it (it must search the same)."""
        try:
            choose("sampler", sampler, SAMPLERS.names())
            choose("pruner", pruner, PRUNERS.names())
            integer("prune_after", prune_after, 0)
        except ConfigError as err:
            raise RunError(str(err)) from None
        space = task.search if task.search is not None else default_space(task)
        check_space(task, space, source)
        metric = "mse" if task.regression else "accuracy"
        settings = StudySettings(
            study_name=study_name or task.name, storage=None if storage is None else shown(storage), metric=metric,
            direction=DIRECTIONS[metric], sampler=sampler, pruner=pruner, prune_after=prune_after, trials=0,
            folder_id=StudySettings.new_folder_id())
        fingerprint = _fingerprint(task, space)
        text = task_text(task, space, Path(out))
        if storage is not None:
            cls._made(storage, settings, fingerprint)
            folder = StudyDir.create(out, settings, text)
        else:
            folder = StudyDir.create(out, settings, text,
                                     populate=lambda staged: cls._made(sqlite_url(staged.path), settings, fingerprint))
        return cls(folder, settings, task, space, storage or sqlite_url(folder.path))

    @staticmethod
    def _made(url: str, settings: StudySettings, fingerprint: str) -> None:
        """Make the study in ``url``, or check that the one there searches the same."""
        study = optuna().create_study(storage=open_storage(url), study_name=settings.study_name,
                                      direction=settings.direction, load_if_exists=True)
        stored = study.user_attrs.get("searches")
        if stored is None:
            study.set_user_attr("searches", fingerprint)
        elif stored != fingerprint:
            raise RunError(f"the study {settings.study_name!r} in {shown(url)} searches another task or space; "
                           "join it with the same task file, or name a new study with --study-name")

    @classmethod
    def resume(cls, path: str | os.PathLike, *, storage: str | None = None) -> "HyperparameterTuner":
        """The study in folder ``path``, locked by this process; ``storage`` gives the database
        URL again when the stored one hides a password."""
        folder = StudyDir.open(path).lock()
        try:
            settings = folder.read_settings()
            url = storage or folder.storage_url(settings)
            if storage is None and settings.storage is not None and "***" in settings.storage:
                raise RunError(f"{folder.settings_file} stores the study's database URL without its password; "
                               f"give it again with --storage")
            task = load_task(folder.task_file)
            if task.search is None:
                raise RunError(f"{folder.task_file} has no [search] table; it is not a study's task")
            return cls(folder, settings, task, task.search, url)
        except BaseException:
            folder.release()
            raise

    def close(self) -> None:
        self.folder.release()

    def __enter__(self) -> "HyperparameterTuner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------ the study

    def study(self, seed: int = 0) -> Any:
        """The Optuna study, with this study's sampler (seeded by ``seed``) and pruner."""
        s = self.settings
        if self._storage is None:
            self._storage = open_storage(self.storage, on_stale=retry)
        return optuna().load_study(
            study_name=s.study_name, storage=self._storage,
            sampler=SAMPLERS[s.sampler](seed), pruner=PRUNERS[s.pruner](self.task, s.prune_after))

    def optimize(self, trials: int, *, workers: int = 1, device: str = "cpu", threads: int | None = None,
                 echo: Callable[[str], None] = print, quiet: bool = False, command: Sequence[str] = ()) -> None:
        """Run trials until the study has ``trials`` (complete, pruned or failed), with ``workers``
        processes on this machine (each with ``threads`` torch threads; default: the cores
        shared out). ``quiet`` silences Optuna's own log lines (each trial's line is echoed)."""
        try:
            integer("trials", trials, 1)
            integer("workers", workers, 1)
        except ConfigError as err:
            raise RunError(f"{err}") from None
        self.settings = replace(self.settings, trials=trials)
        self.folder.write_settings(self.settings)
        study = self.study()
        dead = requeue_dead(study, self.settings.folder_id, every=self.settings.storage is None)
        if dead:
            echo(f"trials {', '.join(map(str, dead))} were running when their process ended: queued again, "
                 "each to continue its run directory")
        todo = trials - spent(study)
        if todo <= 0:
            echo(f"the study has {spent(study)} trials of the {trials} asked for; nothing to run")
            return
        for role in ("train", "val", "test"):  # missing data fails here, not in every trial
            open_split(self.task.data, role)
        workers = min(workers, todo)
        if threads is None and workers > 1:
            threads = max(1, (os.cpu_count() or 1) // workers)
        plans = [WorkerPlan(folder=str(self.folder.path), storage=self.storage, index=i,
                            trials=todo // workers + (i < todo % workers), target=trials, device=device,
                            threads=threads, quiet=quiet, command=tuple(command),
                            log=str(self.folder.logs / f"worker-{i}.log") if workers > 1 else None)
                 for i in range(workers)]
        if workers == 1:
            work(plans[0], echo, tuner=self)
            return
        self.folder.logs.mkdir(exist_ok=True)
        echo(f"{workers} workers, {threads} torch thread{'s' * (threads != 1)} each; their logs: {self.folder.logs}")
        self._spawn(plans)

    def _spawn(self, plans: list[WorkerPlan]) -> None:
        context = multiprocessing.get_context("spawn")
        processes = [context.Process(target=_worker_main, args=(plan,), name=f"tune-worker-{plan.index}")
                     for plan in plans]
        for process in processes:
            process.start()
        try:
            for process in processes:
                process.join()
        except KeyboardInterrupt:
            # Ctrl-C reached the workers too: each stops at the end of its iteration with a checkpoint.
            for process in processes:
                process.join()
            raise
        failed = [(plan, p.exitcode) for plan, p in zip(plans, processes) if p.exitcode != 0]
        if failed:
            plan, code = failed[0]
            raise RunError(f"worker {plan.index} stopped with exit code {code}{last_line_of(plan.log)}; "
                           f"its log: {plan.log}")

    def report(self) -> StudyReport:
        """Write ``trials.csv``, ``best.toml`` and ``plots/study.png``; what they hold."""
        return write_report(self.folder, self.settings, self.study(), self.task, self.space)


class _Announce:
    """After each trial: one line saying how it ended; stop the worker once the study has its trials."""

    def __init__(self, tuner: HyperparameterTuner, target: int, echo: Callable[[str], None]) -> None:
        self.tuner, self.target, self.echo = tuner, target, echo

    def __call__(self, study: Any, trial: Any) -> None:
        state = trial.state.name.lower()
        values = describe_values(trial.params)
        metric = f"validation {self.tuner.settings.metric}"
        where = trial.user_attrs.get("run_dir", "no run directory")
        if state == "complete":
            best = " (best so far)" if study.best_trial.number == trial.number else ""
            line = f"trial {trial.number} complete: {metric} {trial.value:.4f}{best}"
        elif state == "pruned" and trial.user_attrs.get("error"):
            line = f"trial {trial.number} pruned: {trial.user_attrs['error']}"
        elif state == "pruned" and trial.intermediate_values:
            last = trial.intermediate_values
            line = f"trial {trial.number} pruned at iteration {max(last)}: {metric} {last[max(last)]:.4f}"
        elif state == "pruned":
            line = f"trial {trial.number} pruned"
        else:
            line = f"trial {trial.number} failed: {trial.user_attrs.get('error') or 'see the log'}"
        self.echo(f"{line} | {values} | {where}")
        if spent(study) >= self.target:
            study.stop()


def work(plan: WorkerPlan, echo: Callable[[str], None] = print, tuner: HyperparameterTuner | None = None) -> None:
    """One worker: up to ``plan.trials`` trials of the study in ``plan.folder``."""
    if plan.quiet:  # each trial's line is echoed; Optuna's would repeat it, with tracebacks of failed trials
        quiet_optuna()
    if plan.threads:
        torch.set_num_threads(plan.threads)
    if tuner is None:
        folder = StudyDir.open(plan.folder)
        settings = folder.read_settings()
        task = load_task(folder.task_file)
        tuner = HyperparameterTuner(folder, settings, task, task.search, plan.storage)
    # Seeded by where the study stands and the worker's index: workers and resumed studies draw afresh.
    study = tuner.study(seed=derive_seed(tuner.task.seed, spent(tuner.study()), plan.index) % 2**32)
    if spent(study) >= plan.target:
        return
    objective = Objective(tuner.folder, tuner.settings.folder_id, tuner.task, tuner.space, plan.device, plan.command)
    study.optimize(objective, n_trials=plan.trials, catch=TRIAL_FAILURES,
                   callbacks=[_Announce(tuner, plan.target, echo)])


def last_line_of(log: str | None) -> str:
    """``: <the last line of the worker's log>`` (its error), or nothing when there is none."""
    try:
        text = Path(log).read_text(encoding="utf-8", errors="replace") if log else ""
    except OSError:
        return ""
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return f": {lines[-1]}" if lines else ""


def _echo_line(line: str) -> None:
    print(line, flush=True)


def _worker_main(plan: WorkerPlan) -> None:
    """A spawned worker: its progress bars and errors go to its log, each trial's line to stdout."""
    log = open(plan.log, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - the process's stderr until it ends
    sys.stderr = log
    os.dup2(log.fileno(), 2)
    try:
        work(plan, _echo_line)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:  # noqa: BLE001 - reported in the log, and by the exit code to the main process
        traceback.print_exc(file=log)
        sys.exit(1)
