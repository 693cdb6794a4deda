"""Nested containers of tensors (rule states, parameter dicts)."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def detached_tree(tree: Any) -> Any:
    """The same nested structure (dicts, lists, tuples, NamedTuples, dataclasses) with every
    tensor detached: the end of a BPTT window, or a point stored for later replay."""
    if isinstance(tree, Tensor):
        return tree.detach()
    if isinstance(tree, dict):
        return {k: detached_tree(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        items = [detached_tree(v) for v in tree]
        return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)
    if hasattr(tree, "__dataclass_fields__"):
        return type(tree)(**{f: detached_tree(getattr(tree, f)) for f in tree.__dataclass_fields__})
    return tree
