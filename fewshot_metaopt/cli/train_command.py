"""``fewshot-metaopt train``: meta-train a task file (or the quick start) into a run directory."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
from pathlib import Path
from typing import Callable, Sequence

from ..runs.errors import RunError
from ..runs.run_dir import RunDir
from ..runs.task_config import TaskConfig, load_task
from ..runs.trainer import Trainer
from .parsing import add_data_root, add_machine_options

DESCRIPTION = """\
Meta-train the task in TASKFILE (with no TASKFILE: the embedded Glyphs quick start, a few
minutes on 2 CPU cores) into a run directory. A progress bar shows the iteration, meta-loss,
training accuracy, speed and time left; every validation.every iterations the model is
scored on a fixed validation manifest and the best checkpoint kept; the run ends with the
test accuracy (or MSE) ± 95% CI of the best checkpoint on evaluation.episodes fixed episodes,
written to RUN_DIR/results.json."""


def add_parser(commands) -> None:
    parser = commands.add_parser("train", help="meta-train a task; ends with test accuracy ± 95%% CI",
                                 description=DESCRIPTION)
    parser.add_argument("task", nargs="?", metavar="TASKFILE",
                        help="a task file (tasks/*.toml); default: the embedded Glyphs quick start")
    parser.add_argument("--out", metavar="RUN_DIR", default=None,
                        help="the run directory to create (default: runs/<task name>-<date>-<time>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a task key, e.g. --set learner.inner_lr=0.1 or --set train.iterations=50 "
                             "(repeatable; checked like the task file)")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue the run in RUN_DIR from its latest checkpoint, with the settings it "
                             "started with (bit-identical to an uninterrupted run)")
    add_data_root(parser)
    add_machine_options(parser)
    parser.set_defaults(run=run)


def default_out(task: TaskConfig) -> Path:
    return Path("runs") / f"{task.name}-{_dt.datetime.now():%Y%m%d-%H%M%S}"


def describe(task: TaskConfig, trainer: Trainer, run: RunDir, echo: Callable[[str], None]) -> None:
    t, learner = task.train, trainer.learner
    budget = " and ".join(filter(None, [t.iterations and f"{t.iterations} iterations",
                                        t.minutes and f"{t.minutes:g} minutes"]))
    e = task.episodes
    if task.regression:
        data = f"a regression family; {e.shots}-shot, {e.queries} query points per training task"
    else:
        sizes = ", ".join(f"{role} {s.num_classes}" for role, s in trainer.sources.items())
        data = f"{sizes} classes; {task.ways}-way {e.shots}-shot, {e.queries} queries per class"
    parameters = f"{sum(p.numel() for p in learner.model.parameters()):,} parameters"
    if learner.warp is not None:
        parameters += f" ({sum(p.numel() for p in learner.model.warp_parameters()):,} in warp layers)"
    echo(f"run directory: {run.path}")
    echo(f"task {task.name}: {task.description}" if task.description else f"task {task.name}")
    echo(f"data: {task.data.dataset} ({data})")
    echo(f"model: {task.model.name}, {parameters}; algorithm {task.learner.algorithm}, "
         f"inner optimizer {task.inner_optimizer.method}")
    v = task.validation
    validation = f"validation every {v.every} iterations on {v.episodes} episodes" if v.every else "no validation"
    echo(f"budget: {budget} x {t.meta_batch} episodes; {validation}; test on {task.evaluation.episodes}")


def run(args: argparse.Namespace, command: Sequence[str], echo: Callable[[str], None] = print) -> int:
    if args.resume is not None:
        if args.task or args.overrides or args.out:
            raise RunError("--resume continues RUN_DIR with the settings it started with; give it no TASKFILE, --set or --out")
        run_dir = RunDir.open(args.resume).lock()
    else:
        task = load_task(args.task, args.overrides, args.data_root)
        trainer = Trainer(task, args.device)
        run_dir = RunDir.create(args.out or default_out(task), task, command)
    try:
        if args.resume is not None:
            if run_dir.results.is_file():
                result = json.loads(run_dir.results.read_text(encoding="utf-8"))
                echo(f"{run_dir.path} has finished already: test {result['metric']} {result['mean']:.4f} "
                     f"± {result['ci95']:.4f} (95% CI, {result['episodes']} episodes); see {run_dir.results}")
                return 0
            task = run_dir.task(args.data_root)
            trainer = Trainer(task, args.device)
            trainer.resume(run_dir)
            run_dir.record_resume(command)
            echo(f"resuming at iteration {trainer.progress.iteration}")
        return _train(task, trainer, run_dir, echo)
    finally:
        run_dir.release()


def _train(task: TaskConfig, trainer: Trainer, run_dir: RunDir, echo: Callable[[str], None]) -> int:
    describe(task, trainer, run_dir, echo)
    try:
        trainer.train(run_dir)
    except FloatingPointError as err:
        kept = (f"the run in {run_dir.path} keeps its last checkpoint, {run_dir.last_checkpoint}"
                if run_dir.last_checkpoint.is_file() else f"no checkpoint of the run in {run_dir.path} was written")
        raise RunError(f"{err} ({kept})") from None
    result = trainer.finish(run_dir)
    p = trainer.progress
    if p.best_iteration is not None:
        echo(f"best validation {p.best_value:.4f} at iteration {p.best_iteration}")
    echo(f"test {result}")
    echo(f"results: {run_dir.results}; learning curves: {run_dir.plots / 'learning_curves.png'}")
    health = trainer.health
    for finding in health.findings:
        echo(f"warning: {finding}")
    if health.diverged:
        raise RunError(f"the run diverged ({'; '.join(health.findings)}); {run_dir.results} records it: lower "
                       "learner.inner_lr or learner.meta_lr, or set learner.meta_grad_clip")
    return 0
