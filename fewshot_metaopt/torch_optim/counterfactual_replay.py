"""The counterfactual rollout that teaches the control matrices ``M``.

At step ``t`` the optimizer asks: had the current ``M`` been played over the last ``HH`` steps,
what would the current batch's loss be? From the parameters of ``HH`` steps ago it replays those
steps, each with a fresh gradient of that step's own (stored) batch at the replayed
parameters, the disturbances actually seen as the control's input, and the same formula as the
real update (:meth:`ControlRule.play`)::

    theta~_{t-HH} = theta_{t-HH}
    theta~_{s+1}  = theta~_s - wd theta~_s - lr w~_s + sum_{i<H} M_i w_{s-i-lag}
                    w~_s = rescale(clip(grad f_s(theta~_s)))        s = t-HH, ..., t-1
    cost(M)       = f_t(theta~_t)

and ``M`` takes a gradient step on ``cost``. The gradient flows through the fresh gradients too
(Hessian-vector products), as in the reference JAX code, which differentiates the whole
rollout.

``replay="exact"`` (the default): ``lag = 0``, so step ``s`` is replayed with the window it
was played with, and the rescaler starts from its state of ``HH`` steps ago. With ``M``
unchanged since those steps the replay then reproduces the real trajectory, and ``cost`` is
exactly the current loss.

``replay="reference"``: what the authors' code (``meta_opt/optimizers/metaopt.py``) computes:
``lag = 1`` (its replay slices its oldest-first history of ``H + HH`` disturbances so that step
``s`` reads ``w_{s-1} .. w_{s-H}``, one older than the window it played) and the rescaler
continues from its current state, which has already seen the real gradients of the replayed
steps. Neither reproduces the real trajectory, so the gradient pairs ``M_i`` with a
disturbance it was not played on.

Memory, bounded whatever the run's length: the last ``HH`` parameter vectors and batches (and,
with ``exact`` replays of rescaled disturbances, ``HH`` rescaler states), on top of the rule's
disturbances; the rollout's graph holds ``HH`` forward and backward passes of the model.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from ..optim.rules.base import Params
from ..optim.rules.control import ControlRule, ControlState

LossFn = Callable[[Params, Any], Tensor]


class ReplayRecord(NamedTuple):
    """What one past step leaves for replays: its parameters (flat), batch and rescaler state
    (``None`` where the replay does not read it), all as they were before the step."""

    theta: Tensor
    batch: Any
    rescaler: Any


def counterfactual_loss(
    rule: ControlRule, loss_fn: LossFn, records: Sequence[ReplayRecord], state: ControlState, batch: Any
) -> Tensor:
    """``cost(M)`` above, differentiable into ``rule.M``. ``records`` are the last ``HH``
    steps, oldest first; ``state`` the rule's state now (its history newest first: ``w_{t-1}``
    first), which holds every disturbance those steps are replayed with."""
    depth = len(records)
    lag = 1 if rule.replay == "reference" else 0
    theta = records[0].theta.detach().requires_grad_()
    rescaler = state.rescaler if rule.replay == "reference" else records[0].rescaler
    for j, record in enumerate(records):
        loss = loss_fn(rule.unflatten(theta), record.batch)
        # The first replayed gradient does not depend on M: no graph needed through it.
        (grad,) = torch.autograd.grad(loss, theta, create_graph=j > 0)
        disturbance, rescaler = rule.disturbance(grad, rescaler)
        start = depth - 1 - j + lag  # the window of step t - depth + j, in today's newest-first history
        theta = rule.play(theta, disturbance, state.history[start : start + rule.history])
    return loss_fn(rule.unflatten(theta), batch)
