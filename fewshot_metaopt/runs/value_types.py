"""Checking a task-file value against the type a settings field declares.

TOML gives ints, floats, bools, strings and arrays; settings declare ``int``, ``float``,
``bool``, ``str``, ``list[int]`` and their ``X | None`` forms (``None``: leave the key out).
An int where a float is wanted is taken as that float (``inner_lr = 1`` means 1.0); a bool is
never taken as a number, though Python would allow it.
"""

from __future__ import annotations

import types
import typing
from typing import Any


class WrongType(ValueError):
    """``value`` does not have the declared type; the message says what was expected."""


def describe(hint: Any) -> str:
    """``int``, ``a list of int``, ... as a reader of a task file would say it."""
    if typing.get_origin(hint) in (list, tuple):
        return f"a list of {describe(typing.get_args(hint)[0])}"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _is_optional(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    return origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def coerce(value: Any, hint: Any) -> Any:
    """``value`` as the declared type, or :class:`WrongType`."""
    if _is_optional(hint):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return coerce(value, inner)
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise WrongType(describe(hint))
        item = typing.get_args(hint)[0]
        try:
            return [coerce(v, item) for v in value]
        except WrongType:
            raise WrongType(describe(hint)) from None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (bool, int, float, str) and type(value) is hint:
        return value
    raise WrongType(describe(hint))
