"""Gradient descent with fixed or learned learning rates: MAML's, Meta-SGD's and MAML++'s rule."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from ..learned_lr import LearnedLR
from .base import Params, UpdateRule


class SGDRule(UpdateRule):
    """``theta' = theta - lr(name, step) * grad``; ``lr`` from a :class:`LearnedLR`.

    With ``granularity="per_parameter"`` this is Meta-SGD (Li et al. 2017): the learning rate
    is a tensor shaped like the parameter, free in sign, so it learns a direction too.
    """

    def __init__(self, lrs: LearnedLR) -> None:
        super().__init__()
        self.lrs = lrs

    @classmethod
    def for_params(
        cls,
        shapes: Mapping[str, torch.Size],
        lr: float,
        granularity: str = "none",
        steps: int = 1,
        dtype: torch.dtype | None = None,
    ) -> "SGDRule":
        return cls(LearnedLR(shapes, granularity=granularity, init=lr, steps=steps, dtype=dtype))

    def update(
        self, params: Params, grads: Params, state: Any, step: int, loss: Tensor | None = None
    ) -> tuple[Params, Any]:
        new = dict(params)
        for name, grad in grads.items():
            new[name] = params[name] - self.lrs.lr(name, step) * grad
        return new, state
