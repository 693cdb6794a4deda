"""The current loss as an input of a rule's own features.

The update-rule contract passes parameters and gradients, not the loss; rules whose features
read the loss (the combiner and the tape rule) keep a ``loss`` field in their state, which a
driver fills with :func:`with_loss` just before ``update`` and the rule clears after reading.
Every driver of the library fills it (both engines of the learners' inner loop,
``MetaOptimizer.meta_train_step``, the Warp-Grad trajectories and objective, the seed
optimizers); one that does not (``compute_update``, whose spec signature has no loss) gets a
loss feature of 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def with_loss(state: Any, loss: Tensor | None) -> Any:
    """``state`` with ``loss`` (detached) attached, if the state has a ``loss`` field; other
    rules' states, and any state when ``loss`` is None, come back unchanged, so a generic loop
    may call this for any rule."""
    if loss is not None and hasattr(state, "_replace") and "loss" in getattr(state, "_fields", ()):
        return state._replace(loss=loss.detach())
    return state


def loss_feature(loss: Tensor | None, like: Tensor) -> Tensor:
    """``log(1 + |loss|)``, detached (the seeds' feature: bounded growth, no gradient through
    it), in ``like``'s dtype and device; 0 when no loss was attached."""
    if loss is None:
        return torch.zeros((), dtype=like.dtype, device=like.device)
    return torch.log1p(loss.detach().abs()).to(dtype=like.dtype, device=like.device)
