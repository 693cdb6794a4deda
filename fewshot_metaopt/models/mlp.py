"""MLPs as plain ``nn.Sequential`` modules."""

from __future__ import annotations

from typing import Sequence

from torch import nn


def mlp(in_features: int, out_features: int, hidden: Sequence[int] = (40, 40)) -> nn.Sequential:
    """A ReLU MLP; the default is MAML's sinusoid regressor (two hidden layers of 40)."""
    sizes = [in_features, *hidden]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], out_features))
    return nn.Sequential(*layers)
