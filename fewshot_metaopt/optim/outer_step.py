"""The outer (meta-)optimizers a config can name, and the one way an outer step is taken:
clip the meta-gradient, refuse a non-finite one, step."""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor

from ..registry import Registry

OUTER_OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("meta_optimizer")
OUTER_OPTIMIZERS.register("adam", torch.optim.Adam)
OUTER_OPTIMIZERS.register("sgd", torch.optim.SGD)


def clipped_step(
    optimizer: torch.optim.Optimizer,
    parameters: Iterable[Tensor],
    max_norm: Optional[float],
    refuse: Callable[[float], Exception],
    scaler: "torch.amp.GradScaler | None" = None,
) -> float:
    """Clip the global norm of ``parameters``' gradients to ``max_norm`` (``None`` or 0: no
    clipping) and step ``optimizer``; returns the norm before clipping. A non-finite norm
    clears the gradients, steps nothing and raises ``refuse(norm)``.

    With a ``scaler`` (fp16) the gradients were scaled: they are unscaled before clipping, and a
    non-finite norm means the scale overflowed, not that training diverged: the scaler skips
    that step and lowers its scale, as mixed-precision training does.
    """
    clip = max_norm if max_norm else math.inf
    if scaler is not None:
        scaler.unscale_(optimizer)
        norm = float(torch.nn.utils.clip_grad_norm_(list(parameters), clip))
        scaler.step(optimizer)
        scaler.update()
        return norm
    norm = float(torch.nn.utils.clip_grad_norm_(list(parameters), clip))
    if not math.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        raise refuse(norm)
    optimizer.step()
    return norm
