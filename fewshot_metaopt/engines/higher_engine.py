"""Runs update rules inside ``higher``'s differentiable inner loops.

:class:`RuleOptimizer` is a ``torch.optim.Optimizer`` twin of a rule and
:class:`DifferentiableRuleOptimizer` its differentiable counterpart, registered with higher,
so a user can write ``higher.innerloop_ctx(model, RuleOptimizer(model.named_parameters(), rule))``
and get our rule with its meta-gradients. The rule (and its learnable tensors) is held as an
attribute, never in ``param_groups``: higher deep-copies the groups, which would cut the
meta-gradient to anything stored there.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import higher
import torch
from torch import Tensor, nn

from ..optim.rules.base import UpdateRule
from ..optim.rules.loss_feature import with_loss


class RuleOptimizer(torch.optim.Optimizer):
    """An update rule as an ordinary optimizer (in place, no meta-gradient), and higher's twin."""

    def __init__(self, named_params: Iterable[tuple[str, Tensor]], rule: UpdateRule):
        named = list(named_params)
        if not named:
            raise ValueError("RuleOptimizer got no parameters to update")
        super().__init__([{"params": [p], "name": n} for n, p in named], defaults={})
        self.rule = rule
        self.rule_state: Any = None
        self.step_count = 0

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = {g["name"]: g["params"][0] for g in self.param_groups}
        grads = {n: p.grad for n, p in params.items() if p.grad is not None}
        if self.rule_state is None:
            self.rule_state = self.rule.init(params)
        new, self.rule_state = self.rule.update(params, grads, with_loss(self.rule_state, loss), self.step_count)
        for name, p in params.items():
            p.copy_(new[name])
        self.step_count += 1
        return loss


class DifferentiableRuleOptimizer(higher.optim.DifferentiableOptimizer):
    """higher's differentiable version of :class:`RuleOptimizer`: one ``rule.update`` per step."""

    def __init__(self, other: RuleOptimizer, reference_params, *args, **kwargs) -> None:
        super().__init__(other, reference_params, *args, **kwargs)
        self.rule = other.rule
        self.names = [g["name"] for g in other.param_groups]
        self.rule_state: Any = None
        self.step_count = 0
        self._loss: Tensor | None = None

    def step(self, loss: Tensor, *args, **kwargs):
        # higher hands ``_update`` the gradients only; rules that read the loss get it here.
        self._loss = loss
        try:
            return super().step(loss, *args, **kwargs)
        finally:
            self._loss = None

    def _update(self, grouped_grads, **kwargs) -> None:
        params = {name: group["params"][0] for name, group in zip(self.names, self.param_groups)}
        grads = {name: g[0] for name, g in zip(self.names, grouped_grads) if g[0] is not None}
        if self.rule_state is None:
            self.rule_state = self.rule.init(params)
        new, self.rule_state = self.rule.update(params, grads, with_loss(self.rule_state, self._loss), self.step_count)
        for name, group in zip(self.names, self.param_groups):
            group["params"][0] = new[name]
        self.step_count += 1


higher.register_optim(RuleOptimizer, DifferentiableRuleOptimizer)


def detach_grads(grads):
    """First-order MAML: the inner gradients become constants, the path through them stays."""
    return [None if g is None else g.detach() for g in grads]


def functional_inner_loop(
    model: nn.Module, optimizer: RuleOptimizer, track_higher_grads: bool
) -> tuple[Any, DifferentiableRuleOptimizer]:
    """A functional view of ``model`` whose fast weights start at its real parameters, and the
    differentiable optimizer that steps them. The model itself is never written."""
    fmodel = higher.monkeypatch(model, copy_initial_weights=False, track_higher_grads=track_higher_grads)
    diffopt = higher.optim.get_diff_optim(
        optimizer, model.parameters(), fmodel=fmodel, track_higher_grads=track_higher_grads
    )
    return fmodel, diffopt
