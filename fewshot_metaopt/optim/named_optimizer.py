"""What the seed optimizers share as ``torch.optim.Optimizer`` classes.

Each one drives a pure update rule over *named* parameters (rules key their state by name),
and learns something of its own (a network, a tape, control matrices) that torch's per-parameter
``state`` cannot hold. So this base class keeps one parameter group whose names travel in
``param_groups[0]["param_names"]`` (torch's own key, filled here for every torch version), and
saves everything else under one extra key of :meth:`state_dict`, deep-copied, so a checkpoint
is a snapshot even of tensors the optimizer later updates in place. Hyperparameters are fixed
at construction and stored with the checkpoint; loading one saved with other hyperparameters is
an error naming the first that differs.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor, nn

from .rules.base import Params

EXTRA = "seed_optimizer"


def named_tensors(params: Any, owner: str) -> list[tuple[str, Tensor]]:
    """``(name, tensor)`` pairs from a module, from such pairs, or from bare tensors (named
    ``"0"``, ``"1"``, ...). One group only: a list of group dicts is refused."""
    if isinstance(params, nn.Module):
        named = list(params.named_parameters())
    elif isinstance(params, Tensor):
        raise ValueError(f"{owner} takes an iterable of parameters or a module, got a single tensor")
    else:
        items = list(params)
        if any(isinstance(item, Mapping) for item in items):
            raise ValueError(f"{owner} takes one group of parameters, not parameter-group dicts")
        if all(isinstance(item, tuple) and len(item) == 2 for item in items):
            named = [(str(name), tensor) for name, tensor in items]
        else:
            named = [(str(i), tensor) for i, tensor in enumerate(items)]
    if not named:
        raise ValueError(f"{owner} got no parameters to optimise")
    for name, tensor in named:
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{owner}: parameter {name!r} is a {type(tensor).__name__}, not a tensor")
    names = [name for name, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"{owner}: parameter names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    if len({id(t) for _, t in named}) != len(named):
        raise ValueError(f"{owner}: the same tensor is given twice")
    return named


class NamedOptimizer(torch.optim.Optimizer):
    """One group of named parameters driven by a rule; subclasses define ``step``,
    :meth:`hyperparameters`, :meth:`extra_state` and :meth:`load_extra_state`."""

    def __init__(self, params: Iterable[Any] | nn.Module, owner: str) -> None:
        named = named_tensors(params, owner)
        group = {"params": [t for _, t in named], "param_names": [n for n, _ in named]}
        super().__init__([group], defaults={})
        self.owner = owner
        self.steps_taken = 0

    # ------------------------------------------------------------------------- parameters

    def named_params(self) -> Params:
        group = self.param_groups[0]
        return dict(zip(group["param_names"], group["params"]))

    def gradients(self) -> Params:
        """The ``.grad`` of every parameter that has one (the others are skipped, as
        ``torch.optim`` skips them)."""
        return {name: p.grad for name, p in self.named_params().items() if p.grad is not None}

    @torch.no_grad()
    def write(self, new: Params) -> None:
        """Copy the rule's new values into the parameters, in place (the model keeps them)."""
        for name, p in self.named_params().items():
            if name in new:
                p.copy_(new[name])

    def checked_loss(self, loss: Any) -> Tensor:
        """The loss, detached, or a one-line ``ValueError`` naming a non-scalar or non-finite value."""
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"{self.owner}: the loss must be a one-element tensor, got {_shown(loss)}")
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ValueError(f"{self.owner}: the loss is {value} at step {self.steps_taken}")
        return loss.detach().reshape(())

    # ------------------------------------------------------------------------- saving

    def hyperparameters(self) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover - each optimizer defines it

    def extra_state(self) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover - each optimizer defines it

    def load_extra_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError  # pragma: no cover - each optimizer defines it

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        extra = {"hyperparameters": self.hyperparameters(), "steps_taken": self.steps_taken}
        extra.update(self.extra_state())
        state[EXTRA] = copy.deepcopy(extra)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if EXTRA not in state_dict:
            raise ValueError(f"{self.owner}: this state dict was not saved by a {self.owner}")
        state_dict = dict(state_dict)
        extra = copy.deepcopy(state_dict.pop(EXTRA))
        mine = self.hyperparameters()
        for key, value in extra["hyperparameters"].items():
            if mine.get(key) != value:
                raise ValueError(
                    f"{self.owner}: the state was saved with {key}={value!r}, this optimizer has {key}={mine.get(key)!r}"
                )
        super().load_state_dict(state_dict)
        self.steps_taken = int(extra["steps_taken"])
        self.load_extra_state(extra)


def _shown(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__
