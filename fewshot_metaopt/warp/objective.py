"""The Warp-Grad meta-objective and the Leap-style update of the initialisation.

Warp objective (Flennerhag et al. 2020, the "one step from a stored point" form): for a point
``(theta, state, k, episode)`` of an inner trajectory, with warp parameters ``omega``::

    theta' = U(theta, grad_theta L(theta, omega; B1), state, k)     one inner step on batch B1
    J(omega) = mean over sampled points of L(theta', omega; B2)     loss on another batch B2

``theta`` is a constant (the point is stored detached); ``J`` reaches ``omega`` through the
forward passes and through the gradient that the warps precondition, so it needs one
second-order step per point however long the trajectories were. ``B1``/``B2`` are the
support and the query set of the point's episode by default.

Leap initialisation (Flennerhag et al. 2019, simplified as in the Warp-Grad paper's Warp-Leap):
the initialisation moves along the trajectories it starts, each segment normalised::

    grad_init = (1 / tasks) sum_tasks sum_k (theta_k - theta_{k+1}) / ||theta_k - theta_{k+1}||
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..engines.loss_step import step_on_loss
from ..losses import task_loss
from ..optim.rules.base import UpdateRule
from .replay import TrajectoryPoint

BATCHES = ("support", "query")


def _batch(point: TrajectoryPoint, which: str) -> tuple[Tensor, Tensor]:
    ep = point.episode
    return (ep.support_x, ep.support_y) if which == "support" else (ep.query_x, ep.query_y)


def warp_step_loss(model: nn.Module, rule: UpdateRule, point: TrajectoryPoint, loss: str = "auto",
                   step_batch: str = "support", eval_batch: str = "query",
                   call: Callable[[dict, Tensor], Tensor] | None = None, scale: float = 1.0) -> Tensor:
    """``L(theta', omega; B2)`` for one stored point, differentiable into the model's other
    parameters (the warps) and the rule's meta-parameters. ``call(params, x)`` runs the model
    (default: ``functional_call``; a mixed-precision one from the trainer), and ``scale`` is
    the fp16 loss scale of the inner step (see ``engines.precision``)."""
    if call is None:
        call = lambda params, x: functional_call(model, params, (x,))  # noqa: E731
    theta = {n: p.detach().requires_grad_() for n, p in point.params.items()}
    fixed = {n: p for n, p in model.named_parameters() if n not in theta}
    x1, y1 = _batch(point, step_batch)
    inner = task_loss(call({**fixed, **theta}, x1), y1, loss, "warp objective: step batch")
    stepped, _ = step_on_loss(rule, theta, inner, point.rule_state, point.step, create_graph=True, scale=scale)
    x2, y2 = _batch(point, eval_batch)
    return task_loss(call({**fixed, **stepped}, x2), y2, loss, "warp objective: eval batch")


def warp_meta_loss(model: nn.Module, rule: UpdateRule, points: Sequence[TrajectoryPoint], **kwargs) -> Tensor:
    """The mean of :func:`warp_step_loss` over ``points``."""
    if not points:
        raise ValueError("the warp objective needs at least one trajectory point")
    return sum(warp_step_loss(model, rule, p, **kwargs) for p in points) / len(points)


def leap_init_gradient(trajectories: Sequence[Sequence[Dict[str, Tensor]]]) -> Dict[str, Tensor]:
    """The simplified Leap gradient for the initialisation of the adapted parameters, from
    the weights along each task's trajectory (``theta_0 .. theta_K``)."""
    if not trajectories:
        raise ValueError("the Leap gradient needs at least one trajectory")
    total: Dict[str, Tensor] = {n: torch.zeros_like(p) for n, p in trajectories[0][0].items()}
    for trajectory in trajectories:
        for entry, exit_ in zip(trajectory[:-1], trajectory[1:]):
            segment = {n: entry[n] - exit_[n] for n in total}
            length = math.sqrt(sum(float(s.square().sum()) for s in segment.values()))
            if length > 0:
                for n in total:
                    total[n] += segment[n] / length
    return {n: g / len(trajectories) for n, g in total.items()}


def accumulate_leap_gradient(model: nn.Module, trajectories: Sequence[Sequence[Dict[str, Tensor]]]) -> None:
    """Add :func:`leap_init_gradient` to the ``.grad`` of ``model``'s adapted parameters."""
    params = dict(model.named_parameters())
    for name, grad in leap_init_gradient(trajectories).items():
        p = params[name]
        p.grad = grad.to(p.dtype) if p.grad is None else p.grad + grad.to(p.dtype)
