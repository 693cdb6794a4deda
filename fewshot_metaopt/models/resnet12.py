"""ResNet-12, the backbone of MetaOptNet (Lee et al. 2019) and TADAM (Oreshkin et al. 2018)."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from .. import checks
from .batch_norm import TRANSDUCTIVE, batch_norm_2d
from .drop_block import DropBlock
from .residual import Residual

WIDTHS = (64, 160, 320, 640)
LEAKY_SLOPE = 0.1  # MetaOptNet's LeakyReLU


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)


def resnet12_block(in_channels: int, out_channels: int, batch_norm: str = TRANSDUCTIVE, inner_steps: int = 1,
                   drop_rate: float = 0.0, block_size: int = 1) -> nn.Sequential:
    """Three [conv3x3, BN] with LeakyReLU(0.1) between them, plus a [conv1x1, BN] shortcut;
    then LeakyReLU, a 2x2 max-pool and, at ``drop_rate > 0``, DropBlock."""

    def norm() -> nn.Module:
        return batch_norm_2d(batch_norm, out_channels, inner_steps)

    body = nn.Sequential(
        _conv3x3(in_channels, out_channels), norm(), nn.LeakyReLU(LEAKY_SLOPE),
        _conv3x3(out_channels, out_channels), norm(), nn.LeakyReLU(LEAKY_SLOPE),
        _conv3x3(out_channels, out_channels), norm(),
    )
    shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), norm())
    layers: list[nn.Module] = [Residual(body, shortcut), nn.LeakyReLU(LEAKY_SLOPE), nn.MaxPool2d(2)]
    if drop_rate > 0:
        layers.append(DropBlock(drop_rate, block_size))
    return nn.Sequential(*layers)


def resnet12(ways: int, in_channels: int = 3, batch_norm: str = TRANSDUCTIVE, inner_steps: int = 1,
             drop_rate: float = 0.0, dropblock_size: int = 5, widths: Sequence[int] = WIDTHS) -> nn.Sequential:
    """ResNet-12 in the MetaOptNet/TADAM form: four residual blocks (:func:`resnet12_block`)
    of ``widths`` channels (64-160-320-640), each halving the map, global average pooling and
    a ``ways``-way linear head, the last module (``model[-1]``), which ANIL adapts alone.
    12.4M parameters at the default widths; on 84x84 images the blocks give 42, 21, 10 and 5
    pixels a side and 640 features.

    ``batch_norm``: ``"transductive"`` or MAML++'s ``"per_step"`` with ``inner_steps`` rows
    (see :mod:`.batch_norm`). ``drop_rate > 0`` turns on MetaOptNet's regularisers: dropout
    (DropBlock of size 1) after blocks 1-2 and DropBlock of ``dropblock_size`` after blocks
    3-4, at a constant rate (MetaOptNet ramps it up over training; a constant rate keeps a
    run's schedule out of the model). Off by default.

    A plain ``nn.Sequential`` of plain ``nn.Sequential`` blocks and :class:`.Residual`
    connections, as conv4 is, so the functional engine lowers it layer by layer (vmap-safe
    batch norm, channels-last convolutions on the CPU).
    """
    owner = "resnet12"
    checks.integer("ways", ways, least=1, owner=owner)
    checks.integer("in_channels", in_channels, least=1, owner=owner)
    widths = tuple(widths)
    if len(widths) != 4 or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise checks.ConfigError("widths", f"resnet12 needs four positive integer widths, got {list(widths)}")
    checks.real("drop_rate", drop_rate, 0.0, 1.0, owner=owner)
    checks.integer("dropblock_size", dropblock_size, least=1, owner=owner)
    channels = (in_channels, *widths)
    blocks = [
        resnet12_block(channels[i], channels[i + 1], batch_norm, inner_steps, drop_rate,
                       block_size=1 if i < 2 else dropblock_size)
        for i in range(4)
    ]
    model = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], ways))
    for module in model.modules():
        if isinstance(module, nn.Conv2d):  # MetaOptNet's initialisation
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")
    return model
