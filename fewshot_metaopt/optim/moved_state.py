"""The state that belongs to parameters, brought along when they move (``.to(device, dtype)``).

``nn.Module.to`` moves a module's parameters and buffers, but an optimizer's moments, a
learned optimizer's recurrent state or a replay buffer of weights live elsewhere and would stay
behind: the next step would mix devices or dtypes. The learner's and the learned optimizer's
``to`` bring them along with these helpers.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor


def follow_parameters(optimizer: torch.optim.Optimizer, before: Sequence[Tensor], after: Sequence[Tensor]) -> None:
    """Point ``optimizer`` at ``after``, the parameters ``before`` became when they were moved
    or cast, and move its state to them.

    ``nn.Module.to`` keeps the parameter objects where it can and makes new ones where it
    cannot (tensor types that cannot share a storage, or
    ``torch.__future__.set_overwrite_module_params_on_conversion(True)``); either way the
    optimizer then holds what the modules hold. ``Optimizer.load_state_dict`` casts each
    parameter's state to its device and dtype (step counts stay as they are).
    """
    if len(before) != len(after):
        raise ValueError(f"follow_parameters needs as many parameters after the move as before, got "
                         f"{len(after)} and {len(before)}")
    moved = {id(old): new for old, new in zip(before, after)}
    state = optimizer.state_dict()
    for group in optimizer.param_groups:
        group["params"] = [moved.get(id(p), p) for p in group["params"]]
    optimizer.load_state_dict(state)


def mapped_tree(fn: Callable[[Tensor], Tensor], tree: Any) -> Any:
    """The same nested structure (dicts, lists, tuples, NamedTuples, dataclasses) with ``fn``
    applied to every tensor, e.g. to move a recurrent state or a replay buffer's points."""
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {key: mapped_tree(fn, value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        items = [mapped_tree(fn, value) for value in tree]
        return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)
    if hasattr(tree, "__dataclass_fields__"):
        return type(tree)(**{name: mapped_tree(fn, getattr(tree, name)) for name in tree.__dataclass_fields__})
    return tree


def placed_like(reference: Tensor) -> Callable[[Tensor], Tensor]:
    """A tensor on ``reference``'s device, and in its dtype when floating point (labels and
    counters keep theirs)."""

    def place(tensor: Tensor) -> Tensor:
        return tensor.to(device=reference.device, dtype=reference.dtype if tensor.is_floating_point() else None)

    return place
