"""One rule step from a loss: the drivers that differentiate with plain autograd (truncated
BPTT, unrolled task training, Warp-Grad trajectories and objective) take it here."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..optim.rules.base import Params, UpdateRule, step_rule


def step_on_loss(
    rule: UpdateRule,
    params: Params,
    loss: Tensor,
    state: Any,
    step: int,
    create_graph: bool = False,
    retain_graph: bool | None = None,
    scale: float = 1.0,
) -> tuple[Params, Any]:
    """``params`` after one step of ``rule`` on ``loss``'s gradients with respect to them.

    ``create_graph`` keeps the gradients in the graph (second order); otherwise they enter the
    rule as constants while the path through the update stays differentiable. A parameter the
    loss does not reach gets no gradient, so it keeps its value. ``scale`` multiplies the loss
    before differentiation and divides the gradients after (fp16, see :mod:`.precision`).
    """
    names = list(params)
    if scale != 1.0:
        with torch.enable_grad():  # a driver may step under no_grad; the scaled loss needs its graph
            loss_to_differentiate = loss * scale
    else:
        loss_to_differentiate = loss
    found = torch.autograd.grad(loss_to_differentiate, [params[n] for n in names],
                                create_graph=create_graph, retain_graph=retain_graph, allow_unused=True)
    grads = {n: g / scale if scale != 1.0 else g for n, g in zip(names, found) if g is not None}
    return step_rule(rule, params, grads, state, step, loss)
