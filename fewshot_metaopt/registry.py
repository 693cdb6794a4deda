"""Name -> builder tables: one per kind of thing a config names (rules, models, schedules,
algorithms, outer optimizers). A name's error lists the choices from the table itself, so
adding an entry is one registration line and the error message follows."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .checks import choose

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name, in registration order; ``kind`` names them in errors (``"model"``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None):
        """``registry.register("name", entry)``, or ``@registry.register("name")`` on a builder."""
        if entry is None:
            def decorate(builder):
                self.register(name, builder)
                return builder
            return decorate
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def __getitem__(self, name: str) -> T:
        choose(self.kind, name, self.names())
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def build(self, name: str, *args, **kwargs):
        """``self[name](*args, **kwargs)`` for registries of builders."""
        builder: Callable = self[name]  # type: ignore[assignment]
        return builder(*args, **kwargs)
