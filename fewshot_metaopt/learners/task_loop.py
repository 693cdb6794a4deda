"""The meta-gradient of a meta-batch with its tasks adapted one after another (the default,
and the fastest way on the CPU): each task's share is backpropagated before the next task
runs, so memory holds one task's graph at a time."""

from __future__ import annotations

from typing import List

from ..episodes.episode import Episode
from .checked_losses import checked_query
from .errors import NonFiniteLossError
from .interface import MetaLearner
from .results import MetaTrainResult
from .tally import MetaBatchTally


def accumulate_task_loop_meta_gradient(learner: MetaLearner, episodes: List[Episode]) -> MetaTrainResult:
    cfg = learner.config
    steps = cfg.inner_steps
    weights = learner.step_weights(steps) if cfg.multi_step_loss else None
    tally, skipped = MetaBatchTally(), 0
    for task, episode in enumerate(episodes):
        episode = episode.to(learner.device)
        try:
            fmodel, _, losses = learner.inner_loop(episode, steps, learner.training_mode, task,
                                                   per_step_query=cfg.multi_step_loss)
            output, final = checked_query(learner, fmodel, episode, task, steps)
        except NonFiniteLossError:
            if not cfg.skip_nonfinite_tasks:
                raise
            skipped += 1
            continue
        losses.append(final)
        objective = final if weights is None else sum(w * l for w, l in zip(weights.tolist(), losses))
        learner.backward(objective / len(episodes))
        tally.add(final.item(), output, episode.query_y)
    return tally.result(learner.meta_parameters, len(episodes), skipped)
