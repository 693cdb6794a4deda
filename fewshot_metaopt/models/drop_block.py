"""DropBlock (Ghiasi et al. 2018): dropout of square blocks of a feature map, for ResNet-12."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import checks
from .inner_step import current_inner_step

_functorch = torch._C._functorch


class DropBlock(nn.Module):
    """Zeroes ``block_size`` x ``block_size`` squares of each channel while meta-training and
    rescales the rest, so that about ``drop_rate`` of the activations are dropped; block size 1
    is dropout. Blocks lie wholly inside the map (their seeds are drawn where they fit); a block
    larger than the map is the map.

    Masks are drawn from torch's default generator, so ``torch.manual_seed`` (and a run's saved
    RNG state) makes them reproducible. Nothing is dropped in ``eval()`` mode or while a task
    is adapted to be scored (:mod:`.inner_step`), nor at ``drop_rate=0``.
    """

    def __init__(self, drop_rate: float, block_size: int) -> None:
        super().__init__()
        self.drop_rate = checks.real("drop_rate", drop_rate, 0.0, 1.0, owner="DropBlock")
        if self.drop_rate == 1.0:
            raise checks.ConfigError("drop_rate", "DropBlock needs drop_rate below 1 (1 drops everything), got 1.0")
        self.block_size = checks.integer("block_size", block_size, least=1, owner="DropBlock")

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_rate == 0.0 or not self.training or current_inner_step().evaluating:
            return x
        if _functorch.is_functorch_wrapped_tensor(x):
            raise ValueError("DropBlock draws its masks from torch's generator, which torch.func transforms "
                             "refuse: use vmap_tasks=False (the task loop) or drop_rate 0")
        n, c, height, width = x.shape
        size = min(self.block_size, height, width)
        # Seeds at this rate drop drop_rate of the map once their blocks are grown (Ghiasi et al., eq. 1).
        gamma = self.drop_rate * height * width / (size * size * (height - size + 1) * (width - size + 1))
        seeds = torch.bernoulli(torch.full((n, c, height - size + 1, width - size + 1), gamma, device=x.device))
        dropped = F.max_pool2d(F.pad(seeds, (size - 1,) * 4), size, stride=1)
        kept = 1.0 - dropped
        scale = kept.numel() / kept.sum().clamp_min(1.0)
        return x * (kept * scale).to(x.dtype)

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}, block_size={self.block_size}"
