"""Wide residual networks (Zagoruyko & Komodakis 2016); WRN-28-10 is the backbone of LEO
(Rusu et al. 2019) and of many few-shot papers since."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from .. import checks
from .batch_norm import TRANSDUCTIVE, batch_norm_2d
from .residual import Residual


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def wide_block(in_channels: int, out_channels: int, stride: int, batch_norm: str = TRANSDUCTIVE,
               inner_steps: int = 1) -> nn.Module:
    """The pre-activation block: [BN, ReLU, conv3x3 (stride), BN, ReLU, conv3x3] plus the input,
    or, where the shape changes, plus a strided 1x1 convolution of the pre-activated input (as
    the reference code, whose shortcut branches off after the first BN and ReLU)."""

    def norm(channels: int) -> nn.Module:
        return batch_norm_2d(batch_norm, channels, inner_steps)

    tail = [_conv3x3(in_channels, out_channels, stride), norm(out_channels), nn.ReLU(),
            _conv3x3(out_channels, out_channels)]
    if in_channels == out_channels and stride == 1:
        return Residual(nn.Sequential(norm(in_channels), nn.ReLU(), *tail))
    shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
    return nn.Sequential(norm(in_channels), nn.ReLU(), Residual(nn.Sequential(*tail), shortcut))


def wide_resnet(ways: int, depth: int = 28, widen_factor: int = 10, in_channels: int = 3, batch_norm: str = TRANSDUCTIVE,
                inner_steps: int = 1, widths: Sequence[int] | None = None) -> nn.Sequential:
    """WRN-``depth``-``widen_factor``: a 3x3 stem of 16 channels, three groups of
    ``(depth - 4) / 6`` pre-activation blocks (:func:`wide_block`) of ``16k``, ``32k`` and
    ``64k`` channels (``k = widen_factor``; strides 1, 2, 2), a last [BN, ReLU], global average
    pooling and a ``ways``-way linear head, the last module (``model[-1]``), which ANIL adapts
    alone.

    ``widths`` replaces ``(16, 16k, 32k, 64k)`` (stem and groups) for small versions;
    ``batch_norm``: ``"transductive"`` or MAML++'s ``"per_step"`` with ``inner_steps`` rows
    (see :mod:`.batch_norm`). Like ResNet-12, plain ``nn.Sequential`` modules and
    :class:`.Residual` connections, which the functional engine lowers layer by layer.
    """
    owner = "wide_resnet"
    checks.integer("ways", ways, least=1, owner=owner)
    checks.integer("in_channels", in_channels, least=1, owner=owner)
    checks.integer("widen_factor", widen_factor, least=1, owner=owner)
    checks.integer("depth", depth, least=10, owner=owner)
    if (depth - 4) % 6:
        raise checks.ConfigError("depth", f"wide_resnet needs depth = 6n + 4 (10, 16, 22, 28, ...), got {depth}")
    if widths is None:
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
    widths = tuple(widths)
    if len(widths) != 4 or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise checks.ConfigError("widths", f"wide_resnet needs four positive integer widths, got {list(widths)}")
    per_group = (depth - 4) // 6
    groups = []
    for group, stride in enumerate((1, 2, 2)):
        channels_in, channels_out = widths[group], widths[group + 1]
        groups.append(nn.Sequential(*(
            wide_block(channels_in if i == 0 else channels_out, channels_out, stride if i == 0 else 1,
                       batch_norm, inner_steps)
            for i in range(per_group)
        )))
    model = nn.Sequential(
        _conv3x3(in_channels, widths[0]), *groups, batch_norm_2d(batch_norm, widths[-1], inner_steps), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], ways),
    )
    for module in model.modules():  # the reference code's initialisation
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)
    return model


def wrn28_10(ways: int, in_channels: int = 3, batch_norm: str = TRANSDUCTIVE, inner_steps: int = 1) -> nn.Sequential:
    """WRN-28-10 (:func:`wide_resnet`): four blocks a group, 16-160-320-640 channels, 36.5M
    parameters; on 84x84 images the groups give 84, 42 and 21 pixels a side and 640 features."""
    return wide_resnet(ways, 28, 10, in_channels, batch_norm, inner_steps)
