"""``fewshot-metaopt tune``: a hyperparameter search of a task file on Optuna (docs/tuning.md)."""

from __future__ import annotations

import argparse
import datetime as _dt
from pathlib import Path
from typing import Callable, Sequence

from ..runs.errors import RunError
from ..runs.task_config import TaskConfig, load_task
from ..tuning import PRUNERS, SAMPLERS, HyperparameterTuner
from ..tuning.optuna_import import quiet_optuna
from .parsing import add_data_root, add_machine_options, positive_int

DESCRIPTION = """\
Search the hyperparameters of the task in TASKFILE: each trial trains the task, with values
drawn from its [search] table (without one: the default space of its learner and inner
optimizer), into a run directory of its own, and is scored by its best validation accuracy
(maximised; for regression, its validation mean squared error, minimised). Trials the pruner
judges unpromising stop at a validation point. The study keeps its trials in SQLite in the
study folder (or the database --storage names), so a killed study resumes with --resume and
loses no finished trial. It ends with the table of trials, the best task file (best.toml) and
the optimisation-history / parameter-importance plot (plots/study.png)."""

# What only a new study takes (a resumed one keeps what it started with), by how it is written.
NEW_STUDY_ONLY = {"task": "TASKFILE", "overrides": "--set", "out": "--out", "study_name": "--study-name",
                  "sampler": "--sampler", "pruner": "--pruner", "prune_after": "--prune-after",
                  "data_root": "--data-root"}


def add_parser(commands) -> None:
    parser = commands.add_parser("tune", help="hyperparameter search of a task on Optuna (the search extra)",
                                 description=DESCRIPTION)
    parser.add_argument("task", nargs="?", metavar="TASKFILE", help="the task file (or a bundled task's name)")
    parser.add_argument("--trials", type=positive_int, default=None, metavar="N",
                        help="the study's trials in all: it stops once N have begun (complete, pruned or failed); "
                             "needed for a new study, default on --resume: the number asked for before")
    parser.add_argument("--out", metavar="STUDY_DIR", default=None,
                        help="the study folder to create (default: studies/<task name>-<date>-<time>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a task key before the search, e.g. --set train.iterations=500 (repeatable)")
    parser.add_argument("--resume", metavar="STUDY_DIR", default=None,
                        help="continue the study in STUDY_DIR: finished trials are kept, the trials its killed "
                             "processes were running are run again from their run directories' checkpoints")
    parser.add_argument("--workers", type=positive_int, default=1, metavar="N",
                        help="trial processes on this machine, sharing the study (default 1)")
    parser.add_argument("--storage", metavar="URL", default=None,
                        help="the study's database, e.g. postgresql://user:password@host/db, for workers on several "
                             "machines (default: SQLite in the study folder)")
    parser.add_argument("--study-name", metavar="NAME", default=None,
                        help="the study's name in its storage (default: the task's name)")
    parser.add_argument("--sampler", choices=SAMPLERS.names(), default=None,
                        help="what proposes each trial's values (default: tpe, seeded by the task's seed)")
    parser.add_argument("--pruner", choices=PRUNERS.names(), default=None,
                        help="what stops unpromising trials at validation points (default: median)")
    parser.add_argument("--prune-after", type=int, default=None, metavar="N",
                        help="complete trials before the median pruner prunes (default 5)")
    add_data_root(parser)
    add_machine_options(parser)
    parser.set_defaults(run=run)


def default_out(task: TaskConfig) -> Path:
    return Path("studies") / f"{task.name}-{_dt.datetime.now():%Y%m%d-%H%M%S}"


def _opened(args: argparse.Namespace) -> tuple[HyperparameterTuner, int]:
    if args.resume is not None:
        given = [flag for name, flag in NEW_STUDY_ONLY.items() if getattr(args, name) not in (None, [])]
        if given:
            raise RunError(f"--resume continues STUDY_DIR with the task and settings it started with; "
                           f"drop {', '.join(given)}")
        tuner = HyperparameterTuner.resume(args.resume, storage=args.storage)
        return tuner, args.trials or tuner.settings.trials
    if args.task is None:
        raise RunError("tune needs a TASKFILE (or --resume STUDY_DIR)")
    if args.trials is None:
        raise RunError("tune needs --trials N: the number of trials the study runs")
    task = load_task(args.task, args.overrides, args.data_root)
    tuner = HyperparameterTuner.create(
        task, args.out or default_out(task), storage=args.storage, study_name=args.study_name,
        sampler=args.sampler or "tpe", pruner=args.pruner or "median",
        prune_after=5 if args.prune_after is None else args.prune_after, source=args.task)
    return tuner, args.trials


def run(args: argparse.Namespace, command: Sequence[str], echo: Callable[[str], None] = print) -> int:
    quiet_optuna()  # each trial's line is printed here; Optuna's own would repeat it
    tuner, trials = _opened(args)
    with tuner:
        s = tuner.settings
        echo(f"study {s.study_name!r} in {tuner.folder.path} ({s.storage or 'SQLite in the study folder'}): "
             f"validation {s.metric}, {s.direction}d; sampler {s.sampler}, pruner {s.pruner}")
        for dimension in tuner.space:
            ((kind, value),) = dimension.spec().items()
            echo(f"  {dimension.key}: {kind} {value}")
        try:
            tuner.optimize(trials, workers=args.workers, device=args.device, threads=args.threads, echo=echo,
                           quiet=True, command=command)
        finally:
            report = tuner.report()
            echo(report.text())
        if report.best is None:
            noted = next((r for r in report.rows if r.note), None)
            why = f"; trial {noted.number} ({noted.state}): {noted.note}" if noted else ""
            raise RunError(f"no trial of the study completed{why}; the trials: {report.table}")
        echo(f"best: trial {report.best.number}, validation {report.metric} {report.best.value:.4f}; "
             f"its task: {report.best_task} (fewshot-metaopt train {report.best_task})")
        echo(f"trials: {report.table}; plot: {report.plot}")
    return 0
