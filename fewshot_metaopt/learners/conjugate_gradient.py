"""Conjugate gradient on lists of tensors: ``x`` with ``A x ~ b`` for a symmetric ``A`` known only
through its products ``A v`` (iMAML's ``(1 + damping) I + H / lambda``, H a Hessian)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

Vectors = list[Tensor]


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def conjugate_gradient(matvec: Callable[[Vectors], Vectors], b: Sequence[Tensor], steps: int) -> Vectors:
    """At most ``steps`` conjugate-gradient iterations on ``A x = b`` from ``x = 0``.

    For a positive-definite ``A`` of dimension ``n`` the error falls with every step and is
    zero after ``n`` (in exact arithmetic). It stops early once the residual is zero, and when
    ``A`` shows non-positive curvature along a search direction (a Hessian far from a minimum
    can): then the estimate so far is returned, or ``b`` itself when that happens at the first
    step (the solution with the curvature term dropped), rather than a step that would diverge.
    """
    b = [t.detach() for t in b]
    x = [torch.zeros_like(t) for t in b]
    residual = [t.clone() for t in b]
    direction = [t.clone() for t in b]
    rr = _dot(residual, residual)
    for step in range(steps):
        if float(rr) == 0.0:
            break
        product = [t.detach() for t in matvec(direction)]
        curvature = _dot(direction, product)
        if not float(curvature) > 0.0:
            return b if step == 0 else x
        alpha = rr / curvature
        x = [xi + alpha * di for xi, di in zip(x, direction)]
        residual = [ri - alpha * pi for ri, pi in zip(residual, product)]
        rr_next = _dot(residual, residual)
        direction = [ri + (rr_next / rr) * di for ri, di in zip(residual, direction)]
        rr = rr_next
    return x
