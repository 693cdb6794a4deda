"""Learning-rate schedules for the inner loop of any update rule and for the meta-optimizer.

A schedule maps a step index (0, 1, 2, ...) to a multiplier of a learning rate:

===========================================  =============================================
schedule                                     multiplier at step ``t``
===========================================  =============================================
``Constant(value=1.0)``                      ``value``
``Warmup(steps, start=0.0)``                 ``start + (1 - start) * min(t, steps) / steps``
``Cosine(total_steps, min_factor=0.0,        linear warmup ``t / warmup_steps``, then
warmup_steps=0)``                            ``min + (1 - min) * (1 + cos(pi * p)) / 2``
``Cyclical(period, low=0.1, high=1.0,        ``low`` at ``t = 0, period, 2 period, ...``,
mode="triangular")``                         ``high`` half way between (Smith 2017)
``Learned(steps, init=1.0)``                 one learnable multiplier per step (a Tensor)
===========================================  =============================================

Two places to use one:

* the inner loop of any rule: ``ScheduledRule(rule, schedule)`` scales the rule's update at
  inner step ``t`` by the multiplier, ``theta' = theta + m(t) * (rule(theta) - theta)``. For
  rules whose update is linear in their learning rate (:class:`SGDRule`, :class:`AdamRule`)
  this is exactly scheduling that learning rate; for learned rules it scales their step.
  Pass it as ``GradientMetaLearner(model, config, inner_optimizer=ScheduledRule(...))``.
* the meta-optimizer: ``schedule_optimizer(learner.meta_optimizer, Cosine(1000))`` returns
  torch's own ``LambdaLR``; call its ``step()`` after every meta-training step.

:class:`Learned` multipliers are meta-parameters trained by the outer loop (the per-step
learning-rate multipliers of MAML++-style schedules), so they belong to an inner loop, never
to a torch scheduler. They are stored in log space by default, so each stays positive and the
schedule never turns into a step uphill; ``log_space=False`` stores the multipliers themselves,
free in sign, as Meta-SGD does its learning rates.

Steps count from 0, so ``Warmup(steps=4)`` gives 0, 0.25, 0.5, 0.75, then 1 from step 4 on:
with the default ``start=0.0`` the first inner step moves nothing (the wrapped rule's state
still advances); give ``start > 0`` to move from the first step.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from .. import checks
from .learned_lr import learned_lr_of
from .rules.base import Params, UpdateRule

CYCLICAL_MODES = ("triangular", "cosine")


def _shown(value: Any) -> str:
    """A one-line name for a value in an error message (a module's repr spans lines)."""
    return type(value).__name__ if isinstance(value, nn.Module) else repr(value)


def _step(owner: str, step: Any) -> int:
    return checks.integer("step", step, 0, owner=owner)


class Schedule:
    """A fixed (not learned) schedule: ``schedule(step)`` is a float multiplier."""

    learned = False

    def __call__(self, step: int) -> float:
        return self.multiplier(_step(type(self).__name__, step))

    def multiplier(self, step: int) -> float:
        raise NotImplementedError  # pragma: no cover - each schedule defines it

    def describe(self) -> str:
        raise NotImplementedError  # pragma: no cover - each schedule defines it

    def __repr__(self) -> str:
        return self.describe()


class Constant(Schedule):
    """The same multiplier at every step (1.0: the wrapped rule exactly as it is)."""

    def __init__(self, value: float = 1.0) -> None:
        self.value = checks.real("value", value, owner="Constant")

    def multiplier(self, step: int) -> float:
        return self.value

    def describe(self) -> str:
        return f"Constant(value={self.value})"


class Warmup(Schedule):
    """Linear from ``start`` at step 0 to 1 at step ``steps``, then 1."""

    def __init__(self, steps: int, start: float = 0.0) -> None:
        self.steps = checks.integer("steps", steps, 1, owner="Warmup")
        self.start = checks.real("start", start, 0.0, 1.0, owner="Warmup")

    def multiplier(self, step: int) -> float:
        if step >= self.steps:
            return 1.0
        return self.start + (1.0 - self.start) * step / self.steps

    def describe(self) -> str:
        return f"Warmup(steps={self.steps}, start={self.start})"


class Cosine(Schedule):
    """Optional linear warmup from 0, then cosine decay from 1 to ``min_factor``.

    Over steps ``warmup_steps .. total_steps`` the multiplier is
    ``min + (1 - min) * (1 + cos(pi * p)) / 2`` with ``p`` going from 0 to 1 (Loshchilov &
    Hutter 2017, one cycle without restarts); it stays at ``min_factor`` after ``total_steps``.
    """

    def __init__(self, total_steps: int, min_factor: float = 0.0, warmup_steps: int = 0) -> None:
        self.total_steps = checks.integer("total_steps", total_steps, 1, owner="Cosine")
        self.min_factor = checks.real("min_factor", min_factor, 0.0, 1.0, owner="Cosine")
        self.warmup_steps = checks.integer("warmup_steps", warmup_steps, 0, owner="Cosine")
        if self.warmup_steps >= self.total_steps:
            raise ValueError(
                f"Cosine needs warmup_steps < total_steps, got warmup_steps={warmup_steps!r} "
                f"and total_steps={total_steps!r}"
            )

    def multiplier(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        progress = min((step - self.warmup_steps) / (self.total_steps - self.warmup_steps), 1.0)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def describe(self) -> str:
        return (
            f"Cosine(total_steps={self.total_steps}, min_factor={self.min_factor}, "
            f"warmup_steps={self.warmup_steps})"
        )


class Cyclical(Schedule):
    """Cycles between ``low`` and ``high`` every ``period`` steps (Smith 2017, "Cyclical
    Learning Rates for Training Neural Networks").

    ``low`` at steps ``0, period, 2 period, ...`` and ``high`` half way between. ``"triangular"``
    goes there and back in straight lines (Smith's triangular policy with
    ``stepsize = period / 2``); ``"cosine"`` follows ``low + (high - low) * (1 - cos(2 pi t / period)) / 2``.
    """

    def __init__(self, period: float, low: float = 0.1, high: float = 1.0, mode: str = "triangular") -> None:
        period = checks.real("period", period, owner="Cyclical")
        if period <= 0:
            raise ValueError(f"Cyclical needs a positive period, got {period!r}")
        self.period = period
        self.low = checks.real("low", low, 0.0, owner="Cyclical")
        self.high = checks.real("high", high, owner="Cyclical")
        if self.low > self.high:
            raise ValueError(f"Cyclical needs low <= high, got low={low!r} and high={high!r}")
        if mode not in CYCLICAL_MODES:
            raise ValueError(f"unknown Cyclical mode {mode!r}; choose one of {', '.join(CYCLICAL_MODES)}")
        self.mode = mode

    def multiplier(self, step: int) -> float:
        phase = (step % self.period) / self.period
        if self.mode == "triangular":
            height = 1.0 - abs(2.0 * phase - 1.0)
        else:
            height = 0.5 * (1.0 - math.cos(2.0 * math.pi * phase))
        return self.low + (self.high - self.low) * height

    def describe(self) -> str:
        return f"Cyclical(period={self.period:g}, low={self.low}, high={self.high}, mode={self.mode!r})"


class Learned(nn.Module):
    """One learnable multiplier per step; steps past the last reuse the last one.

    ``schedule(step)`` is a 0-dim Tensor in the graph of ``self.values``, so the outer loop's
    gradient reaches it. With ``log_space=True`` (the default) ``values`` holds
    ``log(multiplier)``, which keeps every multiplier positive; ``init`` must then be positive.
    With ``log_space=False`` ``values`` holds the multipliers themselves, free in sign.
    ``dtype`` builds the values in the parameters' own dtype (a float32 round trip would
    perturb a float64 ``init``).
    """

    learned = True

    def __init__(self, steps: int, init: float = 1.0, log_space: bool = True, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.steps = checks.integer("steps", steps, 1, owner="Learned")
        if log_space:
            init = checks.real("init", init, owner="Learned")
            if init <= 0:
                raise ValueError(f"Learned in log space needs a positive init, got {init!r}")
            start = math.log(init)
        else:
            start = init = checks.real("init", init, owner="Learned")
        self.init = init
        self.log_space = bool(log_space)
        self.values = nn.Parameter(torch.full((self.steps,), start, dtype=dtype))

    def forward(self, step: int) -> Tensor:
        value = self.values[min(_step("Learned", step), self.steps - 1)]
        return value.exp() if self.log_space else value

    def multipliers(self) -> Tensor:
        """Every step's multiplier, detached (for logging and plots)."""
        values = self.values.detach()
        return (values.exp() if self.log_space else values).clone()

    def describe(self) -> str:
        shown = ", ".join(f"{v:.4g}" for v in self.multipliers().tolist())
        return f"Learned(steps={self.steps}, log_space={self.log_space}, multipliers=[{shown}])"

    def extra_repr(self) -> str:
        return f"steps={self.steps}, init={self.init}, log_space={self.log_space}"


class ScheduledRule(UpdateRule):
    """Any update rule with its update scaled by a schedule at each inner step.

    ``new = params + m(step) * (rule_update - params)`` for every name in ``grads``; other
    names keep their value. ``init`` and the state are the wrapped rule's. The module's
    parameters are the wrapped rule's and, for :class:`Learned`, the schedule's, so an outer
    optimizer over ``scheduled.parameters()`` trains both. A multiplier of exactly 1.0 (a
    float) returns the wrapped rule's parameters untouched.
    """

    def __init__(self, rule: UpdateRule, schedule: Schedule | Learned) -> None:
        super().__init__()
        if not isinstance(rule, UpdateRule):
            raise ValueError(f"ScheduledRule wraps an UpdateRule, got {_shown(rule)}")
        if not isinstance(schedule, (Schedule, Learned)):
            raise ValueError(
                f"ScheduledRule needs a schedule (Constant, Warmup, Cosine, Cyclical, Learned), got {_shown(schedule)}"
            )
        self.rule = rule
        self.schedule = schedule  # a Learned one registers as a submodule

    def init(self, params: Params) -> Any:
        return self.rule.init(params)

    def update(
        self, params: Params, grads: Params, state: Any, step: int, loss: Tensor | None = None
    ) -> tuple[Params, Any]:
        proposed, state = self.rule.update(params, grads, state, step, loss=loss)
        factor = self.schedule(step)
        new = dict(params)
        for name in grads:
            if isinstance(factor, float) and factor == 1.0:
                new[name] = proposed[name]
            else:
                new[name] = params[name] + factor * (proposed[name] - params[name])
        return new, state

    def get_learned_lr(self) -> dict[str, float]:
        """The wrapped rule's mean learning rates, before the schedule's multiplier."""
        return learned_lr_of(self.rule)

    def extra_repr(self) -> str:
        return "" if isinstance(self.schedule, nn.Module) else f"(schedule): {self.schedule.describe()}"


def schedule_optimizer(optimizer: torch.optim.Optimizer, schedule: Schedule | Callable[[int], float]) -> LambdaLR:
    """Torch's ``LambdaLR`` setting every group's lr to ``base_lr * schedule(step)``.

    Call its ``step()`` once per outer (meta-training) step. A :class:`Learned` schedule is
    refused: its multipliers are meta-parameters of an inner loop (wrap the rule in a
    :class:`ScheduledRule`), not values a torch scheduler can follow.
    """
    if isinstance(schedule, Learned):
        raise ValueError(
            f"schedule_optimizer needs a fixed schedule, got {schedule.describe()}; learned multipliers "
            "are inner-loop meta-parameters: wrap the rule in ScheduledRule(rule, schedule) instead"
        )
    if isinstance(schedule, nn.Module) or not callable(schedule):
        raise ValueError(
            f"schedule_optimizer needs a fixed schedule mapping a step to a multiplier, got {_shown(schedule)}"
        )
    return LambdaLR(optimizer, lr_lambda=schedule)
