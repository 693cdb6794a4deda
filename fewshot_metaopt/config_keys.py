"""Building settings dataclasses from plain dicts (task files, keyword overrides)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def from_mapping(cls: type[T], values: dict[str, Any], source: str, kind: str) -> T:
    """``cls(**values)``, but an unknown key is a one-line error naming it, ``source`` and the known keys."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {kind} key {unknown[0]!r} in {source}; known: {', '.join(sorted(known))}")
    return cls(**values)
