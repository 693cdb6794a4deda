"""Which inner step a forward pass belongs to, for the layers that keep something per step.

A network is called by the inner loop with the weights of step 0, 1, ... and on the query set
after the last step. Most layers do not care; MAML++'s per-step batch norm (:mod:`.batch_norm`)
keeps statistics, weights and biases per step, and DropBlock (:mod:`.drop_block`) drops
nothing while a task is adapted to be scored. The engines say where a call stands with
:func:`inner_step` around it (``fmodel(x)`` of an adapted model does it for the step it ended
at); a layer reads :func:`current_inner_step`. Whether a task is adapted to be scored is the
caller's to say, with :func:`scoring` around the inner loop (``learner.adapt`` and so
``learner.evaluate`` do): an inner loop without a graph is no sign of it, since Reptile and
iMAML meta-train through such loops. A context variable rather than a forward
argument, so that every network keeps the plain ``model(x)`` signature the engines, higher
and ``torch.func.functional_call`` call.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class InnerStep:
    """``step``: the inner step whose weights the call runs (the support pass of step ``k``
    and the query pass after it are both step ``k``, as in MAML++). ``evaluating``: the task is
    adapted to be scored (``learner.evaluate``, ``learner.adapt``; see :func:`scoring`), not
    meta-trained on."""

    step: int = 0
    evaluating: bool = False


_CURRENT: ContextVar[InnerStep] = ContextVar("inner_step", default=InnerStep())


@contextmanager
def inner_step(step: int, evaluating: bool = False) -> Iterator[InnerStep]:
    """Calls inside the block belong to inner step ``step`` (outside any: step 0, meta-training)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"inner_step needs an integer step >= 0, got {step!r}")
    now = InnerStep(step, bool(evaluating))
    token = _CURRENT.set(now)
    try:
        yield now
    finally:
        _CURRENT.reset(token)


def current_inner_step() -> InnerStep:
    return _CURRENT.get()


@contextmanager
def scoring() -> Iterator[InnerStep]:
    """Inner loops run inside the block adapt tasks to be scored (``evaluating``); the adapted
    models they return keep scoring after it."""
    with inner_step(current_inner_step().step, evaluating=True) as now:
        yield now
