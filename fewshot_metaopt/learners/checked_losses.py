"""An adapted task's losses, each checked for NaN and infinity (:meth:`MetaLearner.checked`), so
that a non-finite task raises :class:`NonFiniteLossError` wherever the meta-gradient is taken and
the caller's ``skip_nonfinite_tasks`` handling decides what becomes of it."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..engines.func_engine import VmappedRun
from ..episodes.episode import Episode
from .interface import MetaLearner


def checked_query(learner: MetaLearner, fmodel: Any, episode: Episode, task: int, steps: int) -> tuple[Tensor, Tensor]:
    """The adapted ``fmodel``'s query output and its loss, checked as the loss after ``steps``
    inner steps."""
    output = learner.forward(fmodel, episode.query_x, task, "query")
    return output, learner.checked(learner.loss(output, episode.query_y, task, "query"), task, "query", steps)


def checked_vmapped_task(learner: MetaLearner, run: VmappedRun, i: int, task: int, episode: Episode,
                         steps: int) -> Tensor:
    """Task ``i`` of a vmapped meta-batch: each of its support losses checked, then its query
    loss, checked and returned."""
    for step in range(steps):
        learner.checked(run.support_losses[i, step], task, "support", step)
    return learner.checked(learner.loss(run.query_outputs[i], episode.query_y, task, "query"), task, "query", steps)
