"""The current loss as an input of a rule's own features (the combiner and the tape rule)."""

from __future__ import annotations

import torch
from torch import Tensor


def loss_feature(loss: Tensor | None, like: Tensor) -> Tensor:
    """``log(1 + |loss|)``, detached (bounded growth, no gradient through it), in ``like``'s
    dtype and device; 0 when the driver passed no loss."""
    if loss is None:
        return torch.zeros((), dtype=like.dtype, device=like.device)
    return torch.log1p(loss.detach().abs()).to(dtype=like.dtype, device=like.device)
