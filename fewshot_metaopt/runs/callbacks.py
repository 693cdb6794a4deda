"""Callbacks: the caller's code, called by the training loop at its events.

A callback subclasses :class:`Callback` and overrides the hooks it needs; each hook receives
a frozen record of the event (:class:`IterationEnd`, :class:`Validation`,
:class:`CheckpointWritten`, :class:`RunEnd`), never the trainer, so a callback can watch the
run but cannot change its state behind its back. ``metrics.jsonl`` stays the run's source of
truth; callbacks (TensorBoard, W&B, MLflow) mirror it elsewhere.

A hook may end the run by returning :class:`Stop`: the loop finishes the iteration, logs it,
validates when validation is on and this iteration has not been validated, writes the
checkpoint, tests the best checkpoint and writes ``results.json`` with ``"status":
"stopped"`` and the reason. Every callback still sees the event that one of them stopped on.
This is how a hyperparameter search prunes a trial::

    class Prune(Callback):
        def __init__(self, trial):
            self.trial = trial

        def on_validation(self, record):
            self.trial.report(record.mean, record.iteration)
            if self.trial.should_prune():
                return Stop(f"pruned at iteration {record.iteration}")

Distributed, callbacks run on rank 0 alone (the rank that writes the run); a stop it asks for
is passed to every rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from torch import Tensor

from ..learners import EvaluationResult

# The ways a run ends, as RunEnd.status and results.json's "status" say.
FINISHED = "finished"  # the budget (iterations or minutes) was spent
STOPPED = "stopped"  # a callback returned Stop
INTERRUPTED = "interrupted"  # Ctrl-C: the run keeps a checkpoint and resumes with --resume
FAILED = "failed"  # an error ended it (diverged, a write failed, a callback raised)


@dataclass(frozen=True)
class Stop:
    """Returned by a hook: end the run cleanly, for ``reason`` (recorded in ``results.json``)."""

    reason: str

    def __post_init__(self) -> None:
        if not isinstance(self.reason, str) or not self.reason.strip():
            raise ValueError(f"Stop needs a reason to record (a non-empty string), got {self.reason!r}")


@dataclass(frozen=True)
class IterationEnd:
    """One meta-iteration done: its meta-batch's mean query loss and accuracy (None for
    regression), the meta-gradient norm before clipping, the meta learning rate it stepped
    with, and the run's training time so far (resumed runs included)."""

    iteration: int
    loss: float
    accuracy: float | None
    grad_norm: float
    meta_lr: float
    elapsed_s: float

    def train_series(self) -> dict[str, float]:
        """The ``train/*`` values trackers log for this iteration: accuracy only for
        classification, the gradient norm only when it is finite."""
        values = {"train/loss": self.loss, "train/meta_lr": self.meta_lr}
        if self.accuracy is not None:
            values["train/accuracy"] = self.accuracy
        if math.isfinite(self.grad_norm):
            values["train/grad_norm"] = self.grad_norm
        return values


@dataclass(frozen=True)
class Validation:
    """The model scored on the fixed validation manifest: ``metric`` (``accuracy`` or ``mse``)
    with its mean and 95% CI half-width; ``improved`` when it is the best so far (its
    checkpoint becomes ``best.pt``). ``learned_lrs`` holds copies of the inner rule's
    learning-rate tensors per adapted parameter (empty for learned optimizers, which have none)."""

    iteration: int
    metric: str
    mean: float
    ci95: float
    improved: bool
    best_value: float
    best_iteration: int
    learned_lrs: Mapping[str, Tensor]

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "accuracy"


@dataclass(frozen=True)
class CheckpointWritten:
    """``last.pt`` (and with ``best`` also ``best.pt``) now holds ``iteration``."""

    iteration: int
    path: Path
    best: bool


@dataclass(frozen=True)
class RunEnd:
    """The run is over for this process: ``status`` is one of ``finished``, ``stopped``,
    ``interrupted`` or ``failed``; ``reason`` says why it stopped, was interrupted or failed;
    ``result`` is the test result of the checkpoint that stands for the run (None unless the
    run finished or was stopped)."""

    status: str
    iteration: int
    run: Path
    reason: str | None = None
    result: EvaluationResult | None = None


class Callback:
    """Override the hooks you need; each may return :class:`Stop` to end the run (``on_finish``
    comes after the end, so what it returns is ignored)."""

    def on_iteration_end(self, record: IterationEnd) -> Stop | None:
        return None

    def on_validation(self, record: Validation) -> Stop | None:
        return None

    def on_checkpoint(self, record: CheckpointWritten) -> Stop | None:
        return None

    def on_finish(self, record: RunEnd) -> None:
        return None


def frozen_lrs(tensors: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    """Detached CPU copies, read-only as a mapping: a callback cannot reach the rule's tensors."""
    return MappingProxyType({name: t.detach().to("cpu", copy=True) for name, t in tensors.items()})


class CallbackList:
    """Calls every callback's hook in order and returns the first :class:`Stop` asked for,
    naming the callback that asked (``"Prune: pruned at iteration 300"``)."""

    def __init__(self, callbacks: Sequence[Callback] = ()) -> None:
        callbacks = list(callbacks)
        for callback in callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(f"callbacks must be fewshot_metaopt.runs.Callback instances, got {callback!r}; "
                                "subclass Callback and override the hooks you need")
        self.callbacks = callbacks

    def __len__(self) -> int:
        return len(self.callbacks)

    def _call(self, hook: str, record: Any) -> str | None:
        stop = None
        for callback in self.callbacks:
            answer = getattr(callback, hook)(record)
            if answer is None:
                continue
            if not isinstance(answer, Stop):
                raise TypeError(f"{type(callback).__name__}.{hook} returned {answer!r}; return None to go on, "
                                "or Stop(reason) to end the run")
            if stop is None:
                stop = f"{type(callback).__name__}: {answer.reason}"
        return stop

    def iteration_end(self, record: IterationEnd) -> str | None:
        return self._call("on_iteration_end", record)

    def validation(self, record: Validation) -> str | None:
        return self._call("on_validation", record)

    def checkpoint(self, record: CheckpointWritten) -> str | None:
        return self._call("on_checkpoint", record)

    def finish(self, record: RunEnd) -> None:
        """Every callback's ``on_finish``, even when one of them raises (the first error is
        raised after the others have run, so every tracker gets to close its files)."""
        failure: BaseException | None = None
        for callback in self.callbacks:
            try:
                callback.on_finish(record)
            except Exception as err:  # noqa: BLE001 - re-raised below, once the rest have closed
                failure = failure or err
        if failure is not None:
            raise failure
