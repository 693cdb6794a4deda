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


# What a layer is called inside its block, by kind; a kind not listed goes by its class name.
LAYER_KINDS: tuple[tuple[tuple[type[nn.Module], ...], str], ...] = (
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), "conv"),
    ((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), "bn"),
    ((nn.LayerNorm, nn.GroupNorm), "norm"),
    ((nn.Linear,), "linear"),
)


def _kind(module: nn.Module) -> str:
    return next((name for types, name in LAYER_KINDS if isinstance(module, types)), type(module).__name__.lower())


def _child_labels(sequential: nn.Sequential, top: bool) -> dict[str, str]:
    """Readable names of the children of ``sequential`` that hold parameters: ``block1`` ... for
    nested blocks, ``conv``, ``bn`` ... for layers (numbered when a kind repeats), and ``head``
    for a linear layer that ends the whole model."""
    children = [(index, child) for index, child in sequential._modules.items()
                if child is not None and any(True for _ in child.parameters())]
    kinds = {index: "block" if isinstance(child, nn.Sequential) else _kind(child) for index, child in children}
    if top and children and isinstance(children[-1][1], nn.Linear):
        kinds[children[-1][0]] = "head"
    labels, seen = {}, {}
    for index, kind in kinds.items():
        seen[kind] = seen.get(kind, 0) + 1
        repeated = kind == "block" or list(kinds.values()).count(kind) > 1
        labels[index] = f"{kind}{seen[kind]}" if repeated else kind
    return labels


def parameter_display_names(model: nn.Module) -> dict[str, str]:
    """Readable names of ``model``'s parameters for tables and plots, keyed by the names
    ``named_parameters()`` and ``state_dict()`` use (which stay as they are, so that saved
    weights keep loading).

    A model that has a ``parameter_display_names()`` method publishes its own. An
    ``nn.Sequential`` (conv4, mlp) is named from its structure: conv4's ``0.0.weight`` is
    ``block1.conv.weight``, ``0.1.bias`` is ``block1.bn.bias`` and ``5.weight`` is
    ``head.weight``; mlp's layers are ``linear1``, ``linear2``, ..., ``head``. Any other model
    keeps its own names, which are attribute names already.
    """
    published = getattr(model, "parameter_display_names", None)
    if callable(published):
        return dict(published())
    names = {name: name for name, _ in model.named_parameters()}
    if not isinstance(model, nn.Sequential):
        return names
    labels: dict[int, dict[str, str]] = {}
    for name in names:
        *path, leaf = name.split(".")
        module, readable = model, []
        for part in path:
            if isinstance(module, nn.Sequential):
                if id(module) not in labels:
                    labels[id(module)] = _child_labels(module, top=module is model)
                readable.append(labels[id(module)][part])
            else:
                readable.append(part)
            module = module._modules[part]
        names[name] = ".".join([*readable, leaf])
    # Distinct names or none: a table whose rows could be confused is worse than raw indices.
    return names if len(set(names.values())) == len(names) else {name: name for name in names}


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
