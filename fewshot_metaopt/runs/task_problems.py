"""Reporting what is wrong with a task: every problem at once, each with the key it most
likely meant.

A task file is checked key by key and section by section, and each problem found is noted
rather than raised, so that a file with three bad keys is fixed in one round instead of
three. A misspelt key is answered with the key it most likely meant (``did you mean
learner.inner_lr?``): the closest key of its own section, else the key of that name (or the
closest) in another section, since a key written under the wrong table is the other common
slip.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Mapping

from ..checks import closest
from .errors import TaskErrors


class Problems:
    """The problems found in one task so far, each one line naming the key and where it was set."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.blamed: set[str] = set()

    def add(self, line: str, key: str | None = None) -> None:
        """Note ``line``; with ``key``, only the first problem found with that key is kept
        (a later check of the same key would say the same fault again)."""
        if line in self.lines or (key is not None and key in self.blamed):
            return
        self.lines.append(line)
        if key is not None:
            self.blamed.add(key)

    def __bool__(self) -> bool:
        return bool(self.lines)

    def raise_any(self) -> None:
        """Raise :class:`TaskErrors` with every problem, if there is one."""
        if self.lines:
            raise TaskErrors(self.lines)


def _keys(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def meant_key(dotted: str, sections: Mapping[str, type], top: type) -> str | None:
    """The key a mistyped ``dotted`` key most likely meant (``learner.inner_lr``, ``seed`` or a
    table, ``[train]``), or None when no key is close. ``sections`` maps each table's name to
    its settings class, in the order a reader would look through them; ``top`` holds the keys
    outside any table."""
    section, dot, name = dotted.partition(".")
    if not dot:
        name = section
        for table, cls in sections.items():  # a key written above its table's header
            if name in _keys(cls):
                return f"{table}.{name}"
        guess = closest(name, _keys(top))
        if guess is not None:
            return guess
        table = closest(name, sections)
        return None if table is None else f"[{table}]"
    if "." in name:
        return None
    if section not in sections:
        table = closest(section, sections)
        if table is None:
            return None
        guess = name if name in _keys(sections[table]) else closest(name, _keys(sections[table]))
        return None if guess is None else f"{table}.{guess}"
    guess = closest(name, _keys(sections[section]))
    if guess is not None:
        return f"{section}.{guess}"
    others = {table: _keys(cls) for table, cls in sections.items() if table != section}
    for table, names in others.items():
        if name in names:
            return f"{table}.{name}"
    for table, names in others.items():
        guess = closest(name, names)
        if guess is not None:
            return f"{table}.{guess}"
    return None
