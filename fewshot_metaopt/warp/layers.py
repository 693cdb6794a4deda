"""Warped models: task-adapted layers interleaved with meta-learned warp layers (Flennerhag et
al. 2020, "Meta-Learning with Warped Gradient Descent", ICLR).

A warp layer sits between task-adapted layers. The inner loop never moves it, but it lies in
the backward path of every adapted layer before it, so the gradient those layers receive is
preconditioned by the warp's Jacobian: meta-learning the warps meta-learns a preconditioner
for gradient descent, without a learned update rule and without differentiating the inner
loop.

>>> model = warp_conv4(ways=5)                 # conv4 with a 3x3 conv 64->64 warp after each block
>>> model.adapted_parameter_names()[:2]         # what the inner loop adapts
['layers.0.0.weight', 'layers.0.0.bias']
>>> WarpedModel.interleave([block1, block2, head], [warp_linear(40), warp_linear(40), None])

Warp layers preserve the shape of what flows through them (checked when the model is built
where the layers declare their sizes, and at the first forward pass otherwise).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from ..models import conv_block

WARP_INITS = ("identity", "default")


class WarpLayer(nn.Module):
    """``y = act(norm(transform(x)))``, plus ``x`` when ``residual``.

    ``init="identity"`` makes the layer the identity map where it can be one (a Dirac or
    identity-matrix transform, zero bias; a zero transform under ``residual``): an untrained
    warped model then computes, and descends, exactly as the model without warps. Batch norm
    and the activation break that identity and are off by default (the paper's Omniglot warps
    are linear).
    """

    def __init__(self, transform: nn.Module, norm: Optional[nn.Module] = None,
                 activation: Optional[nn.Module] = None, residual: bool = False, init: str = "identity") -> None:
        super().__init__()
        if init not in WARP_INITS:
            raise ValueError(f"unknown warp init {init!r}; choose one of {', '.join(WARP_INITS)}")
        self.transform, self.norm, self.activation, self.residual = transform, norm, activation, residual
        if init == "identity":
            with torch.no_grad():
                if residual:
                    nn.init.zeros_(transform.weight)
                elif isinstance(transform, nn.Conv2d):
                    nn.init.dirac_(transform.weight)
                else:
                    nn.init.eye_(transform.weight)
                if transform.bias is not None:
                    nn.init.zeros_(transform.bias)

    @property
    def features(self) -> int:
        t = self.transform
        return t.out_channels if isinstance(t, nn.Conv2d) else t.out_features

    def forward(self, x: Tensor) -> Tensor:
        y = self.transform(x)
        if self.norm is not None:
            y = self.norm(y)
        if self.activation is not None:
            y = self.activation(y)
        return x + y if self.residual else y


def warp_conv(channels: int, kernel_size: int = 3, batch_norm: bool = False, activation: bool = False,
              residual: bool = False, init: str = "identity") -> WarpLayer:
    """A ``channels -> channels`` convolution warp (same padding, so the shape is kept)."""
    if channels < 1 or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"warp_conv needs channels >= 1 and an odd kernel_size, got {channels}, {kernel_size}")
    conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)
    norm = nn.BatchNorm2d(channels, track_running_stats=False) if batch_norm else None
    return WarpLayer(conv, norm, nn.ReLU() if activation else None, residual, init)


def warp_linear(features: int, batch_norm: bool = False, activation: bool = False,
                residual: bool = False, init: str = "identity") -> WarpLayer:
    """A ``features -> features`` linear warp."""
    if features < 1:
        raise ValueError(f"warp_linear needs features >= 1, got {features}")
    norm = nn.BatchNorm1d(features, track_running_stats=False) if batch_norm else None
    return WarpLayer(nn.Linear(features, features), norm, nn.ReLU() if activation else None, residual, init)


def _out_size(module: nn.Module) -> Optional[int]:
    """Channels or features the module's last sized layer produces (None if unknown)."""
    size = None
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            size = m.out_channels
        elif isinstance(m, nn.Linear):
            size = m.out_features
    return size


class WarpedModel(nn.Module):
    """Layers applied in order; ``warp[i]`` says whether ``layers[i]`` is a warp layer.

    Task-adapted layers are what the inner loop moves (``adapted_parameter_names``); warp
    layers are meta-learned and held fixed within a task (``warp_parameter_names``).
    """

    def __init__(self, layers: Sequence[nn.Module], warp: Sequence[bool]) -> None:
        super().__init__()
        if len(layers) != len(warp):
            raise ValueError(f"got {len(layers)} layers but {len(warp)} warp flags")
        self.layers = nn.ModuleList(layers)
        self.is_warp = tuple(bool(w) for w in warp)
        self._bypass = False
        if not any(any(True for _ in m.parameters()) for m, w in zip(self.layers, self.is_warp) if not w):
            raise ValueError("the warped model has no task-adapted layer with parameters: nothing would adapt")
        if not any(self.is_warp):
            raise ValueError("the warped model has no warp layer; use the plain model instead")
        for i, (layer, w) in enumerate(zip(self.layers, self.is_warp)):
            if not w:
                continue
            features = getattr(layer, "features", None)
            before = next((_out_size(m) for m in reversed(self.layers[:i]) if _out_size(m) is not None), None)
            if features is not None and before is not None and features != before:
                raise ValueError(
                    f"warp layer {i} maps {features} features but the layers before it produce {before}"
                )

    @classmethod
    def interleave(cls, adapted: Sequence[nn.Module], warps: Sequence[Optional[nn.Module]]) -> "WarpedModel":
        """``adapted[i]`` followed by ``warps[i]`` (``None``: no warp after it)."""
        if len(adapted) != len(warps):
            raise ValueError(f"interleave needs one warp entry (or None) per adapted layer, got {len(adapted)} and {len(warps)}")
        layers, flags = [], []
        for a, w in zip(adapted, warps):
            layers.append(a)
            flags.append(False)
            if w is not None:
                layers.append(w)
                flags.append(True)
        return cls(layers, flags)

    def _names(self, want_warp: bool) -> list[str]:
        return [
            f"layers.{i}.{name}"
            for i, (layer, w) in enumerate(zip(self.layers, self.is_warp))
            if w == want_warp
            for name, _ in layer.named_parameters()
        ]

    def adapted_parameter_names(self) -> list[str]:
        return self._names(False)

    def warp_parameter_names(self) -> list[str]:
        return self._names(True)

    def warp_layers(self) -> list[nn.Module]:
        return [layer for layer, w in zip(self.layers, self.is_warp) if w]

    def warp_parameters(self) -> Iterator[nn.Parameter]:
        for layer in self.warp_layers():
            yield from layer.parameters()

    @contextlib.contextmanager
    def warps_bypassed(self) -> Iterator["WarpedModel"]:
        """Within the block, forward passes skip the warp layers (the unwarped model)."""
        self._bypass = True
        try:
            yield self
        finally:
            self._bypass = False

    def forward(self, x: Tensor) -> Tensor:
        for i, (layer, w) in enumerate(zip(self.layers, self.is_warp)):
            if w and self._bypass:
                continue
            try:
                x = layer(x)
            except RuntimeError as err:
                kind = "warp layer" if w else "layer"
                raise ValueError(f"{kind} {i} does not fit the input of shape {tuple(x.shape)} it gets: {err}") from err
        return x


def warp_conv4(ways: int, in_channels: int = 1, hidden: int = 64, image_size: int = 28, **warp_options) -> WarpedModel:
    """conv4 (see :func:`fewshot_metaopt.models.conv4`) with a 3x3 ``hidden -> hidden`` conv
    warp after each of its four task-adapted blocks; the linear head adapts and is not warped.
    ``warp_options`` go to :func:`warp_conv` (``batch_norm``, ``activation``, ``residual``, ``init``)."""
    side = image_size
    for _ in range(4):
        side //= 2
    if ways < 1 or side < 1:
        raise ValueError(f"warp_conv4 needs ways >= 1 and image_size >= 16, got {ways}, {image_size}")
    blocks = [conv_block(in_channels if i == 0 else hidden, hidden) for i in range(4)]
    head = nn.Sequential(nn.Flatten(), nn.Linear(hidden * side * side, ways))
    return WarpedModel.interleave([*blocks, head], [*(warp_conv(hidden, **warp_options) for _ in blocks), None])


def warp_mlp(in_features: int, out_features: int, hidden: Sequence[int] = (40, 40), **warp_options) -> WarpedModel:
    """A ReLU MLP with a linear warp after each hidden layer (``warp_options`` as :func:`warp_linear`)."""
    sizes = [in_features, *hidden]
    blocks = [nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(sizes[:-1], sizes[1:])]
    warps = [warp_linear(b, **warp_options) for b in sizes[1:]]
    return WarpedModel.interleave([*blocks, nn.Linear(sizes[-1], out_features)], [*warps, None])
