"""A bounded, leaky memory of ``slots x dim`` numbers, written and read by soft attention.

Each write adds the bounded features ``f = tanh(features)`` to every slot in proportion to a
softmax over slots, after the old contents decay::

    memory' = decay * memory + a_w f^T          a_w = softmax(W_w f)      (slots,)
    read    = a_r^T memory'                     a_r = softmax(W_r f)

``|f| <= 1`` and ``a_w`` sums to 1, so every entry stays within ``1 / (1 - decay)`` (20 at the
default decay) however long it runs. Writes see the features detached (the memory records what
happened, it is no path for gradients into the features), but the write head stays learnable:
within a differentiable unroll the memory depends on it, and the read of a later step carries
that gradient back. The memory is a value passed in and returned, never module state, so the
tape is as pure as the rules that hold it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ... import checks


class DifferentiableTape(nn.Module):
    """Write and read heads of the memory (see the module docstring)."""

    def __init__(self, slots: int = 32, dim: int = 16, decay: float = 0.95) -> None:
        super().__init__()
        self.slots = checks.integer("slots", slots, 1, owner="DifferentiableTape")
        self.dim = checks.integer("dim", dim, 1, owner="DifferentiableTape")
        self.decay = checks.real("decay", decay, 0.0, 1.0, owner="DifferentiableTape")
        if self.decay == 1.0:
            raise ValueError("DifferentiableTape needs decay < 1 (a leak keeps the memory bounded), got 1.0")
        self.write_head = nn.Linear(self.dim, self.slots)
        self.read_head = nn.Linear(self.dim, self.slots)

    def empty(self) -> Tensor:
        weight = self.read_head.weight
        return torch.zeros(self.slots, self.dim, dtype=weight.dtype, device=weight.device)

    def write(self, memory: Tensor, features: Tensor) -> Tensor:
        bounded = torch.tanh(features.detach())
        attention = torch.softmax(self.write_head(bounded), dim=-1)
        return self.decay * memory + attention[:, None] * bounded[None, :]

    def read(self, memory: Tensor, features: Tensor) -> Tensor:
        attention = torch.softmax(self.read_head(torch.tanh(features)), dim=-1)
        return attention @ memory
