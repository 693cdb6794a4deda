"""The one way values are checked: every bad value is a one-line :class:`ConfigError` that
names the value, what was expected and (through ``key``) where it was set.

Two spellings share these checks: a config key is named on its own (``train.minutes must be
positive, got -1``), an argument of a constructor after its owner (``Warmup needs an integer
steps >= 1, got 0``). Every number is checked for finiteness first: a NaN compares false with
every bound, so a range check alone would let it through.
"""

from __future__ import annotations

import difflib
import math
import numbers
import operator
from typing import Any, Iterable


class ConfigError(ValueError):
    """A bad value of one setting; ``key`` is its name (dotted for task files), so a loader can
    say where it was set."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)


def _fail(key: str, owner: str | None, expected: str, value: Any) -> ConfigError:
    if owner is None:
        return ConfigError(key, f"{key} must be {expected}, got {value!r}")
    return ConfigError(key, f"{owner} needs {expected.replace('KEY', key)}, got {value!r}")


def closest(value: Any, options: Iterable[str]) -> str | None:
    """The one of ``options`` a mistyped ``value`` most likely meant, or None when none is close
    (difflib's similarity ratio of at least 0.6, the cut-off at which a typo still reads as one)."""
    matches = difflib.get_close_matches(str(value), list(options), n=1, cutoff=0.6)
    return matches[0] if matches else None


def choose(key: str, value: Any, options: Iterable[str]) -> str:
    """``value`` if it is one of ``options``."""
    options = tuple(options)
    if value not in options:
        hint = closest(value, options) if isinstance(value, str) else None
        meant = "" if hint is None else f"; did you mean {hint!r}?"
        raise ConfigError(key, f"unknown {key} {value!r}; choose one of {', '.join(options)}{meant}")
    return value


def integer(key: str, value: Any, least: int | None = None, owner: str | None = None) -> int:
    """An int (booleans refused) of at least ``least``."""
    bound = "" if least is None else f" >= {least}"
    expected = f"an integer KEY{bound}" if owner else f"an integer{bound}"
    if isinstance(value, bool):
        raise _fail(key, owner, expected, value)
    try:
        number = operator.index(value)
    except TypeError:
        raise _fail(key, owner, expected, value) from None
    if least is not None and number < least:
        raise _fail(key, owner, expected, value)
    return number


def real(key: str, value: Any, low: float = -math.inf, high: float = math.inf, owner: str | None = None) -> float:
    """A finite number in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(key, owner, "a finite number KEY" if owner else "finite", value)
    if not low <= value <= high:
        raise _fail(key, owner, f"KEY in [{low}, {high}]" if owner else f"in [{low}, {high}]", value)
    return float(value)


def positive(key: str, value: Any, owner: str | None = None) -> float:
    """A finite number above zero."""
    value = real(key, value, owner=owner)
    if value <= 0:
        raise _fail(key, owner, "a positive KEY" if owner else "positive", value)
    return value


def optional_positive(key: str, value: Any, owner: str | None = None) -> float | None:
    """``None`` (the feature is off) or a positive number."""
    return None if value is None else positive(key, value, owner)


def at_least(key: str, value: Any, least: float) -> None:
    """``None`` (unset), or a finite number of at least ``least``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(key, f"{key} must be a number >= {least}, got {value!r}")
    if not math.isfinite(value):
        # inf passes the bound, NaN fails it for no reason a reader would see.
        raise ConfigError(key, f"{key} must be >= {least} and finite, got {value}")
    if not value >= least:
        raise ConfigError(key, f"{key} must be >= {least}, got {value}")
