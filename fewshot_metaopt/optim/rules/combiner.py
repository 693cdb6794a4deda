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
from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn

from ... import checks
from .base import Params, UpdateRule
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
    """

    def __init__(
        self,
        pool: Sequence[UpdateRule],
        mix: Sequence[float] | None = None,
        hidden: Sequence[int] = (16,),
        eps: float = 1e-12,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
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
        """The mixed update of one tensor from its ``(coordinates, K)`` proposals."""
        scale = torch.sqrt(proposals.square().mean() + self.eps**2)
        n = proposals.shape[0]
        features = torch.cat(
            [proposals / scale, loss.expand(n, 1), torch.log(scale).expand(n, 1)], dim=1
        ).to(self.mix.dtype)
        weights = self.mix + self.mlp(features)
        return (weights.to(proposals.dtype) * proposals).sum(dim=1)

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
