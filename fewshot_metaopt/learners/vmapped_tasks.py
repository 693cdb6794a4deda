"""The meta-gradient of a meta-batch with its tasks adapted together (``vmap_tasks=True``).

The func engine's :meth:`~fewshot_metaopt.engines.func_engine.FuncEngine.vmapped` runs the
inner loops of a chunk of same-shaped tasks in one ``torch.func.vmap``; each chunk's
meta-gradient is taken before the next chunk runs, so memory grows with ``vmap_chunk_size``,
not with the meta-batch. The result equals the task-by-task loop's: the same checks (inputs
that do not fit, labels out of range, unused parameters, non-finite losses) name the same task,
since they run on concrete tensors before and after the vmapped part, where data-dependent
checks cannot run.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..episodes.episode import Episode
from .checked_losses import checked_vmapped_task
from .interface import MetaLearner
from .results import MetaTrainResult
from .tally import MetaBatchTally

Chunk = List[Tuple[int, Episode]]


def vmap_safe_loss(kind: str, target: Tensor):
    if kind == "auto":
        kind = "mse" if target.is_floating_point() else "cross_entropy"
    return F.mse_loss if kind == "mse" else F.cross_entropy


def stacked_tasks(chunk: Chunk) -> list[Tensor]:
    """support_x, support_y, query_x, query_y of the chunk's tasks, stacked."""
    stacked = []
    first_task, first = chunk[0]
    for name in ("support_x", "support_y", "query_x", "query_y"):
        for task, episode in chunk:
            if getattr(episode, name).shape != getattr(first, name).shape:
                raise ValueError(
                    f"vmap_tasks adapts same-shaped tasks together: task {task} has {name} of shape "
                    f"{tuple(getattr(episode, name).shape)}, task {first_task} has {tuple(getattr(first, name).shape)}"
                )
        stacked.append(torch.stack([getattr(episode, name) for _, episode in chunk]))
    return stacked


def stacked_initial_weights(learner: MetaLearner, chunk: Chunk, mode: str) -> dict[str, Tensor] | None:
    """Each task's own starting weights (Proto-MAML's head), stacked for the vmapped loop;
    ``None`` when every task starts from the model's."""
    starts = [learner.initial_weights(episode, task, mode) for task, episode in chunk]
    if starts[0] is None:
        return None
    return {name: torch.stack([start[name] for start in starts]) for name in starts[0]}


def check_chunk_inputs(learner: MetaLearner, chunk: Chunk) -> None:
    """What the vmapped loop cannot check itself, on concrete tensors: the first task's support
    set fits the model (the chunk shares its shapes), every label is in range, and (once per
    learner) every adapted parameter gets a gradient."""
    engine = learner.func_engine
    task, first = chunk[0]
    fmodel = engine.adapted_model(dict(learner.model.named_parameters()))
    with torch.set_grad_enabled(not engine.usage_checked):
        output = learner.forward(fmodel, first.support_x, task, "support")
        if not engine.usage_checked:
            engine.check_gradients_reach(learner.loss(output, first.support_y, task, "support"))
    template = output.detach()
    for task, episode in chunk:
        for phase, y in (("support", episode.support_y), ("query", episode.query_y)):
            learner.loss(template.new_zeros(y.shape[0], *template.shape[1:]), y, task, phase)


def _differentiate_chunk(
    learner: MetaLearner, chunk: Chunk, weights: Tensor | None, batch_size: int
) -> tuple[list[tuple[Tensor, Tensor, Episode]], int]:
    """Adds the chunk's share of the meta-gradient; returns ``(final loss, output, episode)``
    of each task kept and how many were skipped for non-finite losses."""
    cfg = learner.config
    steps = cfg.inner_steps
    mode = learner.training_mode
    check_chunk_inputs(learner, chunk)
    support_x, support_y, query_x, query_y = stacked_tasks(chunk)
    run = learner.func_engine.vmapped(
        support_x, support_y, query_x, query_y, steps, mode,
        vmap_safe_loss(cfg.loss, support_y), per_step_query=cfg.multi_step_loss,
        initial=stacked_initial_weights(learner, chunk, mode),
    )
    kept, bad = [], []
    for i, (task, episode) in enumerate(chunk):
        try:
            final = checked_vmapped_task(learner, run, i, task, episode, steps)
        except FloatingPointError:
            if not cfg.skip_nonfinite_tasks:
                raise
            bad.append(i)
            continue
        kept.append((i, final))
    if bad:
        # A task's NaNs would reach the others' gradients through the batched backward
        # (0 * NaN), so the chunk runs again without it.
        rest = [item for i, item in enumerate(chunk) if i not in bad]
        results, skipped = _differentiate_chunk(learner, rest, weights, batch_size) if rest else ([], 0)
        return results, skipped + len(bad)
    objective = 0.0
    for i, final in kept:
        if weights is None:
            objective = objective + final
        else:
            losses = [*run.step_query_losses[i].unbind(), final] if steps > 1 else [final]
            objective = objective + sum(w * loss for w, loss in zip(weights.tolist(), losses))
    learner.backward(objective / batch_size)
    return [(final, run.query_outputs[i], chunk[i][1]) for i, final in kept], 0


def accumulate_vmapped_meta_gradient(learner: MetaLearner, episodes: List[Episode]) -> MetaTrainResult:
    cfg = learner.config
    weights = learner.step_weights(cfg.inner_steps) if cfg.multi_step_loss else None
    tasks = [(task, episode.to(learner.device)) for task, episode in enumerate(episodes)]
    size = cfg.vmap_chunk_size or len(tasks)
    tally, skipped = MetaBatchTally(), 0
    for start in range(0, len(tasks), size):
        results, dropped = _differentiate_chunk(learner, tasks[start:start + size], weights, len(episodes))
        skipped += dropped
        for final, output, episode in results:
            tally.add(final.item(), output, episode.query_y)
    return tally.result(learner.meta_parameters, len(episodes), skipped)
