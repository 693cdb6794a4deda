"""The networks of the few-shot literature: conv-4 and MLPs as plain ``nn.Sequential`` modules,
and a small residual conv net.

Batch norm keeps no running statistics (``track_running_stats=False``): every forward pass,
training or evaluation, normalises with the statistics of the batch it sees. This is the
transductive setting of MAML's reference code, and it means adaptation never writes buffers.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def conv_block(in_channels: int, out_channels: int, pool: bool = True) -> nn.Sequential:
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels, track_running_stats=False),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def conv4(ways: int, in_channels: int = 1, hidden: int = 64, image_size: int = 28) -> nn.Sequential:
    """Finn et al.'s conv-4: four [conv3x3, BN, ReLU, 2x2 max-pool] blocks and a linear head.

    Use ``hidden=64, image_size=28`` for Omniglot and ``in_channels=3, hidden=32,
    image_size=84`` for miniImageNet. The head is the last module (``model[-1]``), which ANIL
    adapts alone.
    """
    if ways < 1 or in_channels < 1 or hidden < 1:
        raise ValueError(f"conv4 needs positive ways, in_channels and hidden, got {ways}, {in_channels}, {hidden}")
    side = image_size
    for _ in range(4):
        side //= 2
    if side < 1:
        raise ValueError(f"conv4 pools four times: image_size={image_size} is too small (need >= 16)")
    return nn.Sequential(
        conv_block(in_channels, hidden),
        conv_block(hidden, hidden),
        conv_block(hidden, hidden),
        conv_block(hidden, hidden),
        nn.Flatten(),
        nn.Linear(hidden * side * side, ways),
    )


def mlp(in_features: int, out_features: int, hidden: Sequence[int] = (40, 40)) -> nn.Sequential:
    """A ReLU MLP; the default is MAML's sinusoid regressor (two hidden layers of 40)."""
    sizes = [in_features, *hidden]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], out_features))
    return nn.Sequential(*layers)


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
