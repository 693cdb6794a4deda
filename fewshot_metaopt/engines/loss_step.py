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
) -> tuple[Params, Any]:
    """``params`` after one step of ``rule`` on ``loss``'s gradients with respect to them.

    ``create_graph`` keeps the gradients in the graph (second order); otherwise they enter the
    rule as constants while the path through the update stays differentiable. A parameter the
    loss does not reach gets no gradient, so it keeps its value.
    """
    names = list(params)
    found = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph,
                                retain_graph=retain_graph, allow_unused=True)
    grads = {n: g for n, g in zip(names, found) if g is not None}
    return step_rule(rule, params, grads, state, step, loss)
