"""The counterfactual rollout that teaches the control matrices ``M``.

At step ``t`` the optimizer asks: had the current ``M`` been played over the last ``HH`` steps,
what would the current batch's loss be? From the parameters of ``HH`` steps ago it replays those
steps, each with a fresh gradient of that step's own (stored) batch at the replayed
parameters, the disturbances actually seen as the control's input, and the same formula as the
real update (:meth:`ControlRule.play`)::

    theta~_{t-HH} = theta_{t-HH}
    theta~_{s+1}  = theta~_s - wd theta~_s - lr w~_s + sum_{i<H} M_i w_{s-i}
                    w~_s = rescale(clip(grad f_s(theta~_s)))        s = t-HH, ..., t-1
    cost(M)       = f_t(theta~_t)

and ``M`` takes a gradient step on ``cost``. The gradient flows through the fresh gradients too
(Hessian-vector products), as in the reference JAX code, which differentiates the whole
rollout. With ``M`` unchanged since those steps the replay reproduces the real trajectory, so
``cost`` is then exactly the current loss.

Memory, bounded whatever the run's length: the last ``HH`` parameter vectors and batches (and
``HH`` Adam rescaler states when disturbances are rescaled), on top of the rule's ``H + HH - 1``
disturbances; the rollout's graph holds ``HH`` forward and backward passes of the model.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from ..optim.rules.base import Params
from ..optim.rules.control import ControlRule

LossFn = Callable[[Params, Any], Tensor]


class ReplayRecord(NamedTuple):
    """What one past step leaves for replays: its parameters (flat), batch and rescaler state,
    all as they were before the step."""

    theta: Tensor
    batch: Any
    rescaler: Any


def counterfactual_loss(
    rule: ControlRule, loss_fn: LossFn, records: Sequence[ReplayRecord], history: Tensor, batch: Any
) -> Tensor:
    """``cost(M)`` above, differentiable into ``rule.M``. ``records`` are the last ``HH``
    steps, oldest first; ``history`` the rule's disturbances now (newest first: ``w_{t-1}``
    first), which include every disturbance those steps saw."""
    depth = len(records)
    theta = records[0].theta.detach().requires_grad_()
    rescaler = records[0].rescaler
    for j, record in enumerate(records):
        loss = loss_fn(rule.unflatten(theta), record.batch)
        # The first replayed gradient does not depend on M: no graph needed through it.
        (grad,) = torch.autograd.grad(loss, theta, create_graph=j > 0)
        disturbance, rescaler = rule.disturbance(grad, rescaler)
        start = depth - 1 - j  # the window of step t - depth + j, in today's newest-first history
        theta = rule.play(theta, disturbance, history[start : start + rule.history])
    return loss_fn(rule.unflatten(theta), batch)
