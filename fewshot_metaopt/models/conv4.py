"""Finn et al.'s conv-4 and its block, as plain ``nn.Sequential`` modules."""

from __future__ import annotations

from torch import nn

from .batch_norm import TRANSDUCTIVE, batch_norm_2d


def conv_block(in_channels: int, out_channels: int, pool: bool = True, batch_norm: str = TRANSDUCTIVE,
               inner_steps: int = 1) -> nn.Sequential:
    """[conv3x3, batch norm, ReLU] and a 2x2 max-pool when ``pool``; ``batch_norm`` and
    ``inner_steps`` choose the normalisation (see :mod:`.batch_norm`)."""
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        batch_norm_2d(batch_norm, out_channels, inner_steps),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def conv4(ways: int, in_channels: int = 1, hidden: int = 64, image_size: int = 28, batch_norm: str = TRANSDUCTIVE,
          inner_steps: int = 1) -> nn.Sequential:
    """Finn et al.'s conv-4: four [conv3x3, BN, ReLU, 2x2 max-pool] blocks and a linear head.

    Use ``hidden=64, image_size=28`` for Omniglot and ``in_channels=3, hidden=32,
    image_size=84`` for miniImageNet. The head is the last module (``model[-1]``), which ANIL
    adapts alone. ``batch_norm="per_step"`` with ``inner_steps`` (the learner's) is MAML++'s
    conv-4 (per-step running statistics, weights and biases; see :mod:`.batch_norm`).
    """
    if ways < 1 or in_channels < 1 or hidden < 1:
        raise ValueError(f"conv4 needs positive ways, in_channels and hidden, got {ways}, {in_channels}, {hidden}")
    side = image_size
    for _ in range(4):
        side //= 2
    if side < 1:
        raise ValueError(f"conv4 pools four times: image_size={image_size} is too small (need >= 16)")
    norm = dict(batch_norm=batch_norm, inner_steps=inner_steps)
    return nn.Sequential(
        conv_block(in_channels, hidden, **norm),
        conv_block(hidden, hidden, **norm),
        conv_block(hidden, hidden, **norm),
        conv_block(hidden, hidden, **norm),
        nn.Flatten(),
        nn.Linear(hidden * side * side, ways),
    )
