"""Named base-model architectures for meta-training a rule over several of them.

An entry says what its network reads (``image``: ``(1, 28, 28)`` pictures; ``scalar``: one
real input) and builds the network for a number of outputs. A mixture pairs an entry with a
task source that gives the same inputs (:mod:`.task_sources`); the catalogue is larger than
any one mixture, so that architectures kept out of meta-training are named the same way as
those in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from torch import nn

from ..models import ResidualConvNet, conv4, mlp
from ..registry import Registry

INPUTS = ("image", "scalar")
IMAGE_SIDE = 28


@dataclass(frozen=True)
class Architecture:
    """``build(outputs)`` makes a fresh network; ``inputs`` is what it reads (one of INPUTS)."""

    build: Callable[[int], nn.Module]
    inputs: str


ARCHITECTURES: Registry[Architecture] = Registry("architecture")


def _image_mlp(hidden: Sequence[int]) -> Callable[[int], nn.Module]:
    return lambda outputs: nn.Sequential(nn.Flatten(), mlp(IMAGE_SIDE * IMAGE_SIDE, outputs, hidden=tuple(hidden)))


for _width in (8, 16, 24, 32, 64):
    ARCHITECTURES.register(f"conv4-{_width}", Architecture(
        lambda outputs, width=_width: conv4(outputs, hidden=width, image_size=IMAGE_SIDE), "image"))
for _hidden in ((32, 32), (64,), (64, 32), (128, 64), (32, 32, 32)):
    ARCHITECTURES.register("mlp-784-" + "-".join(map(str, _hidden)), Architecture(_image_mlp(_hidden), "image"))
for _width, _blocks in ((16, 2), (32, 2), (16, 3)):
    ARCHITECTURES.register(f"residual-{_width}x{_blocks}", Architecture(
        lambda outputs, width=_width, blocks=_blocks: ResidualConvNet(outputs, width=width, blocks=blocks), "image"))
ARCHITECTURES.register("mlp-1-40-40", Architecture(lambda outputs: mlp(1, outputs, hidden=(40, 40)), "scalar"))
