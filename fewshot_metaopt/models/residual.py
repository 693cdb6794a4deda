"""A residual connection whose branches the functional engine lowers layer by layer."""

from __future__ import annotations

from torch import Tensor, nn


class Residual(nn.Module):
    """``body(x) + shortcut(x)``, or ``body(x) + x`` without a shortcut.

    Residual networks are built of these inside plain ``nn.Sequential`` modules (ResNet-12,
    WRN-28-10), which the functional engine lowers to functional ops branch by branch, batch
    norm included (:mod:`fewshot_metaopt.engines.functional_model`); a network with its own
    ``forward`` is called whole instead.
    """

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = nn.Identity() if shortcut is None else shortcut

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.shortcut(x)
