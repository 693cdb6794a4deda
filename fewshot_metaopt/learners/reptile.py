"""Reptile (Nichol et al. 2018): the initialisation moves towards the weights each task adapts to.

For tasks ``i`` with support sets ``S_i``::

    phi_i = U^k(theta; S_i)          k steps of the inner rule, on the whole support set or on
                                     mini-batches of it (``reptile_batch_size``)
    g = mean_i (theta - phi_i)       the pseudo-gradient, put in the adapted parameters' .grad

and the outer optimizer steps on ``g``. With ``meta_optimizer="sgd"`` and ``meta_lr=epsilon``
that step is Reptile's own update ``theta += epsilon * (mean_i phi_i - theta)``, up to
rounding, and the meta-lr schedule anneals ``epsilon``; with ``"adam"`` the pseudo-gradient is
handed to Adam. Nothing is differentiated through the inner loop, which keeps no graph: memory and
time are those of ``k`` plain training steps per task. The query set plays no part in the
update; its loss and accuracy at ``phi_i`` are reported, as MAML's are.

Two ways to run a meta-batch, as for MAML: task after task on either engine, or
(``vmap_tasks=True``) chunks of tasks in one ``torch.func.vmap`` on the func engine; both draw
the same mini-batches and give the same pseudo-gradient.
"""

from __future__ import annotations

import math
from typing import List, Mapping

import torch
from torch import Tensor

from ..episodes.episode import Episode
from .checked_losses import checked_query, checked_vmapped_task
from .errors import NonFiniteLossError
from .interface import MetaLearner
from .results import MetaTrainResult
from .tally import MetaBatchTally
from .vmapped_tasks import Chunk, check_chunk_inputs, stacked_tasks, vmap_safe_loss


def support_batches(size: int, batch_size: int | None, steps: int) -> list[Tensor] | None:
    """The indices of the support examples each of ``steps`` inner steps descends on: the
    examples in a random order (torch's global generator, which a checkpoint keeps), cycled
    through ``batch_size`` at a time, each example once before any is used again, and shuffled
    again for each pass (Nichol et al.'s sampling without replacement). ``None`` (every step
    on the whole support set) when ``batch_size`` is ``None`` or covers the support set."""
    if batch_size is None or batch_size >= size:
        return None
    passes = math.ceil(steps * batch_size / size)
    order = torch.cat([torch.randperm(size) for _ in range(passes)])
    return [order[step * batch_size:(step + 1) * batch_size] for step in range(steps)]


def _refuse_learned_rule(learner: MetaLearner) -> None:
    model = {id(p) for p in learner.model.parameters()}
    if any(id(p) not in model for p in learner.meta_parameters):
        raise ValueError("reptile moves the initialisation only: the inner rule's own parameters (learned lrs, a "
                         "learned optimizer) would get no meta-gradient; use a rule without parameters, such as "
                         "the default SGD with a fixed inner_lr")


def _add_pseudo_gradient(learner: MetaLearner, adapted: Mapping[str, Tensor], share: float) -> None:
    """Add ``share * (theta - phi)`` to the ``.grad`` of the adapted parameters ``theta``, as the
    gradient of ``share * <theta - phi, theta>`` with ``theta - phi`` constant, so that it goes
    through the learner's backward (fp16 loss scaling included) like every meta-gradient."""
    theta = dict(learner.model.named_parameters())
    targets = [theta[name] for name in adapted]
    objective = sum((share * (theta[name].detach() - phi.detach()) * theta[name]).sum()
                    for name, phi in adapted.items())
    learner.backward(objective, inputs=targets)


def _task_after_task(learner: MetaLearner, episodes: List[Episode]) -> MetaTrainResult:
    cfg = learner.config
    steps, share = cfg.inner_steps, 1.0 / len(episodes)
    names = [name for name, _ in learner.model.named_parameters()]
    tally, skipped = MetaBatchTally(), 0
    for task, episode in enumerate(episodes):
        episode = episode.to(learner.device)
        batches = support_batches(len(episode.support_y), cfg.reptile_batch_size, steps)
        try:
            fmodel, _, _ = learner.inner_loop(episode, steps, "eval", task, per_step_query=False, batches=batches)
            with torch.no_grad():
                output, final = checked_query(learner, fmodel, episode, task, steps)
        except NonFiniteLossError:
            if not cfg.skip_nonfinite_tasks:
                raise
            skipped += 1
            continue
        phi = dict(zip(names, fmodel.fast_params))
        _add_pseudo_gradient(learner, {name: phi[name] for name in learner.adapted}, share)
        tally.add(final.item(), output, episode.query_y)
    return tally.result(learner.meta_parameters, len(episodes), skipped)


def _chunk_batches(chunk: Chunk, batch_size: int | None, steps: int) -> Tensor | None:
    """Every task's :func:`support_batches`, stacked ``(tasks, steps, batch_size)``."""
    drawn = [support_batches(len(episode.support_y), batch_size, steps) for _, episode in chunk]
    if drawn[0] is None:
        return None
    return torch.stack([torch.stack(batches) for batches in drawn]).to(chunk[0][1].support_y.device)


def _vmapped(learner: MetaLearner, episodes: List[Episode]) -> MetaTrainResult:
    cfg = learner.config
    steps, share = cfg.inner_steps, 1.0 / len(episodes)
    tasks = [(task, episode.to(learner.device)) for task, episode in enumerate(episodes)]
    size = cfg.vmap_chunk_size or len(tasks)
    tally, skipped = MetaBatchTally(), 0
    for start in range(0, len(tasks), size):
        chunk = tasks[start:start + size]
        check_chunk_inputs(learner, chunk)
        support_x, support_y, query_x, query_y = stacked_tasks(chunk)
        batches = _chunk_batches(chunk, cfg.reptile_batch_size, steps)
        # No graph: torch.func.grad still differentiates each support loss inside.
        with torch.no_grad():
            run = learner.func_engine.vmapped(support_x, support_y, query_x, query_y, steps, "first_order",
                                              vmap_safe_loss(cfg.loss, support_y), batches=batches)
        for i, (task, episode) in enumerate(chunk):
            try:
                final = checked_vmapped_task(learner, run, i, task, episode, steps)
            except NonFiniteLossError:
                if not cfg.skip_nonfinite_tasks:
                    raise
                skipped += 1  # tasks do not mix here: the others' weights are untouched by its NaNs
                continue
            _add_pseudo_gradient(learner, {name: weights[i] for name, weights in run.adapted.items()}, share)
            tally.add(final.item(), run.query_outputs[i], episode.query_y)
    return tally.result(learner.meta_parameters, len(episodes), skipped)


def accumulate_reptile_pseudo_gradient(learner: MetaLearner, episodes: List[Episode]) -> MetaTrainResult:
    """Put the meta-batch's mean ``theta - phi_i`` in the adapted parameters' ``.grad``."""
    _refuse_learned_rule(learner)
    return (_vmapped if learner.config.vmap_tasks else _task_after_task)(learner, episodes)
