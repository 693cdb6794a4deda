"""Meta-training a task from Python: :func:`train` a task into a new run directory, or
:func:`resume` one, with the caller's callbacks.

This is what ``fewshot-metaopt train`` does on one process, minus the console report: the
same run directory, checkpoints, ``metrics.jsonl`` and ``results.json``, the same bit-exact
resumption. Ctrl-C raises :class:`~.interrupts.Interrupted` (a KeyboardInterrupt) once the
checkpoint is written, so a caller's own loop (a hyperparameter search) stops too::

    from fewshot_metaopt.runs import Callback, Stop, load_task, train

    task = load_task("tasks/omniglot-5w1s.toml", ["train.iterations=1000"])
    run = train(task, "runs/trial-3", callbacks=[MyPruner(trial)])
    run.status, run.result.mean, run.best_validation
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..learners import EvaluationResult
from .callbacks import Callback
from .run_dir import RunDir
from .task_config import TaskConfig
from .trainer import Trainer


@dataclass(frozen=True)
class TrainedRun:
    """How a run ended: ``status`` ``finished`` (budget spent) or ``stopped`` (by
    ``stopped_by``, a callback and its reason); the test ``result`` of the checkpoint that
    stands for the run; the best validation score and its iteration (None without validation)."""

    path: Path
    status: str
    stopped_by: str | None
    iterations: int
    result: EvaluationResult
    best_validation: float | None
    best_iteration: int | None


def _quiet(line: str) -> None:
    return None


def _ended(trainer: Trainer, run: RunDir) -> TrainedRun:
    try:
        status = trainer.train(run)
        result = trainer.finish(run)
    finally:
        run.release()
    p = trainer.progress
    return TrainedRun(run.path, status, p.stopped_by, p.iteration, result, p.best_value, p.best_iteration)


def train(task: TaskConfig, out: str | Path, *, callbacks: Sequence[Callback] = (), device: str = "cpu",
          echo: Callable[[str], None] = _quiet, command: Sequence[str] | None = None) -> TrainedRun:
    """Meta-train ``task`` into the new run directory ``out``. ``command`` is recorded in
    ``run.json`` as what started the run (default: this process's command line)."""
    trainer = Trainer(task, device, echo=echo, callbacks=callbacks)
    run = RunDir.create(out, task, list(command) if command is not None else [Path(sys.argv[0]).name, *sys.argv[1:]])
    return _ended(trainer, run)


def resume(run_dir: str | Path, *, callbacks: Sequence[Callback] = (), device: str = "cpu",
           data_root: str | None = None, echo: Callable[[str], None] = _quiet,
           command: Sequence[str] | None = None) -> TrainedRun:
    """Continue the run in ``run_dir`` from its latest checkpoint (a finished run is tested
    again and its results rewritten); ``data_root`` moves its data as ``--data-root`` does."""
    run = RunDir.open(run_dir).lock()
    try:
        trainer = Trainer(run.task(data_root), device, echo=echo, callbacks=callbacks)
        trainer.resume(run)
        run.record_resume(list(command) if command is not None else [Path(sys.argv[0]).name, *sys.argv[1:]])
    except BaseException:
        run.release()
        raise
    return _ended(trainer, run)
