"""Adam as a pure, differentiable update rule (Kingma & Ba 2015, "Adam: A Method for
Stochastic Optimization", Algorithm 1), step for step what ``torch.optim.Adam`` does.

For each parameter tensor with a gradient ``g`` at its ``t``-th update::

    m_t = beta1 m_{t-1} + (1 - beta1) g
    v_t = beta2 v_{t-1} + (1 - beta2) g^2
    theta_t = theta_{t-1} - lr / (1 - beta1^t) * m_t / (sqrt(v_t) / sqrt(1 - beta2^t) + eps)

``t`` is counted per tensor, so a tensor that gets no gradient in a step neither moves nor
ages (as in ``torch.optim.Adam``, which skips parameters whose ``.grad`` is ``None``).
Differentiable throughout: the square root has derivative 0 where ``v = 0`` (a coordinate that
never had a gradient), not ``inf``, so the meta-gradient stays finite there.
"""

from __future__ import annotations

import math
from typing import Dict, NamedTuple

import torch
from torch import Tensor

from .base import Params, UpdateRule
from .preprocess import check_grads, safe_sqrt


class AdamSlot(NamedTuple):
    """Adam's state for one tensor: updates taken, first and second moment estimates."""

    step: int
    m: Tensor
    v: Tensor


AdamState = Dict[str, AdamSlot]


class AdamRule(UpdateRule):
    """Differentiable Adam (see the module docstring); a baseline and a building block.

    Args:
        lr: step size. betas: decay rates of the first and second moments. eps: added to the
        bias-corrected root second moment. check_finite: raise on NaN/Inf gradients (one
        device sync per step; set ``False`` to skip).

    >>> rule = AdamRule(lr=1e-3)
    >>> state = rule.init(params)
    >>> params, state = rule.update(params, grads, state, step=0)
    """

    def __init__(
        self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, check_finite: bool = True
    ) -> None:
        super().__init__()
        if not lr > 0 or not math.isfinite(lr):
            raise ValueError(f"AdamRule needs a positive finite lr, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdamRule betas must lie in [0, 1), got {tuple(betas)}")
        if not eps >= 0:
            raise ValueError(f"AdamRule eps must be >= 0, got {eps}")
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)
        self.check_finite = check_finite
        self._names: list[str] = []

    def init(self, params: Params) -> AdamState:
        self._names = list(params)
        return {n: AdamSlot(0, torch.zeros_like(p), torch.zeros_like(p)) for n, p in params.items()}

    def update(
        self, params: Params, grads: Params, state: AdamState, step: int, loss: Tensor | None = None
    ) -> tuple[Params, AdamState]:
        check_grads(params, grads, self.check_finite)
        beta1, beta2 = self.betas
        new, new_state = dict(params), dict(state)
        for name, g in grads.items():
            slot = state[name]
            t = slot.step + 1
            m = torch.lerp(slot.m, g, 1 - beta1)
            v = beta2 * slot.v + (1 - beta2) * g * g
            denom = safe_sqrt(v) / math.sqrt(1 - beta2**t) + self.eps
            new[name] = params[name] - (self.lr / (1 - beta1**t)) * (m / denom)
            new_state[name] = AdamSlot(t, m, v)
        return new, new_state

    def get_learned_lr(self) -> dict[str, float]:
        """The configured ``lr`` for each tensor of the last ``init`` (Adam learns none)."""
        return {name: self.lr for name in self._names}
