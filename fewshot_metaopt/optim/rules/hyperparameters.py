"""Checks of the seed optimizers' hyperparameters: each bad value is a one-line ``ValueError``
naming the owner, the hyperparameter and the value (built on the schedules' checks)."""

from __future__ import annotations

from typing import Any

from ..schedules import _integer, _real


def real(owner: str, name: str, value: Any, low: float, high: float) -> float:
    """A finite number in ``[low, high]``."""
    return _real(owner, name, value, low, high)


def positive(owner: str, name: str, value: Any) -> float:
    """A finite number above zero."""
    value = _real(owner, name, value)
    if value <= 0:
        raise ValueError(f"{owner} needs a positive {name}, got {value!r}")
    return value


def integer(owner: str, name: str, value: Any, least: int) -> int:
    """An integer of at least ``least`` (booleans refused)."""
    return _integer(owner, name, value, least)


def optional_positive(owner: str, name: str, value: Any) -> float | None:
    """``None`` (the feature is off) or a positive number."""
    return None if value is None else positive(owner, name, value)
