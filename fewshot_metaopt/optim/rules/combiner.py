"""A small coordinatewise MLP that mixes the updates of a pool of rules (the Meta-NN combiner).

For each tensor with gradient ``g``, every rule ``k`` of the pool (SGD and Adam by default, or
any update rules) proposes its update ``d_k = rule_k(theta, g) - theta``. For each coordinate
``i`` the MLP reads::

    z_i = (d_1i / s, ..., d_Ki / s, log(1 + |loss|), log s)     s: RMS of the tensor's d_k

(the proposals relative to each other, the current loss, and the size of the proposed steps,
which plays the part of a learning-rate feature) and outputs ``a_i`` in ``R^K``::

    theta_i' = theta_i + sum_k (w_k + a_ki) d_ki                 w: the initial mix (1/K each)

The output layer starts at zero, so the untrained rule is exactly the fixed mix ``w`` (0.5/0.5
for SGD and Adam) and learning moves each coordinate's weights away from it. The MLP's weights
are shared by every coordinate of every tensor; the pool rules' states advance with every
update whatever the mix, so each proposal is the one its rule would make on its own.

Nearest published relative: the "Choice" amalgamation of Optimizer Amalgamation (Huang et al.
2022), which softmax-weights a pool of updates; here the weights are free and per coordinate.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn

from ... import checks
from .base import Params, UpdateRule
from .coordinate_chunks import DEFAULT_CHUNK_SIZE, check_chunking, linear, map_chunks
from .loss_feature import loss_feature
from .preprocess import check_grads, record_effective_lr, records_to_floats

EXTRA_FEATURES = 2  # the loss and the log step size


class CombinerState(NamedTuple):
    """Each pool rule's own state."""

    pool: tuple


class CombinerRule(UpdateRule):
    """Mixes a pool of update rules per coordinate with a small MLP (see the module docstring).

    Args:
        pool: the rules whose updates are mixed (at least one).
        mix: the initial weight of each rule (default ``1/K`` each).
        hidden: widths of the MLP's hidden ReLU layers (the seed: one or two small layers).
        eps: keeps the step-size scale ``s`` positive when every proposal is zero.
        check_finite: raise on NaN/Inf gradients (one device sync per step).
        chunk_size, network_precision: how the MLP is evaluated (:mod:`.coordinate_chunks`).
    """

    def __init__(
        self,
        pool: Sequence[UpdateRule],
        mix: Sequence[float] | None = None,
        hidden: Sequence[int] = (16,),
        eps: float = 1e-12,
        check_finite: bool = True,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        network_precision: str = "fp32",
    ) -> None:
        super().__init__()
        self.chunk_size = check_chunking(chunk_size, network_precision, "CombinerRule")
        self.network_precision = network_precision
        pool = list(pool)
        if not pool:
            raise ValueError("CombinerRule needs at least one rule in its pool, got none")
        for i, rule in enumerate(pool):
            if not isinstance(rule, UpdateRule):
                raise ValueError(f"CombinerRule pool entry {i} is a {type(rule).__name__}, not an UpdateRule")
        if mix is None:
            mix = [1.0 / len(pool)] * len(pool)
        else:
            mix = [checks.real("mix weight", w, owner="CombinerRule") for w in mix]
        if len(mix) != len(pool):
            raise ValueError(f"CombinerRule needs one mix weight per pool rule ({len(pool)}), got {len(mix)}")
        hidden = [checks.integer("hidden width", h, 1, owner="CombinerRule") for h in hidden]
        if not hidden:
            raise ValueError("CombinerRule needs at least one hidden layer, got hidden=()")
        self.eps = checks.real("eps", eps, 0.0, math.inf, owner="CombinerRule")
        self.check_finite = check_finite
        self.pool = nn.ModuleList(pool)
        # A buffer, not a parameter: the fixed mix is the reference the MLP learns corrections to.
        self.register_buffer("mix", torch.tensor(mix))
        layers: list[nn.Module] = []
        width = len(pool) + EXTRA_FEATURES
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        readout = nn.Linear(width, len(pool))
        nn.init.zeros_(readout.weight)
        nn.init.zeros_(readout.bias)
        self.mlp = nn.Sequential(*layers, readout)
        self._effective: dict[str, Tensor] = {}

    def init(self, params: Params) -> CombinerState:
        return CombinerState(tuple(rule.init(params) for rule in self.pool))

    def combine(self, proposals: Tensor, loss: Tensor) -> Tensor:
        """The mixed update of one tensor from its ``(coordinates, K)`` proposals, in chunks of
        ``chunk_size`` coordinates (:mod:`.coordinate_chunks`)."""
        scale = torch.sqrt(proposals.square().mean() + self.eps**2)
        linears = [layer for layer in self.mlp if isinstance(layer, nn.Linear)]
        first, pool = linears[0], len(self.pool)
        # The loss and the step size are the same for every coordinate of the tensor: their
        # columns of the first layer fold into its bias.
        constant = torch.stack([loss, torch.log(scale)]).to(self.mix.dtype)
        layers = [first.weight[:, :pool], first.bias + first.weight[:, pool:] @ constant]
        for layer in linears[1:]:
            layers += [layer.weight, layer.bias]
        chunk = partial(_mixed_chunk, scale=scale, mix=self.mix, layers=layers, precision=self.network_precision)
        return map_chunks(chunk, (proposals,), self.chunk_size)

    def update(
        self, params: Params, grads: Params, state: CombinerState, step: int, loss: Tensor | None = None
    ) -> tuple[Params, CombinerState]:
        check_grads(params, grads, self.check_finite)
        proposed, pool_states = [], []
        for rule, rule_state in zip(self.pool, state.pool):
            new, rule_state = rule.update(params, grads, rule_state, step, loss=loss)
            proposed.append(new)
            pool_states.append(rule_state)
        new = dict(params)
        for name, grad in grads.items():
            p = params[name]
            proposals = torch.stack([(candidate[name] - p).reshape(-1) for candidate in proposed], dim=1)
            delta = self.combine(proposals, loss_feature(loss, like=p)).reshape(p.shape)
            new[name] = p + delta
            record_effective_lr(self._effective, name, delta, grad)
        return new, CombinerState(tuple(pool_states))

    def get_learned_lr(self) -> dict[str, float]:
        """Effective learning rate per tensor of the last update, ``mean|delta| / mean|grad|``."""
        return records_to_floats(self._effective)


def _mixed_chunk(proposals: Tensor, scale: Tensor, mix: Tensor, layers: list, precision: str) -> Tensor:
    x = (proposals / scale).to(mix.dtype)
    for k in range(0, len(layers), 2):
        x = linear(x, layers[k], layers[k + 1], precision)
        if k + 2 < len(layers):
            x = torch.relu(x)
    return ((mix + x).to(proposals.dtype) * proposals).sum(dim=1)
