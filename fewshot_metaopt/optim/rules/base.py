"""The update-rule contract: every inner-loop method is written once, as a pure rule.

A rule maps named parameters, their gradients and a state to new parameters and a new state,
out of place and without calling autograd itself: the driver that runs it (the higher engine,
the functional engine, a truncated-BPTT trainer, a ``torch.optim`` front end) owns
differentiation, so the same rule is exact under second-order MAML, first-order MAML and plain
evaluation. Learnable meta-parameters (learning rates, LSTM weights) live in the rule, an
``nn.Module``, so the outer optimizer trains them as ordinary parameters.

``loss`` is the loss whose gradients ``grads`` are (detached; ``None`` where the driver has
none): an extra input of the update, as optax passes extra arguments to ``update`` and
learned_optimization passes ``loss=``. Rules that do not read it ignore it.

``grads`` may lack names: a parameter without a gradient keeps its value.

Drivers never call ``update`` themselves: :func:`step_rule` does, so that every driver starts
the state, hands over the loss and merges the new tensors the same way.
"""

from __future__ import annotations

from typing import Any, Dict

from torch import Tensor, nn

Params = Dict[str, Tensor]


class UpdateRule(nn.Module):
    def init(self, params: Params) -> Any:
        """The state before the first step (``None`` for stateless rules)."""
        return None

    def update(
        self, params: Params, grads: Params, state: Any, step: int, loss: Tensor | None = None
    ) -> tuple[Params, Any]:
        raise NotImplementedError  # pragma: no cover - the contract; each rule defines it


def step_rule(
    rule: UpdateRule, params: Params, grads: Params, state: Any, step: int, loss: Tensor | None = None
) -> tuple[Params, Any]:
    """One step of ``rule``: ``params`` with the new values of the updated names merged in,
    and the new state. ``state=None`` means "no step taken yet": the rule's initial state is
    made from ``params`` first. ``loss`` is handed over detached, so no rule can reach into
    the graph that produced it."""
    if state is None:
        state = rule.init(params)
    new, state = rule.update(params, grads, state, step, loss=None if loss is None else loss.detach())
    return {**params, **new}, state
