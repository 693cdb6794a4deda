"""The update played by nonstochastic-control meta-optimization (Chen & Hazan 2023, "Online
Control for Meta-optimization"; reference code: ``make_jax_metaopt`` in
``meta_opt/optimizers/metaopt.py`` of the public JAX implementation ``edogariu/meta_opt``, July
2024; docs/torch_optim.md compares the two).

All parameters are handled as one flat vector ``theta`` of ``P`` coordinates (the
concatenation of the tensors in order). With gradient ``g_t``::

    w_t      = rescale(clip(g_t))                   the disturbance: clip elementwise to
                                                    [-grad_clip, grad_clip], then (by default)
                                                    Adam's m_hat / (sqrt(v_hat) + eps)
    theta'   = theta - wd * theta - lr * w_t + sum_{i<H} M_i w_{t-i}

as in the reference, whose weight decay is decoupled and stays out of the disturbance (an
older version of that code, ``jax_meta_opt``, added it to the gradient before rescaling).
``M`` starts at zero, where the rule is ``torch.optim.AdamW(lr, betas, eps, weight_decay=wd /
lr)`` (with ``adam_betas=None``: ``torch.optim.SGD(lr, weight_decay=wd / lr)``). ``M`` is
``(H,)`` (``"scalar"``: one number per history slot), ``(H, P)`` (``"diagonal"``) or ``(H, P, P)``
(``"full"``, refused above ``FULL_M_LIMIT`` numbers); ``M_0`` multiplies the newest
disturbance (the reference indexes the other way round). It is an ``nn.Parameter`` of the
rule, learned by counterfactual rollouts
(:mod:`fewshot_metaopt.torch_optim.counterfactual_replay`) or by any outer loop.

The state keeps the last ``H + HH - 1`` disturbances, newest first (``H + HH`` with
``replay="reference"``): the update reads the first ``H``; the others let a replay of the last
``HH`` steps see the windows those steps are replayed with. :meth:`ControlRule.play` is the
one formula both the update and the replay use.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from ... import checks
from .adam import AdamRule
from .base import Params, UpdateRule
from .preprocess import check_grads

M_SHAPES = ("scalar", "diagonal", "full")
# "exact": a replay with M unchanged is the played trajectory; "reference": the authors' code,
# whose replays read windows one step older and continue the rescaler from its current state.
REPLAYS = ("exact", "reference")
FULL_M_LIMIT = 2**24  # numbers in a full M (64 MiB in float32): H * P^2 grows past any GPU fast
FLAT = "w"  # the name the disturbance rescaler (an AdamRule) keys its one flat tensor by


class ControlState(NamedTuple):
    """Recent disturbances (``H + HH - 1`` rows of ``P``, one more for ``replay="reference"``),
    newest first; the rescaler's state (or None)."""

    history: Tensor
    rescaler: Any


class ControlRule(UpdateRule):
    """The control update (see the module docstring).

    Args:
        shapes: the parameters' names and shapes, in the order they are flattened.
        lr: the base step on the disturbance. weight_decay: per-step decoupled decay.
        history: ``H``, disturbances the control reads. rollout: ``HH``, steps a replay
            repeats (``1 <= HH <= H``).
        m_shape: ``scalar``, ``diagonal`` or ``full``.
        grad_clip: clip gradients elementwise before they become disturbances (``None``: off).
        adam_betas: rescale disturbances as Adam does, with these betas (``None``: off, the
            disturbance is the gradient). eps: Adam's epsilon when rescaling.
        replay: ``exact`` or ``reference``, how counterfactual replays read the history (see
            :mod:`~fewshot_metaopt.torch_optim.counterfactual_replay`); ``reference`` keeps
            one more disturbance.
        check_finite: raise on NaN/Inf gradients.
    """

    def __init__(
        self,
        shapes: Mapping[str, Sequence[int]],
        lr: float = 0.1,
        weight_decay: float = 1e-4,
        history: int = 16,
        rollout: int = 2,
        m_shape: str = "scalar",
        grad_clip: float | None = None,
        adam_betas: tuple[float, float] | None = (0.9, 0.999),
        eps: float = 1e-8,
        replay: str = "exact",
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        owner = "ControlRule"
        self.lr = checks.positive("lr", lr, owner=owner)
        self.weight_decay = checks.real("weight_decay", weight_decay, 0.0, 1.0, owner=owner)
        self.history = checks.integer("history (H)", history, 1, owner=owner)
        self.rollout = checks.integer("rollout (HH)", rollout, 1, owner=owner)
        if self.rollout > self.history:
            raise ValueError(f"ControlRule needs rollout (HH) <= history (H), got HH={rollout} and H={history}")
        if m_shape not in M_SHAPES:
            raise ValueError(f"unknown ControlRule m_shape {m_shape!r}; choose one of {', '.join(M_SHAPES)}")
        self.m_shape = m_shape
        if replay not in REPLAYS:
            raise ValueError(f"unknown ControlRule replay {replay!r}; choose one of {', '.join(REPLAYS)}")
        self.replay = replay
        self.grad_clip = checks.optional_positive("grad_clip", grad_clip, owner=owner)
        self.names = list(shapes)
        if not self.names:
            raise ValueError("ControlRule got no parameters")
        self.shapes = {name: torch.Size(shape) for name, shape in shapes.items()}
        self.sizes = [self.shapes[n].numel() for n in self.names]
        size = sum(self.sizes)
        m_dims = {"scalar": (self.history,), "diagonal": (self.history, size), "full": (self.history, size, size)}
        dims = m_dims[m_shape]
        if math.prod(dims) > FULL_M_LIMIT:
            raise ValueError(
                f"a full M for {size} coordinates and H={self.history} holds {math.prod(dims)} numbers, over the "
                f"limit of {FULL_M_LIMIT}; use m_shape='diagonal' or 'scalar'"
            )
        self.M = nn.Parameter(torch.zeros(dims))
        self.rescaler = None
        if adam_betas is not None:
            if len(adam_betas) != 2:
                raise ValueError(f"ControlRule adam_betas must be a pair, got {tuple(adam_betas)}")
            self.rescaler = AdamRule(lr=1.0, betas=tuple(adam_betas), eps=eps, check_finite=False)
        self.check_finite = check_finite

    # ------------------------------------------------------------------------- flat views

    def flatten(self, tensors: Params, like: Tensor | None = None) -> Tensor:
        """One vector of all tensors in order; a missing name contributes zeros (no gradient)."""
        like = like if like is not None else next(iter(tensors.values()))
        parts = [
            tensors[n].reshape(-1) if n in tensors else like.new_zeros(size) for n, size in zip(self.names, self.sizes)
        ]
        return torch.cat(parts)

    def unflatten(self, flat: Tensor) -> Params:
        return {n: part.reshape(self.shapes[n]) for n, part in zip(self.names, torch.split(flat, self.sizes))}

    # ------------------------------------------------------------------------- the update

    def init(self, params: Params) -> ControlState:
        like = self.flatten(params)
        rows = self.history + self.rollout - (self.replay == "exact")
        history = like.new_zeros(rows, like.numel())
        rescaler = self.rescaler.init({FLAT: torch.zeros_like(like)}) if self.rescaler is not None else None
        return ControlState(history, rescaler)

    def disturbance(self, grad: Tensor, rescaler: Any) -> tuple[Tensor, Any]:
        """``w`` from a flat gradient, and the rescaler's next state."""
        if self.grad_clip is not None:
            grad = grad.clamp(-self.grad_clip, self.grad_clip)
        if self.rescaler is None:
            return grad, rescaler
        # From zero, one step of Adam with lr 1 is exactly minus its normalised direction.
        moved, rescaler = self.rescaler.update({FLAT: torch.zeros_like(grad)}, {FLAT: grad}, rescaler, 0)
        return -moved[FLAT], rescaler

    def control(self, window: Tensor) -> Tensor:
        """``sum_i M_i w_{t-i}`` for a ``(H, P)`` window, newest first."""
        M = self.M.to(window.dtype)
        if self.m_shape == "scalar":
            return torch.einsum("h,hp->p", M, window)
        if self.m_shape == "diagonal":
            return torch.einsum("hp,hp->p", M, window)
        return torch.einsum("hqp,hp->q", M, window)

    def play(self, theta: Tensor, disturbance: Tensor, window: Tensor) -> Tensor:
        """The one formula: ``theta - wd theta - lr w + sum_i M_i window_i``."""
        return theta - self.weight_decay * theta - self.lr * disturbance + self.control(window)

    def update(
        self, params: Params, grads: Params, state: ControlState, step: int, loss: Tensor | None = None
    ) -> tuple[Params, ControlState]:
        check_grads(params, grads, self.check_finite)
        theta = self.flatten(params)
        grad = self.flatten(grads, like=theta)
        disturbance, rescaler = self.disturbance(grad, state.rescaler)
        history = torch.cat([disturbance[None], state.history[:-1]])
        moved = self.unflatten(self.play(theta, disturbance, history[: self.history]))
        # The contract: a parameter without a gradient keeps its value.
        new = {name: moved[name] if name in grads else params[name] for name in params}
        return new, ControlState(history, rescaler)
