"""What the Adam, LSTM and L2O rules share: input checks, gradient preprocessing, state size.

* :func:`check_grads` — every rule's bad-input check: a gradient for an unknown parameter, of
  another shape than its parameter, or (``check_finite``) holding NaN/Inf is a one-line
  ``ValueError`` naming the parameter. The finiteness test costs one device sync per step
  (all tensors reduced together); it is skipped for ``meta`` tensors (no values) and under
  ``torch.func.vmap`` (no data-dependent control flow there), and rules switch it off with
  ``check_finite=False``.
* :func:`check_init` — the learned rules' ``init`` choice: ``descent`` (the untrained rule is a
  hand-designed descent method and meta-training learns corrections) or ``random`` (the papers'
  random initialisation).
* :func:`log_sign_preprocess` — Andrychowicz et al. (2016, appendix A) gradient preprocessing.
* :func:`safe_sqrt` — a square root whose derivative at 0 is 0 instead of ``inf`` (``inf * 0``
  would turn the meta-gradient of a coordinate that never saw a gradient into NaN).
* :func:`state_bytes` — bytes held by the tensors of a rule's state (the memory overhead of a
  learned optimizer, measured against the base model's parameters).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import Tensor

from .base import Params

_functorch = torch._C._functorch


def _has_values(t: Tensor) -> bool:
    """False for tensors whose values cannot be read here: ``meta`` tensors, vmapped tensors."""
    return t.device.type != "meta" and not _functorch.is_batchedtensor(t)


def check_grads(params: Params, grads: Params, check_finite: bool = True) -> None:
    """Raise a one-line ``ValueError`` naming the first parameter whose gradient is unusable."""
    for name, g in grads.items():
        if name not in params:
            raise ValueError(f"got a gradient for {name!r}, which is not among the parameters")
        if g.shape != params[name].shape:
            raise ValueError(
                f"gradient of {name!r} has shape {tuple(g.shape)} but the parameter has {tuple(params[name].shape)}"
            )
    if not check_finite:
        return
    checked = [(n, g) for n, g in grads.items() if _has_values(g)]
    if not checked:
        return
    finite = torch.stack([torch.isfinite(g).all() for _, g in checked])
    if not bool(finite.all()):
        bad = next(n for (n, _), ok in zip(checked, finite.tolist()) if not ok)
        raise ValueError(f"gradient of {bad!r} has non-finite values (NaN or Inf)")


RULE_INITS = ("descent", "random")


def check_init(init: str, lr: float, lr_name: str = "init_lr") -> None:
    if init not in RULE_INITS:
        raise ValueError(f"unknown rule init {init!r}; choose one of {', '.join(RULE_INITS)}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"{lr_name} must be positive and finite, got {lr}")


def log_sign_preprocess(g: Tensor, p: float = 10.0) -> Tensor:
    """Andrychowicz et al. 2016: ``(log|g| / p, sign g)`` if ``|g| >= e^-p`` else ``(-1, e^p g)``.

    Returns ``g``'s shape plus a trailing axis of 2. Both components are continuous in ``g``
    (at ``|g| = e^-p`` both branches give ``(-1, ±1)``), and the log never sees 0, so the
    derivative stays finite everywhere (the rules' ``second_order=True`` needs it).
    """
    magnitude = g.abs()
    big = magnitude >= math.exp(-p)
    log_part = torch.log(torch.where(big, magnitude, torch.ones_like(magnitude))) / p
    first = torch.where(big, log_part, torch.full_like(g, -1.0))
    second = torch.where(big, torch.sign(g), g * math.exp(p))
    return torch.stack([first, second], dim=-1)


def log_sign_clamped(g: Tensor, p: float = 10.0) -> tuple[Tensor, Tensor]:
    """:func:`log_sign_preprocess`'s two components written as clamps, ``max(log|g| / p, -1)``
    and ``clamp(e^p g, -1, 1)`` (equal values: each branch of the original is the clamp's
    active side), which a fused kernel evaluates without masks. Its derivative at ``g = 0`` is
    not finite, so it is for steps without autograd only."""
    return torch.clamp_min(torch.log(g.abs()) / p, -1.0), torch.clamp(g * math.exp(p), -1.0, 1.0)


def safe_sqrt(x: Tensor) -> Tensor:
    """``sqrt(x)`` for ``x >= 0`` with derivative 0 (not ``inf``) where ``x == 0``."""
    positive = x > 0
    root = torch.sqrt(torch.where(positive, x, torch.ones_like(x)))
    return torch.where(positive, root, torch.zeros_like(x))


def state_bytes(state: Any) -> int:
    """Bytes held by every tensor in ``state`` (nested dicts, lists, tuples and NamedTuples);
    a tensor reached twice counts once. Meta tensors count as if they were real."""
    seen: set[int] = set()

    def walk(x: Any) -> int:
        if isinstance(x, Tensor):
            if id(x) in seen:
                return 0
            seen.add(id(x))
            return x.numel() * x.element_size()
        if isinstance(x, Mapping):
            return sum(walk(v) for v in x.values())
        if isinstance(x, (list, tuple)):
            return sum(walk(v) for v in x)
        return 0

    return walk(state)


def param_bytes(params: Params) -> int:
    """Bytes of the parameters themselves (the denominator of a state-overhead ratio)."""
    return sum(p.numel() * p.element_size() for p in params.values())


def effective_lr(update: Tensor, grad: Tensor) -> Tensor:
    """``mean|update| / mean|grad|`` of one step, detached: what an SGD step would need as its
    learning rate to move the tensor as far (``nan``/``inf`` when the gradient is all zero)."""
    update, grad = update.detach(), grad.detach()
    return update.abs().mean() / grad.abs().mean()


def record_effective_lr(records: dict[str, Tensor], name: str, update: Tensor, grad: Tensor) -> None:
    """Store :func:`effective_lr` under ``name`` unless the tensors are ``meta`` or live inside
    a ``torch.func`` transform (they must not escape it); the ratio stays a tensor, so
    recording costs no device sync."""
    if all(t.device.type != "meta" and not _functorch.is_functorch_wrapped_tensor(t) for t in (update, grad)):
        records[name] = effective_lr(update, grad)


def records_to_floats(records: Mapping[str, Tensor]) -> dict[str, float]:
    return {name: float(value) for name, value in records.items()}
