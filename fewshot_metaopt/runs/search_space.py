"""A task file's ``[search]`` table: the keys a hyperparameter search varies, and over what.

::

    [search]
    learner.inner_lr = { log_uniform = [0.01, 1.0] }
    learner.inner_steps = { int = [1, 5] }
    learner.algorithm = { choice = ["maml", "meta_sgd"] }
    model.hidden_layers = { choice = [[40, 40], [80, 80]] }

Each entry names a task key (``section.name``, as ``--set`` does) and one distribution from
:data:`KINDS`. The table is read and checked with the rest of the file, so a bad entry is a
one-line error naming its key. ``fewshot-metaopt train`` trains the values the sections set and
ignores the table; ``fewshot-metaopt tune`` draws each trial's values from it.

Values are drawn through any object with Optuna's ``suggest_float``, ``suggest_int`` and
``suggest_categorical`` (an ``optuna.Trial``, or ``optuna.trial.FixedTrial`` to replay a
trial's parameters), so this module never imports Optuna, which is an optional extra.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator, Mapping

from ..checks import ConfigError
from ..registry import Registry
from .toml_writer import toml_value
from .value_types import WrongType, coerce, describe

SEARCH = "search"
EXAMPLE = "{ log_uniform = [0.01, 1.0] }"


def _fail(key: str, message: str) -> ConfigError:
    return ConfigError(f"{SEARCH}.{key}", f"[{SEARCH}] {key}: {message}")


def _plain(hint: Any) -> Any:
    """``X`` of ``X | None``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return inner
    return hint


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def choice_label(value: Any) -> Any:
    """What a searcher stores for a choice: the value itself when it is a scalar, its TOML text
    when it is a list (Optuna's categorical values are scalars)."""
    return toml_value(value) if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class Range:
    """``uniform``, ``log_uniform``, ``int`` or ``log_int``: ``low`` to ``high``, both included."""

    key: str
    kind: str
    low: float | int
    high: float | int
    integer: bool
    log: bool

    def suggest(self, trial: Any) -> float | int:
        if self.integer:
            return trial.suggest_int(self.key, self.low, self.high, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def probes(self) -> tuple[tuple[str, Any], ...]:
        return (("its low end", self.low), ("its high end", self.high))

    def spec(self) -> dict[str, list]:
        return {self.kind: [self.low, self.high]}


@dataclass(frozen=True)
class Choice:
    """``choice``: one of ``choices`` (any values the key takes, lists included)."""

    key: str
    choices: tuple[Any, ...]
    kind: str = "choice"

    def suggest(self, trial: Any) -> Any:
        labels = [choice_label(c) for c in self.choices]
        return self.choices[labels.index(trial.suggest_categorical(self.key, labels))]

    def probes(self) -> tuple[tuple[str, Any], ...]:
        return tuple((f"choice {choice_label(c)!r}", c) for c in self.choices)

    def spec(self) -> dict[str, list]:
        return {self.kind: list(self.choices)}


Dimension = typing.Union[Range, Choice]


# What to write for a key of each type a range may draw (any other type takes a choice).
RANGES_FOR = {int: "int = [low, high] or log_int", float: "uniform = [low, high] or log_uniform"}


def _range(kind: str, integer: bool, log: bool) -> Callable[[str, Any, Any], Range]:
    def parse(key: str, bounds: Any, hint: Any) -> Range:
        takes = _plain(hint)
        if takes is not (int if integer else float):
            other = RANGES_FOR.get(takes, "choice = [...]")
            raise _fail(key, f"{kind} draws {'integers' if integer else 'numbers'}, but {key} takes "
                             f"{describe(takes)}; use {other}")
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(map(_number, bounds))):
            raise _fail(key, f"{kind} needs [low, high], two numbers, got {bounds!r}")
        low, high = bounds
        if integer and not all(isinstance(b, int) for b in bounds):
            raise _fail(key, f"{kind} needs integer bounds, got {bounds!r}")
        if not all(math.isfinite(b) for b in bounds) or not low < high:
            raise _fail(key, f"{kind} needs finite bounds with low < high, got {bounds!r}")
        if log and low <= 0:
            raise _fail(key, f"{kind} needs low > 0 (it draws on a log scale), got {bounds!r}")
        return Range(key, kind, low if integer else float(low), high if integer else float(high), integer, log)

    return parse


def _choice(key: str, values: Any, hint: Any) -> Choice:
    if not isinstance(values, list) or len(values) < 2:
        raise _fail(key, f"choice needs a list of at least two values (one value is no search: set {key} "
                         f"in its section), got {values!r}")
    checked = []
    for value in values:
        try:
            checked.append(coerce(value, hint))
        except WrongType as expected:
            raise _fail(key, f"choice value {value!r} is not {expected} (what {key} takes)") from None
    labels = [choice_label(v) for v in checked]
    repeated = [v for i, v in enumerate(labels) if v in labels[:i]]
    if repeated:
        raise _fail(key, f"choice lists {repeated[0]!r} twice")
    return Choice(key, tuple(checked))


# kind -> parse(key, the kind's value, the key's declared type) -> a dimension.
KINDS: Registry[Callable[[str, Any, Any], Dimension]] = Registry("search distribution")
KINDS.register("uniform", _range("uniform", integer=False, log=False))
KINDS.register("log_uniform", _range("log_uniform", integer=False, log=True))
KINDS.register("int", _range("int", integer=True, log=False))
KINDS.register("log_int", _range("log_int", integer=True, log=True))
KINDS.register("choice", _choice)


def _entries(table: Mapping[str, Any], sections: Mapping[str, type]) -> Iterator[tuple[str, Any]]:
    """``(dotted key, distribution)`` from ``learner.inner_lr = {...}`` (TOML nests it under
    ``learner``) and from ``"learner.inner_lr" = {...}`` alike."""
    for name, value in table.items():
        if "." in name:
            yield name, value
        elif isinstance(value, Mapping) and not (len(value) == 1 and next(iter(value)) in KINDS):
            for key, spec in value.items():  # a section's keys (a misspelt section is named by _dimension)
                yield f"{name}.{key}", spec
        else:
            raise _fail(name, f"a [{SEARCH}] key names a task key as section.name (for example "
                              f"learner.inner_lr = {EXAMPLE}); sections are {', '.join(sorted(sections))}")


def _dimension(key: str, spec: Any, sections: Mapping[str, type]) -> Dimension:
    section, _, name = key.partition(".")
    if section not in sections:
        raise _fail(key, f"unknown section {section!r}; sections are {', '.join(sorted(sections))}")
    names = [f.name for f in fields(sections[section])]
    if name not in names:
        raise _fail(key, f"unknown key; [{section}] has {', '.join(names)}")
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise _fail(key, f"needs one distribution, for example {key} = {EXAMPLE}; kinds are "
                         f"{', '.join(KINDS.names())}; got {spec!r}")
    ((kind, value),) = spec.items()
    if kind not in KINDS:
        raise _fail(key, f"unknown distribution {kind!r}; choose one of {', '.join(KINDS.names())}")
    return KINDS[kind](key, value, typing.get_type_hints(sections[section])[name])


@dataclass(frozen=True)
class SearchSpace:
    """The dimensions of a search, one per task key, in the order the table lists them."""

    dimensions: tuple[Dimension, ...]

    @classmethod
    def parse(cls, table: Any, sections: Mapping[str, type]) -> "SearchSpace":
        """The space a ``[search]`` table declares over the keys of ``sections`` (section name ->
        its settings dataclass); a bad entry is a :class:`ConfigError` naming its key."""
        if not isinstance(table, Mapping):
            raise ConfigError(SEARCH, f"{SEARCH!r} must be a table ([{SEARCH}]), got {table!r}")
        dimensions = [_dimension(key, spec, sections) for key, spec in _entries(table, sections)]
        if not dimensions:
            raise ConfigError(SEARCH, f"[{SEARCH}] is empty; give it at least one key, for example "
                                      f"learner.inner_lr = {EXAMPLE}, or leave it out for the default space")
        return cls(tuple(dimensions))

    def __iter__(self) -> Iterator[Dimension]:
        return iter(self.dimensions)

    def __len__(self) -> int:
        return len(self.dimensions)

    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]

    def sample(self, trial: Any) -> dict[str, Any]:
        """One value per key, drawn through ``trial`` (see the module's docstring)."""
        return {d.key: d.suggest(trial) for d in self.dimensions}

    def table(self) -> dict[str, dict[str, list]]:
        """The ``[search]`` table again, with dotted keys: ``{"learner.inner_lr": {"log_uniform": [...]}}``."""
        return {d.key: d.spec() for d in self.dimensions}

    def to_toml(self) -> str:
        """The ``[search]`` table as TOML text (which :meth:`parse` reads back to this space)."""
        lines = [f"[{SEARCH}]"]
        for d in self.dimensions:
            ((kind, value),) = d.spec().items()
            lines.append(f"{d.key} = {{ {kind} = {toml_value(value)} }}")
        return "\n".join(lines) + "\n"


def apply(values: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a task's nested dict with each dotted key of ``params`` set."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in values.items()}
    for key, value in params.items():
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = value
    return out
