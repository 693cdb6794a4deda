"""SGD whose learning rate, momentum and weight decay are read from a learned memory tape.

At step ``t`` with loss ``L`` and gradients ``g`` (all tensors together)::

    f      = (log(1 + |L|), log(1 + ||g||), t / 100, 0, ..., 0)     detached, dim entries
    memory = tape.write(memory, f);  r = tape.read(memory, f)       (see DifferentiableTape)
    (c_lr, c_m, c_wd) = W r + b
    lr_t   = lr * (0.05 + 1.95 sigmoid(c_lr))                       in (0.05 lr, 2 lr)
    mom_t  = clamp(momentum + 0.5 tanh(c_m), 0, 0.99)
    wd_t   = clamp(weight_decay + 1e-4 softplus(c_wd), 0, 1e-2)
    u      = -lr_t (g + wd_t theta) + mom_t u_prev;   theta' = theta + u    (every tensor)

Bounded by construction, so an untrained or badly trained tape cannot take an unbounded step.
``W`` starts at zero and ``b`` where the coefficients equal the base ``lr`` and ``momentum``
(and ``wd_t`` is 1.2e-8 above ``weight_decay``), so the untrained rule is SGD with the base
hyperparameters and meta-training starts from that baseline (torch's random initialisation
would start at a random learning rate anywhere in the range).

The loss enters only as a feature, the ``loss`` argument of ``update`` (the learners' engines
pass the support loss of each inner step). Out of place throughout; the gradients enter with
their graph, so the driver decides first or second order.
"""

from __future__ import annotations

import math
from typing import Dict, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ... import checks
from .base import Params, UpdateRule
from .loss_feature import loss_feature
from .preprocess import check_grads, record_effective_lr, records_to_floats
from .tape_memory import DifferentiableTape

FEATURES = 3  # loss, gradient norm, step
MOMENTUM_MAX, WEIGHT_DECAY_MAX = 0.99, 1e-2
# sigmoid(LR_BIAS) = 0.95 / 1.95, so 0.05 + 1.95 sigmoid(LR_BIAS) = 1: the base lr exactly.
LR_BIAS = math.log(0.95)
WD_BIAS = -9.0  # 1e-4 * softplus(-9) = 1.2e-8: the base weight decay, near enough


class TapeState(NamedTuple):
    """The memory and each tensor's previous update (what momentum reads)."""

    memory: Tensor
    updates: Dict[str, Tensor]


class TapeSGDRule(UpdateRule):
    """SGD with tape-driven, bounded lr, momentum and weight decay (see the module docstring).

    Args:
        lr, momentum, weight_decay: the base values the tape modulates (momentum in
            [0, 0.99], weight decay in [0, 0.01]).
        slots, dim, decay: the tape's size (``dim >= 3`` holds the three features) and leak.
        check_finite: raise on NaN/Inf gradients (one device sync per step).
    """

    def __init__(
        self,
        lr: float = 0.1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        slots: int = 32,
        dim: int = 16,
        decay: float = 0.95,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        self.lr = checks.positive("lr", lr, owner="TapeSGDRule")
        self.momentum = checks.real("momentum", momentum, 0.0, MOMENTUM_MAX, owner="TapeSGDRule")
        self.weight_decay = checks.real("weight_decay", weight_decay, 0.0, WEIGHT_DECAY_MAX, owner="TapeSGDRule")
        checks.integer("dim", dim, FEATURES, owner="TapeSGDRule")
        self.check_finite = check_finite
        self.tape = DifferentiableTape(slots=slots, dim=dim, decay=decay)
        self.coeff_proj = nn.Linear(dim, 3)
        nn.init.zeros_(self.coeff_proj.weight)
        with torch.no_grad():
            self.coeff_proj.bias.copy_(torch.tensor([LR_BIAS, 0.0, WD_BIAS]))
        self._effective: dict[str, Tensor] = {}

    def init(self, params: Params) -> TapeState:
        return TapeState(self.tape.empty(), {name: torch.zeros_like(p) for name, p in params.items()})

    def features(self, loss: Tensor | None, grads: Params, step: int) -> Tensor:
        """The detached features (loss, gradient norm, step), padded with zeros to the tape's width."""
        like = self.coeff_proj.weight
        norm = torch.sqrt(sum(g.detach().to(like.dtype).square().sum() for g in grads.values()))
        values = torch.stack([loss_feature(loss, like), torch.log1p(norm), like.new_tensor(step / 100.0)])
        return F.pad(values, (0, self.tape.dim - FEATURES))

    def coefficients(self, read: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The bounded (lr, momentum, weight decay) for a memory read."""
        raw = self.coeff_proj(read)
        lr = self.lr * (0.05 + 1.95 * torch.sigmoid(raw[0]))
        momentum = torch.clamp(self.momentum + 0.5 * torch.tanh(raw[1]), 0.0, MOMENTUM_MAX)
        decay = torch.clamp(self.weight_decay + 1e-4 * F.softplus(raw[2]), 0.0, WEIGHT_DECAY_MAX)
        return lr, momentum, decay

    def update(
        self, params: Params, grads: Params, state: TapeState, step: int, loss: Tensor | None = None
    ) -> tuple[Params, TapeState]:
        check_grads(params, grads, self.check_finite)
        if not grads:
            return dict(params), state
        features = self.features(loss, grads, step)
        memory = self.tape.write(state.memory, features)
        lr, momentum, decay = self.coefficients(self.tape.read(memory, features))
        new, updates = dict(params), dict(state.updates)
        for name, g in grads.items():
            p = params[name]
            update = -lr * (g + decay * p) + momentum * state.updates[name]
            new[name] = p + update
            updates[name] = update
            record_effective_lr(self._effective, name, update, g)
        return new, TapeState(memory, updates)

    def get_learned_lr(self) -> dict[str, float]:
        """Effective learning rate per tensor of the last update, ``mean|u| / mean|g|``."""
        return records_to_floats(self._effective)
