"""``fewshot-metaopt train``: meta-train a task file (or the quick start) into a run directory."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..distributed import init_from_environment, launched_by_torchrun
from ..runs.errors import RunError
from ..runs.interrupts import Interrupted
from ..runs.run_dir import RunDir
from ..runs.task_config import TaskConfig, load_task
from ..runs.trainer import Trainer
from .parsing import add_data_root, add_machine_options, positive_int

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
                        help="a task file (tasks/*.toml), or an installed task's name ('fewshot-metaopt tasks' lists "
                             "them); default: the embedded Glyphs quick start")
    parser.add_argument("--out", metavar="RUN_DIR", default=None,
                        help="the run directory to create (default: runs/<task name>-<date>-<time>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a task key, e.g. --set learner.inner_lr=0.1 or --set train.iterations=50 "
                             "(repeatable; checked like the task file)")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue the run in RUN_DIR from its latest checkpoint, with the settings it "
                             "started with (bit-identical to an uninterrupted run)")
    parser.add_argument("--nproc", type=positive_int, default=None, metavar="N",
                        help="train with N processes on this machine (torchrun --standalone --nproc-per-node N); "
                             "the meta-batch is shared among them (see docs/distributed.md)")
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
    if args.nproc is not None:
        return launch(args.nproc, command)
    group = init_from_environment(torch.device(args.device)) if launched_by_torchrun() else None
    writes = group is None or group.rank == 0
    echo = echo if writes else (lambda line: None)
    restarted = group is not None and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    if restarted and args.resume is None and args.out and RunDir(args.out).config.is_file():
        # torchrun --max-restarts started the group again after a process died: carry on.
        args.resume, args.task, args.overrides, args.out = args.out, None, [], None
    if args.resume is not None:
        if args.task or args.overrides or args.out:
            raise RunError("--resume continues RUN_DIR with the settings it started with; give it no TASKFILE, --set or --out")
        run_dir = RunDir.open(args.resume)
        if writes:
            run_dir.lock()
    else:
        task = load_task(args.task, args.overrides, args.data_root)
        trainer = Trainer(task, args.device, group=group)
        run_dir = _created(task, args.out, command, group)
    try:
        if args.resume is not None:
            if run_dir.results.is_file():
                result = json.loads(run_dir.results.read_text(encoding="utf-8"))
                echo(f"{run_dir.path} has finished already: test {result['metric']} {result['mean']:.4f} "
                     f"± {result['ci95']:.4f} (95% CI, {result['episodes']} episodes); see {run_dir.results}")
                return 0
            task = run_dir.task(args.data_root)
            trainer = Trainer(task, args.device, group=group)
            trainer.resume(run_dir)
            if writes:
                run_dir.record_resume(command)
            echo(f"resuming at iteration {trainer.progress.iteration}")
        return _train(task, trainer, run_dir, echo, resume_command(args, run_dir, group))
    finally:
        run_dir.release()


def _created(task: TaskConfig, out: str | None, command: Sequence[str], group) -> RunDir:
    """The new run directory: made by rank 0, its path (or the reason it could not be made)
    passed to the other ranks, so that none waits on a rank that failed."""
    if group is None:
        return RunDir.create(out or default_out(task), task, command)
    made, failure = None, None
    if group.rank == 0:
        try:
            made = RunDir.create(out or default_out(task), task, command)
        except RunError as err:
            failure = str(err)
    path, failure = group.broadcast((None if made is None else str(made.path), failure))
    if failure is not None:
        raise RunError(failure)
    return made or RunDir(path)


def launch(nproc: int, command: Sequence[str]) -> int:
    """``command`` without ``--nproc`` under ``torchrun --standalone --nproc-per-node nproc``."""
    argv = list(command[1:])
    at = next(i for i, a in enumerate(argv) if a == "--nproc" or a.startswith("--nproc="))
    del argv[at:at + (1 if "=" in argv[at] else 2)]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                "-m", "fewshot_metaopt.cli", *argv]
    return subprocess.call(launcher)


def resume_command(args: argparse.Namespace, run_dir: RunDir, group) -> str:
    """The command that continues ``run_dir`` bit-identically: the same device, thread count,
    number of processes and data root as this one."""
    command = ["fewshot-metaopt", "train", "--resume", str(run_dir.path)]
    if args.device != "cpu":
        command += ["--device", args.device]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if group is not None:
        command += ["--nproc", str(group.world_size)]
    if args.data_root is not None:
        command += ["--data-root", str(args.data_root)]
    return shlex.join(command)


def _train(task: TaskConfig, trainer: Trainer, run_dir: RunDir, echo: Callable[[str], None], resume: str) -> int:
    describe(task, trainer, run_dir, echo)
    try:
        trainer.train(run_dir)
        result = trainer.finish(run_dir)
    except Interrupted as stop:
        echo(f"interrupted at iteration {stop.iteration}; the checkpoint {run_dir.last_checkpoint} holds it")
        echo(f"continue with: {resume}")
        raise
    except KeyboardInterrupt:  # a second Ctrl-C, or one during the final test
        if run_dir.last_checkpoint.is_file():
            echo(f"interrupted; the run keeps its last checkpoint, {run_dir.last_checkpoint}")
            echo(f"continue with: {resume}")
        raise
    except FloatingPointError as err:
        kept = (f"the run in {run_dir.path} keeps its last checkpoint, {run_dir.last_checkpoint}"
                if run_dir.last_checkpoint.is_file() else f"no checkpoint of the run in {run_dir.path} was written")
        raise RunError(f"{err} ({kept})") from None
    p = trainer.progress
    if p.stopped_by is not None:
        echo(f"stopped at iteration {p.iteration} by {p.stopped_by}")
    if p.best_iteration is not None:
        echo(f"best validation {p.best_value:.4f} at iteration {p.best_iteration}")
    echo(f"test {result}")
    echo(f"results: {run_dir.results}; learning curves: {run_dir.plots / 'learning_curves.png'}")
    health = trainer.health
    if health is None:  # a rank other than 0: rank 0 judges and reports the run
        return 0
    for finding in health.findings:
        echo(f"warning: {finding}")
    if health.diverged:
        raise RunError(f"the run diverged ({'; '.join(health.findings)}); {run_dir.results} records it: lower "
                       "learner.inner_lr or learner.meta_lr, or set learner.meta_grad_clip")
    return 0
