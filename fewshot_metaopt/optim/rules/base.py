"""The update-rule contract: every inner-loop method is written once, as a pure rule.

A rule maps named parameters, their gradients and a state to new parameters and a new state,
out of place and without calling autograd itself: the driver that runs it (the higher engine,
the functional engine) owns differentiation, so the same rule is exact under second-order
MAML, first-order MAML and plain evaluation. Learnable meta-parameters (learning rates, LSTM
weights) live in the rule, an ``nn.Module``, so the outer optimizer trains them as ordinary
parameters.

``grads`` may lack names: a parameter without a gradient keeps its value.
"""

from __future__ import annotations

from typing import Any, Dict

from torch import Tensor, nn

Params = Dict[str, Tensor]


class UpdateRule(nn.Module):
    def init(self, params: Params) -> Any:
        """The state before the first step (``None`` for stateless rules)."""
        return None

    def update(self, params: Params, grads: Params, state: Any, step: int) -> tuple[Params, Any]:
        raise NotImplementedError  # pragma: no cover - the contract; each rule defines it
