"""Building settings dataclasses from plain dicts (task files, keyword overrides)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

from .checks import closest

T = TypeVar("T")


def unknown_key_message(kind: str, unknown: list[str], known: set[str], source: str) -> str:
    """One line naming every unknown key and the known one each most likely meant; the known
    keys are listed only when some unknown key resembles none of them."""
    guesses = {name: closest(name, known) for name in unknown}
    message = f"unknown {kind} key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in {source}"
    meant = [(name, guess) for name, guess in guesses.items() if guess is not None]
    if len(unknown) == 1 and meant:
        message += f"; did you mean {meant[0][1]!r}?"
    elif meant:
        message += f"; did you mean {', '.join(f'{guess!r} for {name!r}' for name, guess in meant)}?"
    if len(meant) < len(unknown):
        message += f"{' known' if meant else '; known'}: {', '.join(sorted(known))}"
    return message


def from_mapping(cls: type[T], values: dict[str, Any], source: str, kind: str) -> T:
    """``cls(**values)``, but unknown keys are a one-line error naming each of them, ``source``
    and the known key each most likely meant."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(unknown_key_message(kind, unknown, known, source))
    return cls(**values)
