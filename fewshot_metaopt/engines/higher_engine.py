"""Runs update rules inside ``higher``'s differentiable inner loops: the higher engine.

:class:`DifferentiableRuleOptimizer` is the differentiable twin of
:class:`~fewshot_metaopt.torch_optim.RuleOptimizer`, registered with higher, so a user can
write ``higher.innerloop_ctx(model, RuleOptimizer(model.named_parameters(), rule))`` and get
our rule with its meta-gradients. :class:`HigherEngine` drives it with the same
``inner_loop`` as :class:`~.func_engine.FuncEngine`.

higher facts this relies on: first-order MAML is a ``grad_callback`` that detaches the inner
gradients (``track_higher_grads=False`` would detach everything and leave no meta-gradient);
the rule is an attribute of the optimizer, never in ``param_groups``, which higher deep-copies
(cutting the meta-gradient to anything stored there); ``register_optim`` matches exact types.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import higher
from torch import Tensor, nn

from ..models.inner_step import current_inner_step, inner_step
from ..optim.rules.base import UpdateRule, step_rule
from ..torch_optim.rule_optimizer import RuleOptimizer
from .func_engine import MODES, Recorder, unused_parameters_error
from .precision import FP32, Precision


class DifferentiableRuleOptimizer(higher.optim.DifferentiableOptimizer):
    """higher's differentiable version of :class:`RuleOptimizer`: one rule step per ``step``."""

    def __init__(self, other: RuleOptimizer, reference_params, *args, **kwargs) -> None:
        super().__init__(other, reference_params, *args, **kwargs)
        self.rule = other.rule
        self.names = list(other.param_groups[0]["param_names"])
        self.rule_state: Any = None
        self.step_count = 0
        self._loss: Tensor | None = None

    def step(self, loss: Tensor, *args, rule_loss: Tensor | None = None, **kwargs):
        """higher's step on ``loss``; ``rule_loss`` is what the rule reads as the loss when it
        differs from the loss differentiated (a scaled one, under fp16)."""
        # higher hands ``_update`` the gradients only; the rule's loss argument is kept here.
        self._loss = loss if rule_loss is None else rule_loss
        try:
            return super().step(loss, *args, **kwargs)
        finally:
            self._loss = None

    def _update(self, grouped_grads, **kwargs) -> None:
        (group,) = self.param_groups
        params = dict(zip(self.names, group["params"]))
        grads = {name: g for name, g in zip(self.names, grouped_grads[0]) if g is not None}
        new, self.rule_state = step_rule(self.rule, params, grads, self.rule_state, self.step_count, self._loss)
        group["params"] = [new[name] for name in self.names]
        self.step_count += 1


higher.register_optim(RuleOptimizer, DifferentiableRuleOptimizer)


def detach_grads(grads):
    """First-order MAML: the inner gradients become constants, the path through them stays."""
    return [None if g is None else g.detach() for g in grads]


class PrecisionModel:
    """higher's functional model with its forward under a precision's autocast (outputs in
    float32); everything else is the functional model's own."""

    def __init__(self, fmodel: Any, forward: Callable[..., Tensor]) -> None:
        self.fmodel, self._forward = fmodel, forward

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return self._forward(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fmodel, name)


class AtInnerStep:
    """higher's functional model with its calls at inner step ``step``, ``evaluating`` or not
    (:mod:`fewshot_metaopt.models.inner_step`); everything else is the functional model's own."""

    def __init__(self, fmodel: Any, step: int, evaluating: bool) -> None:
        self.fmodel, self.step, self.evaluating = fmodel, step, evaluating

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        with inner_step(self.step, self.evaluating):
            return self.fmodel(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fmodel, name)


class HigherEngine:
    """Adapts ``model``'s parameters named ``adapted`` with ``rule`` in higher's functional
    modules; ``model`` itself is never written (its weights are the initial fast weights)."""

    def __init__(self, model: nn.Module, rule: UpdateRule, adapted: Sequence[str],
                 precision: Precision = FP32) -> None:
        self.model, self.rule, self.adapted, self.precision = model, rule, list(adapted), precision
        self.names = [n for n, _ in model.named_parameters()]
        params = dict(model.named_parameters())
        self.device = next(iter(params.values())).device
        self.optimizer = RuleOptimizer([(n, params[n]) for n in self.adapted], rule)
        # fp16: the current scale of the outer loss, applied to every inner loss too (see .precision).
        self.loss_scale = 1.0

    def _grad_callback(self, first_order: bool, allow_unused: bool) -> Callable | None:
        scale = self.loss_scale
        if allow_unused and not first_order and scale == 1.0:
            return None
        adapted = set(self.adapted)

        def callback(grads):
            if not allow_unused:
                missing = [n for n, g in zip(self.names, grads) if g is None and n in adapted]
                if missing:
                    raise unused_parameters_error(missing)
            if scale != 1.0:
                grads = [None if g is None else g / scale for g in grads]
            return detach_grads(grads) if first_order else grads

        return callback

    def inner_loop(
        self,
        steps: int,
        mode: str,
        support_loss: Callable[[Any, int], Tensor],
        query_loss: Callable[[Any], Tensor] | None = None,
        allow_unused: bool = False,
        record: Recorder | None = None,
        initial: Mapping[str, Tensor] | None = None,
    ) -> tuple[Any, Any, list[Tensor]]:
        """As :meth:`FuncEngine.inner_loop <.func_engine.FuncEngine.inner_loop>`; the adapted
        model is higher's functional module (``fmodel(x)``, ``fmodel.fast_params``)."""
        if mode not in MODES:
            raise ValueError(f"unknown inner-loop mode {mode!r}; choose one of {', '.join(MODES)}")
        track = mode != "eval"
        scoring = current_inner_step().evaluating  # the caller's to say (models.scoring)
        fmodel = higher.monkeypatch(self.model, copy_initial_weights=False, track_higher_grads=track)
        if initial:
            # The differentiable optimizer reads its parameters from the fast weights at every step.
            fmodel.update_params([initial.get(name, p) for name, p in zip(self.names, fmodel.fast_params)])
        diffopt = higher.optim.get_diff_optim(self.optimizer, self.model.parameters(), fmodel=fmodel,
                                              track_higher_grads=track)
        if self.precision.dtype is not None:
            fmodel = PrecisionModel(fmodel, self.precision.wrap(fmodel, self.device))
        callback = self._grad_callback(mode == "first_order", allow_unused)
        scale = self.loss_scale
        query_losses: list[Tensor] = []
        for step in range(steps):
            loss = support_loss(AtInnerStep(fmodel, step, scoring), step)
            if record is not None:
                record(dict(zip(self.names, fmodel.fast_params)), diffopt.rule_state, step)
            if scale != 1.0:
                diffopt.step(loss * scale, grad_callback=callback, rule_loss=loss)
            else:
                diffopt.step(loss, grad_callback=callback)
            if query_loss is not None and step < steps - 1:
                query_losses.append(query_loss(AtInnerStep(fmodel, step, scoring)))
        return AtInnerStep(fmodel, max(steps - 1, 0), scoring), diffopt.rule_state, query_losses
