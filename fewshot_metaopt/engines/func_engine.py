"""Runs update rules on functional fast weights: the torch.func engine.

It drives the very rules the higher engine drives (``rule.init`` then ``rule.update`` once per
inner step, see :mod:`fewshot_metaopt.optim.rules.base`) and owns the differentiation itself:

* second order: ``torch.autograd.grad(..., create_graph=True)``, so the query loss reaches the
  initial weights and the rule's meta-parameters through every inner step;
* first order: the inner gradients are taken without a graph (constants), and the path
  ``theta' = theta - lr * g`` stays differentiable, which is what detaching them in higher's
  ``grad_callback`` does, minus building the graph that is thrown away;
* eval: weights are detached before each step and updated without a graph.

Nothing is cloned or monkeypatched per task: the fast weights are a plain dict fed to the
network's forward pass as lowered by :func:`.functional_model.functional_forward`, and only
the adapted parameters are differentiated (ANIL takes no gradient through the body).

:meth:`FuncEngine.inner_loop` adapts one task at a time, the fastest way on the CPU.
:meth:`FuncEngine.vmapped` adapts a stack of same-shaped tasks at once with
``torch.func.vmap`` over ``torch.func.grad``: batched kernels, for accelerators.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..models.inner_step import current_inner_step, inner_step
from ..optim.rules.base import UpdateRule, step_rule
from .functional_model import Forward, functional_forward
from .precision import FP32, Precision

MODES = ("second_order", "first_order", "eval")

# ``record(params, rule_state, step)``: called with the weights each inner step starts from.
Recorder = Callable[[Mapping[str, Tensor], Any, int], None]


def unused_parameters_error(missing: Sequence[str]) -> ValueError:
    return ValueError(
        f"parameters {list(missing)} get no gradient from the support loss; adapt fewer parameters "
        "or set allow_unused=True"
    )


class AdaptedModel:
    """The network with one task's fast weights, called like the module: ``fmodel(x)``.

    ``fast_params`` lists the weights in ``model.named_parameters()`` order, and
    ``fmodel(x, params=...)`` runs other weights given in that order (as higher's models do).
    Calls run at inner step ``step``, ``evaluating`` or not (:mod:`fewshot_metaopt.models.inner_step`:
    what per-step batch norm and DropBlock read).
    """

    def __init__(self, forward: Forward, params: Mapping[str, Tensor], names: Sequence[str], step: int = 0,
                 evaluating: bool = False) -> None:
        self.forward, self.params, self.names = forward, dict(params), list(names)
        self.step, self.evaluating = step, evaluating

    @property
    def fast_params(self) -> list[Tensor]:
        return [self.params[n] for n in self.names]

    def __call__(self, x: Tensor, params: Sequence[Tensor] | None = None) -> Tensor:
        weights = self.params if params is None else dict(zip(self.names, params))
        with inner_step(self.step, self.evaluating):
            return self.forward(weights, x)


@dataclass
class VmappedRun:
    """What :meth:`FuncEngine.vmapped` gives for ``k`` tasks: the query outputs after the last
    step ``(k, queries, ...)``, the support losses ``(k, steps)`` (values only, for checks),
    with ``per_step_query`` the query losses after each earlier step ``(k, steps - 1)``, and
    the adapted weights ``{name: (k, *shape)}`` of the adapted parameters."""

    query_outputs: Tensor
    support_losses: Tensor
    step_query_losses: Tensor | None
    adapted: dict[str, Tensor] | None = None


class FuncEngine:
    """Adapts ``model``'s parameters named ``adapted`` with ``rule`` (see the module docstring).

    ``model`` is never written: its parameters are read as the initial fast weights, so the
    meta-gradient lands in their ``.grad`` like any other autograd result.
    """

    def __init__(self, model: nn.Module, rule: UpdateRule, adapted: Sequence[str],
                 precision: Precision = FP32) -> None:
        self.model, self.rule, self.adapted, self.precision = model, rule, list(adapted), precision
        self.names = [n for n, _ in model.named_parameters()]
        self.device = next(model.parameters()).device
        self.forward = precision.wrap(functional_forward(model, lowerings=precision.lowerings), self.device)
        self._vmap_forward: Forward | None = None
        self.usage_checked = False
        # fp16: the current scale of the outer loss, applied to every inner loss too (see .precision).
        self.loss_scale = 1.0

    def adapted_model(self, params: Mapping[str, Tensor], step: int = 0, evaluating: bool = False) -> AdaptedModel:
        return AdaptedModel(self.forward, params, self.names, step, evaluating)

    def _grads(self, loss: Tensor, params: Mapping[str, Tensor], mode: str, allow_unused: bool) -> dict[str, Tensor]:
        targets = [params[n] for n in self.adapted]
        scale = self.loss_scale
        grads = torch.autograd.grad(loss * scale if scale != 1.0 else loss, targets,
                                    create_graph=mode == "second_order", allow_unused=True)
        missing = [n for n, g in zip(self.adapted, grads) if g is None]
        if missing and not allow_unused:
            raise unused_parameters_error(missing)
        return {n: g / scale if scale != 1.0 else g for n, g in zip(self.adapted, grads) if g is not None}

    def check_gradients_reach(self, loss: Tensor) -> None:
        """Raise unless every adapted parameter gets a gradient from ``loss``, a loss at the
        model's own weights (:meth:`vmapped` would give an unused parameter zeros)."""
        self._grads(loss, dict(self.model.named_parameters()), "first_order", allow_unused=False)
        self.usage_checked = True

    def inner_loop(
        self,
        steps: int,
        mode: str,
        support_loss: Callable[[AdaptedModel, int], Tensor],
        query_loss: Callable[[AdaptedModel], Tensor] | None = None,
        allow_unused: bool = False,
        record: Recorder | None = None,
        initial: Mapping[str, Tensor] | None = None,
    ) -> tuple[AdaptedModel, Any, list[Tensor]]:
        """``steps`` rule updates on one task. ``support_loss(fmodel, step)`` is the loss to
        descend at each step; ``query_loss(fmodel)``, when given, is recorded after every step
        but the last; ``record(params, rule_state, step)`` sees the weights each step starts
        from (``rule_state`` is ``None`` before the first). ``initial`` gives some parameters
        this task's own starting values (Proto-MAML's head), in the graph of whatever they were
        computed from; the others start at the model's. Returns the adapted model, the rule's
        state and those query losses."""
        if mode not in MODES:
            raise ValueError(f"unknown inner-loop mode {mode!r}; choose one of {', '.join(MODES)}")
        evaluating = mode == "eval"
        scoring = current_inner_step().evaluating  # the caller's to say (models.scoring)
        adapted = set(self.adapted)
        params = dict(self.model.named_parameters())
        if initial:
            # The others enter through aliases, so that the support gradient of each fast weight
            # is its own partial derivative: it must not run on through the initial weights
            # (computed from the model's parameters) into those parameters.
            params = {**{n: p.view_as(p) for n, p in params.items()}, **initial}
        state: Any = None
        query_losses: list[Tensor] = []
        for step in range(steps):
            if evaluating:
                params = {n: p.detach().requires_grad_(n in adapted) for n, p in params.items()}
            loss = support_loss(self.adapted_model(params, step, scoring), step)
            if record is not None:
                record(params, state, step)
            grads = self._grads(loss, params, mode, allow_unused)
            with torch.no_grad() if evaluating else nullcontext():
                new, state = step_rule(self.rule, {n: params[n] for n in self.adapted}, grads, state, step, loss)
            params.update(new)
            if query_loss is not None and step < steps - 1:
                query_losses.append(query_loss(self.adapted_model(params, step, scoring)))
        if evaluating:
            params = {n: p.detach() for n, p in params.items()}
        # The query pass after the last step runs at that step, as MAML++'s does.
        return self.adapted_model(params, max(steps - 1, 0), scoring), state, query_losses

    def vmapped(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        query_y: Tensor,
        steps: int,
        mode: str,
        loss: Callable[[Tensor, Tensor], Tensor],
        per_step_query: bool = False,
        initial: Mapping[str, Tensor] | None = None,
        batches: Tensor | None = None,
    ) -> VmappedRun:
        """The inner loops of ``k`` tasks stacked along dim 0, in one ``torch.func.vmap``.

        ``loss(output, target)`` must be vmap-safe (no data-dependent checks). Differentiable
        back to the model and the rule like ``k`` calls of :meth:`inner_loop`. An adapted
        parameter the support loss does not use gets a zero gradient here (``torch.func``
        cannot tell it apart), so callers check usage first. ``initial`` holds each task's own
        starting values of some parameters, stacked ``{name: (k, *shape)}`` (as
        :meth:`inner_loop`'s). ``batches`` ``(k, steps, b)`` holds the indices of the support
        examples each step descends on (mini-batches of the support set; ``None``: all of
        them). Run under ``torch.no_grad()`` in ``first_order`` mode, it keeps no graph at all
        (``torch.func.grad`` still differentiates the support losses).
        """
        if mode not in ("second_order", "first_order"):
            raise ValueError(f"vmapped inner loops are for meta-training; got mode {mode!r}")
        if self._vmap_forward is None:
            self._vmap_forward = self.precision.wrap_batched(functional_forward(self.model, for_vmap=True),
                                                             self.device)
        forward = self._vmap_forward
        theta = dict(self.model.named_parameters())
        first_order = mode == "first_order"
        scale = self.loss_scale

        def one_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, start: dict[str, Tensor],
                     chosen: Tensor | None):
            params, state = {**theta, **start}, None
            support_values, step_losses = [], []
            for step in range(steps):
                bx, by = (sx, sy) if chosen is None else (sx[chosen[step]], sy[chosen[step]])

                def support(current: dict[str, Tensor], params=params, bx=bx, by=by):
                    value = loss(forward({**params, **current}, bx), by)
                    return value * scale, value.detach()

                current = {n: params[n] for n in self.adapted}
                grads, value = torch.func.grad(support, has_aux=True)(current)
                grads = {n: g / scale for n, g in grads.items()} if scale != 1.0 else grads
                if first_order:
                    grads = {n: g.detach() for n, g in grads.items()}
                new, state = step_rule(self.rule, current, grads, state, step, value)
                params = {**params, **new}
                support_values.append(value)
                if per_step_query and step < steps - 1:
                    step_losses.append(loss(forward(params, qx), qy))
            per_step = torch.stack(step_losses) if step_losses else qx.new_zeros(0)
            adapted = {n: params[n] for n in self.adapted}
            return forward(params, qx), torch.stack(support_values), per_step, adapted

        in_dims = (0, 0, 0, 0, 0, None if batches is None else 0)
        outputs, support_values, per_step, adapted = torch.func.vmap(one_task, in_dims=in_dims)(
            support_x, support_y, query_x, query_y, dict(initial or {}), batches)
        return VmappedRun(outputs, support_values, per_step if per_step_query and steps > 1 else None, adapted)
