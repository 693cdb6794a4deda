"""Meta-training a task inside a run directory: the loop, its checkpoints and its resumption.

Bit-exact resumption rests on three things: every source of randomness is in the checkpoint
(the global RNGs and the training sampler's generator; validation and test episodes come
from fixed manifests), the state of everything that changes (weights, the inner rule's
meta-parameters, the outer optimizer, the schedule, the running metrics window) is in it too,
and ``metrics.jsonl`` is cut back to what the checkpoint saw. A resumed run then repeats the
uninterrupted one operation for operation (on the same machine, thread count and versions).
"""

from __future__ import annotations

import math
import shlex
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..atomic_files import remove_leftovers
from ..distributed import MetaBatchGroup
from ..learners import EvaluationResult
from . import checkpoint_pair, rng_state
from .callbacks import (
    FAILED, FINISHED, INTERRUPTED, STOPPED, Callback, CallbackList, CheckpointWritten, IterationEnd, RunEnd, Validation,
    frozen_lrs,
)
from .checkpoint import applied, load_checkpoint
from .components import build_learner, build_scheduler, manifest, train_sampler
from .data_sources import open_split, sha256_of, split_files
from .errors import RunError
from .health import Health, diagnose
from .interrupts import InterruptGuard, Interrupted
from .learning_curves import plot_learning_curves
from .metrics_log import MetricsLog, read_metrics
from .progress_bar import TrainingBar
from .provenance import git_commit, package_version
from .run_dir import RunDir, now, write_json
from .task_config import TaskConfig
from .task_identity import same_task
from .trackers import build_trackers, check_trackers

ROLES = ("train", "val", "test")


@dataclass
class Window:
    """The iterations since the last metrics line, averaged into the next one."""

    loss: float = 0.0
    accuracy: float = 0.0
    count: int = 0
    scored: int = 0
    skipped_tasks: int = 0
    grad_norm: float = math.nan

    def add(self, result) -> None:
        self.loss += result.loss
        self.count += 1
        if result.accuracy is not None:
            self.accuracy += result.accuracy
            self.scored += 1
        self.skipped_tasks += result.skipped_tasks
        self.grad_norm = result.grad_norm

    def flush(self) -> dict[str, Any]:
        line = {
            "loss": self.loss / self.count if self.count else None,
            "accuracy": self.accuracy / self.scored if self.scored else None,
            "grad_norm": self.grad_norm,
            "skipped_tasks": self.skipped_tasks,
        }
        self.__init__()
        return line


@dataclass
class Progress:
    iteration: int = 0
    elapsed_s: float = 0.0
    best_value: float | None = None
    best_iteration: int | None = None
    metrics_bytes: int = 0
    window: Window = field(default_factory=Window)
    # The callback and reason that ended the run, kept in the checkpoint so that a run killed
    # between its last checkpoint and results.json resumes to its end, not past it.
    stopped_by: str | None = None

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "Progress":
        return cls(**{**state, "window": Window(**state["window"])})


class Trainer:
    """Everything a run needs, built from ``task`` before anything is written to disk, so
    that bad data or settings fail without leaving a half-made run directory behind."""

    def __init__(self, task: TaskConfig, device: str = "cpu", echo: Callable[[str], None] = tqdm.write,
                 group: MetaBatchGroup | None = None, callbacks: Sequence[Callback] = ()) -> None:
        # Distributed, every rank trains and evaluates its share; rank 0 alone writes the run.
        self.group = group
        self.writes = group is None or group.rank == 0
        if group is not None and task.train.meta_batch % group.world_size:
            raise RunError(f"train.meta_batch {task.train.meta_batch} does not divide over {group.world_size} "
                           f"processes: make it a multiple of {group.world_size}, or use another number of processes")
        self.task, self.device = task, device
        self.echo = echo if self.writes else (lambda line: None)
        self.sources = {role: open_split(task.data, role) for role in ROLES}
        self.sampler = train_sampler(task, self.sources["train"])
        self.val = manifest(task, self.sources["val"], "val", task.validation.episodes)
        self.test = manifest(task, self.sources["test"], "test", task.evaluation.episodes)
        rng_state.seed_everything(task.seed)
        self.learner = build_learner(task, device).distribute(group)
        self.scheduler = build_scheduler(task, self.learner)
        self.progress = Progress()
        self.health: Health | None = None
        # Rank 0 alone calls them: it is the rank that writes the run. The trackers the
        # [logging] table asks for join them when training starts, in the run directory.
        self.callbacks = CallbackList(callbacks if self.writes else ())
        self._trackers_joined = not self.writes
        if self.writes:
            check_trackers(task.logging)

    # ------------------------------------------------------------------------ checkpoints

    def _payload(self) -> dict[str, Any]:
        return {
            "iteration": self.progress.iteration,
            "task": self.task.to_dict(),
            "learner": self.learner.state_dict(),
            "meta_schedule": None if self.scheduler is None else self.scheduler.state_dict(),
            "rng": rng_state.capture(),
            "samplers": {"train": self.sampler.state_dict()},
            "progress": asdict(self.progress),
            "package_version": package_version(),
        }

    def _checkpoint(self, run: RunDir, log: MetricsLog | None, started: float, best: bool,
                    notify: bool = True) -> str | None:
        """Write ``last.pt`` (and ``best.pt``); the stop a callback asks for on it, if any."""
        self.progress.elapsed_s = time.monotonic() - started
        if log is None:
            return None
        self.progress.metrics_bytes = log.sync()
        checkpoint_pair.save(run, self._payload(), best)
        if not notify:
            return None
        return self.callbacks.checkpoint(CheckpointWritten(self.progress.iteration, run.last_checkpoint, best))

    def resume(self, run: RunDir) -> None:
        """Continue from ``run``'s latest checkpoint (from the start if it has none yet).
        Distributed, every rank loads it and rank 0 alone repairs the run directory."""
        if self.writes:
            for folder in (run.path, run.checkpoints, run.plots):
                remove_leftovers(folder)
        if not run.last_checkpoint.is_file():
            if self.writes:
                MetricsLog.cut_back(run.metrics, 0)
                for path in (run.best_checkpoint, checkpoint_pair.pending_best(run)):
                    path.unlink(missing_ok=True)
            return
        # Weights go straight to the run's device; the generators take their states back to
        # the CPU themselves (the sampler's, the replay buffer's, rng_state).
        state = load_checkpoint(run.last_checkpoint, map_location=self.device)
        if not same_task(state["task"], self.task.to_dict()):
            raise RunError(f"{run.config} no longer matches the run's checkpoint {run.last_checkpoint}; "
                           "a run resumes with the settings it started with")
        if self.writes:
            checkpoint_pair.settle(run, state)
        with applied(run.last_checkpoint):
            self.learner.load_state_dict(state["learner"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["meta_schedule"])
            self.sampler.load_state_dict(state["samplers"]["train"])
            rng_state.restore(state["rng"])
            self.progress = Progress.from_dict(state["progress"])
        if self.writes:
            MetricsLog.cut_back(run.metrics, self.progress.metrics_bytes)

    # ------------------------------------------------------------------------ the loop

    def _spent(self, started: float) -> bool:
        t = self.task.train
        if t.iterations is not None and self.progress.iteration >= t.iterations:
            return True
        if t.minutes is None:
            return False
        spent = time.monotonic() - started >= 60 * t.minutes
        # Clocks differ between ranks; all stop at the iteration rank 0's clock says.
        return spent if self.group is None else self.group.broadcast(spent)

    def _agreed(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank: what its callbacks and its Ctrl-C decided."""
        return value if self.group is None else self.group.broadcast(value)

    def _stop(self, reason: str | None) -> bool:
        """Record the first stop a callback asked for; whether one has been asked for."""
        if reason is not None and self.progress.stopped_by is None:
            self.progress.stopped_by = reason
        return self.progress.stopped_by is not None

    def _log(self, run: RunDir, log: MetricsLog | None, started: float, validate: bool) -> str | None:
        """Write a metrics line (validating first when ``validate``); a stop a callback asked for."""
        p = self.progress
        line = {"iteration": p.iteration, **p.window.flush(),
                "meta_lr": self.learner.meta_optimizer.param_groups[0]["lr"]}
        improved, asked = False, None
        if validate:
            episodes = tqdm(self.val, desc="validate", leave=False, unit="episode", mininterval=1.0,
                            disable=not self.writes)
            score = self.learner.evaluate(episodes)
            higher_is_better = score.metric == "accuracy"
            improved = p.best_value is None or (
                score.mean > p.best_value if higher_is_better else score.mean < p.best_value
            )
            if improved:
                p.best_value, p.best_iteration = score.mean, p.iteration
            line.update(val_metric=score.metric, val_mean=score.mean, val_ci95=score.ci95, best=improved)
            self.echo(f"iteration {p.iteration}: validation {score}{' (best so far)' if improved else ''}")
            if self.callbacks:
                asked = self.callbacks.validation(Validation(
                    p.iteration, score.metric, score.mean, score.ci95, improved, p.best_value, p.best_iteration,
                    frozen_lrs(self.learner.learned_lr_tensors())))
        line["wall_s"] = round(time.monotonic() - started, 3)
        if log is not None:
            log.append(line)
        if improved:
            on_best = self._checkpoint(run, log, started, best=True)
            asked = asked or on_best
        return asked

    def train(self, run: RunDir) -> str:
        """Meta-train until the budget is spent (``finished``) or a callback stops the run
        (``stopped``); both end with a checkpoint. Ctrl-C writes a checkpoint at the end of the
        iteration and raises :class:`~.interrupts.Interrupted`."""
        t, p = self.task.train, self.progress
        if not self._trackers_joined:
            self.callbacks = CallbackList([*build_trackers(self.task, run, p.iteration), *self.callbacks.callbacks])
            self._trackers_joined = True
        log = MetricsLog(run.metrics) if self.writes else None
        started = time.monotonic() - p.elapsed_s
        bar = TrainingBar(t.iterations, t.minutes, p.iteration, enabled=self.writes)
        try:
            with InterruptGuard() as guard:
                self._loop(run, log, started, bar, guard)
        except Interrupted as stop:
            self._finish_callbacks(run, INTERRUPTED, str(stop))
            raise
        except BaseException as err:
            self._finish_callbacks(run, INTERRUPTED if isinstance(err, KeyboardInterrupt) else FAILED,
                                   str(err) or type(err).__name__)
            raise
        finally:
            bar.close()
            if log is not None:
                log.close()
        return STOPPED if p.stopped_by is not None else FINISHED

    def _loop(self, run: RunDir, log: MetricsLog | None, started: float, bar: TrainingBar,
              guard: InterruptGuard) -> None:
        t, p = self.task.train, self.progress
        every = self.task.validation.every
        done = self._spent(started) or p.stopped_by is not None
        while not done:
            result = self.learner.meta_train_step(self.sampler.sample_batch(t.meta_batch))
            meta_lr = self.learner.meta_optimizer.param_groups[0]["lr"]
            if self.scheduler is not None:
                self.scheduler.step()
            p.iteration += 1
            p.window.add(result)
            asked = None
            if self.callbacks:
                asked = self.callbacks.iteration_end(IterationEnd(
                    p.iteration, result.loss, result.accuracy, result.grad_norm, meta_lr, time.monotonic() - started))
            done = self._spent(started) or self._stop(self._agreed(asked))
            validate = every > 0 and (p.iteration % every == 0 or done)
            if p.iteration % t.log_every == 0 or validate or done:
                done = self._stop(self._agreed(self._log(run, log, started, validate))) or done
            saved = p.iteration % t.checkpoint_every == 0 or done
            if saved:
                asked = self._agreed(self._checkpoint(run, log, started, best=False))
                if not done and self._stop(asked):
                    # Asked for on a checkpoint written mid-run: the iterations not yet logged get
                    # their line, and last.pt is written again to record the stop.
                    done = True
                    if p.window.count:
                        self._log(run, log, started, validate=False)
                    self._checkpoint(run, log, started, best=False, notify=False)
            postfix = {"loss": f"{result.loss:.3f}"}
            if result.accuracy is not None:
                postfix["acc"] = f"{result.accuracy:.3f}"
            bar.advance(p.iteration, time.monotonic() - started, postfix)
            if not done and self._agreed(guard.requested):
                # The iteration did all the uninterrupted run does at it (its line, its
                # validation) and nothing more; its checkpoint lets the resumed run go on from here.
                if not saved:
                    self._checkpoint(run, log, started, best=False)
                raise Interrupted(p.iteration, str(run.last_checkpoint))

    def _finish_callbacks(self, run: RunDir, status: str, reason: str | None = None,
                          result: EvaluationResult | None = None) -> None:
        if self.callbacks:
            self.callbacks.finish(RunEnd(status, self.progress.iteration, run.path, reason, result))

    # ------------------------------------------------------------------------ the end

    def finish(self, run: RunDir) -> EvaluationResult:
        """Test the checkpoint that stands for the run; write results.json and the curves; tell
        the callbacks how the run ended."""
        try:
            result = self._test_and_record(run)
        except BaseException as err:
            self._finish_callbacks(run, INTERRUPTED if isinstance(err, KeyboardInterrupt) else FAILED,
                                   str(err) or type(err).__name__)
            raise
        p = self.progress
        self._finish_callbacks(run, FINISHED if p.stopped_by is None else STOPPED, p.stopped_by, result)
        return result

    def _test_and_record(self, run: RunDir) -> EvaluationResult:
        if self.group is not None:
            self.group.barrier()  # rank 0's last checkpoint is on disk before anyone reads it
        path = checkpoint_pair.checkpoint_for_use(run)
        state = load_checkpoint(path, map_location=self.device)
        with applied(path):
            self.learner.load_state_dict(state["learner"])
        result = self.learner.evaluate(tqdm(self.test, desc="test", leave=False, unit="episode", mininterval=1.0,
                                            disable=not self.writes))
        if not self.writes:
            return result
        info = run.read_info()
        p = self.progress
        self.health = diagnose(read_metrics(run.metrics), self.task.ways, self.task.regression, result.mean, result.ci95)
        results = {
            "task": self.task.name,
            "split": self.task.data.test_split,
            "metric": result.metric,
            "mean": result.mean,
            "ci95": result.ci95,
            "episodes": len(result.values),
            "inner_steps": self.learner.config.eval_steps,
            "seed": self.task.seed,
            "checkpoint": str(path.relative_to(run.path)),
            "checkpoint_iteration": state["iteration"],
            "best_validation": None if p.best_value is None else {"iteration": p.best_iteration, "mean": p.best_value},
            "iterations": p.iteration,
            "status": FINISHED if p.stopped_by is None else STOPPED,
            "stopped_by": p.stopped_by,
            "health": self.health.to_dict(),
            "train_seconds": round(p.elapsed_s, 1),
            "split_files": {role: {str(f): sha256_of(f) for f in split_files(source)} for role, source in self.sources.items()},
            "package_version": package_version(),
            "git": git_commit(),
            "torch_version": torch.__version__,
            "threads": torch.get_num_threads(),
            "world_size": 1 if self.group is None else self.group.world_size,
            "device": str(self.device),
            "command": shlex.join(info["command"]),
            "resumed": [shlex.join(r["command"]) for r in info.get("resumed", [])],
            "finished": now(),
        }
        write_json(run.results, results)
        plot_learning_curves(read_metrics(run.metrics), run.plots / "learning_curves.png", self.task.name, results)
        return result
