"""A small residual conv net: a test of transfer for learned optimizers meta-trained on conv-4s."""

from __future__ import annotations

import torch
from torch import nn


class ResidualConvNet(nn.Module):
    """A strided conv stem, ``blocks`` residual blocks of [conv3x3, BN, ReLU, conv3x3, BN] at
    ``width`` channels, global average pooling and a linear head.

    Its parameters differ from conv-4's in kind, not only in size (skip connections, no
    max-pooling, a pooled head), which is what makes it a test of transfer for a learned
    optimizer meta-trained on conv-4s.
    """

    def __init__(self, ways: int, in_channels: int = 1, width: int = 16, blocks: int = 2) -> None:
        super().__init__()
        if ways < 1 or in_channels < 1 or width < 1 or blocks < 1:
            raise ValueError(f"ResidualConvNet needs positive ways, in_channels, width and blocks, "
                             f"got {ways}, {in_channels}, {width}, {blocks}")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1),
                nn.BatchNorm2d(width, track_running_stats=False),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.BatchNorm2d(width, track_running_stats=False),
            )
            for _ in range(blocks)
        )
        self.head = nn.Linear(width, ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return self.head(x.mean((2, 3)))
