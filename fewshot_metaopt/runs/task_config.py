"""A task: a task file's contents with command-line overrides, checked and fully resolved.

Every key is checked before anything runs: an unknown key, a value of the wrong type, a value
out of range or a key the chosen data set, model, schedule or inner optimizer would ignore is
a line naming the key and where it was set (the file, ``--set key=value`` or
``--data-root``), with the key it most likely meant when it is unknown. Every such problem of
a task is reported at once, in one :class:`~.errors.TaskErrors` (a :class:`RunError`).
``--set`` values are read as TOML values (``--set learner.inner_lr=0.1``,
``--set model.hidden_layers=[40,40]``); a bare word is a string (``--set learner.algorithm=anil``).
"""

from __future__ import annotations

import os
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..checks import ConfigError
from ..learners.algorithms import WARP_ALGORITHMS, algorithms_reading
from ..learners.config import GradientMetaLearnerConfig
from ..meta_training.meta_optimizer import MetaOptimizerConfig
from ..models import PER_STEP
from .errors import RunError
from .schedule_factory import build_schedule
from .search_space import SEARCH, SearchSpace
from .settings import (
    SECTIONS,
    DataSettings,
    EpisodeSettings,
    EvaluationSettings,
    InnerOptimizerSettings,
    LoggingSettings,
    ModelSettings,
    ScheduleSettings,
    WARP_MODELS,
    TopLevel,
    TrainSettings,
    ValidationSettings,
    learner_applicable,
)
from .task_catalog import QUICKSTART, bundled_task, task_file
from .task_problems import Problems, meant_key
from .value_types import WrongType, coerce

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

# The order sections are written in: what is learned from, then how, then for how long.
SECTION_ORDER = (
    "data", "episodes", "model", "learner", "inner_optimizer", "meta_schedule", "train", "validation", "evaluation",
    "logging",
)
ALL_SECTIONS: dict[str, type] = {**SECTIONS, "learner": GradientMetaLearnerConfig}
ALL_SECTIONS_IN_ORDER: dict[str, type] = {name: ALL_SECTIONS[name] for name in SECTION_ORDER}
PATH_KEYS = ("data.root", "data.splits_dir", "data.cache_dir")
REGRESSION = ("sinusoid",)
# MetaOptimizer's warp_grad meta-trains the warp layers alone, outside any learner; in a run the
# learner meta-trains the whole warped model, which is what its Warp-Grad algorithms do.
WARP_GRAD_RULE = (
    "inner_optimizer.method 'warp_grad' meta-trains warp layers alone; a run meta-learns a warped model with "
    "learner.algorithm = \"warp_maml\" or \"warp_leap\", model.name = \"warp_conv4\" or \"warp_mlp\" and "
    "inner_optimizer.method = \"sgd\""
)


@dataclass
class TaskConfig:
    name: str
    description: str
    seed: int
    data: DataSettings
    episodes: EpisodeSettings
    model: ModelSettings
    learner: GradientMetaLearnerConfig
    inner_optimizer: InnerOptimizerSettings
    meta_schedule: ScheduleSettings
    train: TrainSettings
    validation: ValidationSettings
    evaluation: EvaluationSettings
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    # The [search] table: what `fewshot-metaopt tune` varies; a run trains the values above.
    search: SearchSpace | None = None

    @property
    def regression(self) -> bool:
        return self.data.dataset in REGRESSION

    @property
    def ways(self) -> int:
        if self.episodes.ways is not None:
            return self.episodes.ways
        return 1 if self.regression else 5

    @property
    def eval_queries(self) -> int:
        e = self.episodes
        return e.queries if e.eval_queries is None else e.eval_queries

    def meta_optimizer_config(self) -> MetaOptimizerConfig | None:
        """The learned inner optimizer's settings, or None for the learner's own rule."""
        inner = self.inner_optimizer
        if inner.method == "sgd":
            return None
        return MetaOptimizerConfig.from_dict({"method": inner.method, **inner.rule_settings()})

    def to_dict(self) -> dict[str, Any]:
        """Every key that applies, with its resolved value (``None`` ones are omitted, as TOML must)."""
        out: dict[str, Any] = {"name": self.name, "description": self.description, "seed": self.seed}
        for section in SECTION_ORDER:
            settings = getattr(self, section)
            names = _applicable(settings)
            out[section] = {f.name: getattr(settings, f.name) for f in fields(settings)
                            if f.name in names and getattr(settings, f.name) is not None}
        return out


class Origins:
    """Where each dotted key was set, for error messages."""

    def __init__(self, default: str) -> None:
        self.default = default
        self.keys: dict[str, str] = {}

    def record(self, values: Mapping[str, Any], source: str) -> None:
        """Note ``source`` as the origin of every key in a task file's nested dict."""
        for key, value in values.items():
            if key in ALL_SECTIONS and isinstance(value, dict):
                self.keys.update({f"{key}.{name}": source for name in value})
            else:
                self.keys[key] = source

    def of(self, key: str) -> str:
        """The source of ``key``; for a section, of every key set in it (overrides first)."""
        if key in self.keys:
            return self.keys[key]
        inside = [source for k, source in self.keys.items() if k.startswith(key + ".")]
        return self._joined(inside)

    def of_all(self, *keys: str) -> str:
        """The sources of keys that clash with each other (overrides first)."""
        return self._joined([self.of(key) for key in keys])

    def _joined(self, sources: list[str]) -> str:
        # Overrides first: when keys clash, the one just typed is the likelier culprit.
        ordered = list(dict.fromkeys(sorted(sources, key=lambda s: s == self.default)))
        return " and ".join(ordered) if ordered else self.default


def parse_override(text: str) -> tuple[str, Any]:
    """``"learner.inner_lr=0.1"`` -> ``("learner.inner_lr", 0.1)``."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RunError(f"--set needs key=value (for example learner.inner_lr=0.1), got {text!r}")
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def read_task_file(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise RunError(f"task file {path} does not exist")
    if not path.is_file():
        raise RunError(f"task file {path} is not a file")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise RunError(f"{path} is not valid TOML: {err}") from None
    except UnicodeDecodeError:
        raise RunError(f"{path} is not valid TOML: it is not UTF-8 text") from None


def _resolve_paths(values: dict[str, Any], keys: Sequence[str], base: Path) -> None:
    data = values.get("data")
    if not isinstance(data, dict):
        return
    for dotted in keys:
        name = dotted.split(".", 1)[1]
        value = data.get(name)
        if isinstance(value, str):
            path = Path(value).expanduser()
            data[name] = str(path if path.is_absolute() else (base / path).resolve())


def unknown_key(key: str, source: str) -> str:
    """The line for an unknown key: the key it most likely meant, else the keys there are."""
    meant = meant_key(key, ALL_SECTIONS_IN_ORDER, TopLevel)
    if meant is not None:
        return f"unknown key {key!r} in {source}; did you mean {meant}?"
    section, dot, _ = key.partition(".")
    if not dot:
        known = ", ".join([*sorted(f.name for f in fields(TopLevel)), *(f"[{s}]" for s in SECTION_ORDER)])
    elif section in ALL_SECTIONS:
        known = ", ".join(f"{section}.{f.name}" for f in fields(ALL_SECTIONS[section]))
    else:
        return f"unknown key {key!r} in {source}; sections are {', '.join(sorted(ALL_SECTIONS))}"
    return f"unknown key {key!r} in {source}; known: {known}"


def _set(values: dict[str, Any], key: str, value: Any, source: str) -> None:
    section, dot, name = key.partition(".")
    if not dot:
        values[key] = value
        return
    if "." in name or section not in ALL_SECTIONS:
        raise RunError(unknown_key(key, source))
    table = values.setdefault(section, {})
    if not isinstance(table, dict):
        raise RunError(f"{section!r} is a table ([{section}]); cannot set {key!r} from {source}")
    table[name] = value


def _applicable(settings: Any) -> set[str]:
    """The keys ``settings`` reads (the learner's config is the library's and has no ``applicable``)."""
    if isinstance(settings, GradientMetaLearnerConfig):
        return learner_applicable(settings)
    return settings.applicable()


def _section(cls: type, prefix: str, given: Mapping[str, Any], origins: Origins, problems: Problems):
    """The settings of one table, or None when its keys leave none to build; each problem is
    noted in ``problems`` (every unknown key, every value of the wrong type, ...)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    key = lambda name: f"{prefix}{name}"  # noqa: E731 - a dotted name, used a dozen times
    checked = {}
    for name, value in given.items():
        if name not in names:
            problems.add(unknown_key(key(name), origins.of(key(name))))
            continue
        try:
            checked[name] = coerce(value, hints[name])
        except WrongType as expected:
            problems.add(f"{key(name)} in {origins.of(key(name))} must be {expected}, got {value!r}")
    settings = _built(cls, prefix, checked, origins, problems, quiet=len(checked) < len(given))
    if settings is None:
        return None
    applicable = _applicable(settings)
    for name in checked:
        if name not in applicable:
            problems.add(f"{key(name)} in {origins.of(key(name))} {_why_not(settings, prefix, name)}")
    return settings


def _built(cls: type, prefix: str, checked: dict[str, Any], origins: Origins, problems: Problems, quiet: bool):
    """``cls(**checked)``; a value its checks refuse is noted and left out, and the rest tried
    again, so that every bad value of the table is reported. ``quiet``: a key of the table was
    refused already, so a clash of several keys is not reported (the refused key may be its
    cause, and the defaults standing in for it are not the user's)."""
    section = prefix.rstrip(".")
    while True:
        try:
            return cls(**checked)
        except ConfigError as err:
            name = err.key.removeprefix(prefix)
            if "." in err.key or not prefix:
                problem = f"{origins.of(err.key)}: {err}"
            else:
                # A library config's own check names its field; the section says which table it is in.
                problem = f"{origins.of(section)}: [{section}] {err}"
            if name in checked:
                problems.add(problem)
                del checked[name]
                quiet = True
                continue
            if not quiet:
                problems.add(problem)
            return None
        except ValueError as err:  # the learner's checks of several keys together
            if not quiet:
                problems.add(f"{origins.of(section)}: [{section}] {err}")
            return None


def _why_not(settings: Any, prefix: str, name: str) -> str:
    if isinstance(settings, DataSettings):
        if name == "augment_splits" and "augment" in settings.applicable():
            return "is read only with data.augment set (to an augmentation, not 'none')"
        return f"does not apply to data.dataset {settings.dataset!r}"
    if isinstance(settings, ModelSettings):
        return f"does not apply to model.name {settings.name!r}"
    if isinstance(settings, ScheduleSettings):
        return f"does not apply to meta_schedule.name {settings.name!r}"
    if isinstance(settings, GradientMetaLearnerConfig):
        readers = " and ".join(repr(reader) for reader in algorithms_reading(name))
        return f"does not apply to learner.algorithm {settings.algorithm!r} (only to {readers})"
    if isinstance(settings, LoggingSettings):
        return "is read only when its tracker is on: logging.wandb = true for wandb_*, logging.mlflow = true for mlflow_*"
    return f"does not apply to {prefix}method {getattr(settings, 'method', '')!r}"


def _cross_checks(task: TaskConfig, origins: Origins, problems: Problems) -> None:
    """What no single section can see: the model must fit the data, and so on."""

    def fail(key: str, message: str) -> None:
        problems.add(f"{origins.of(key)}: {message}")

    if task.model.takes_images == task.regression:
        family = "mlp" if task.regression else "conv4"
        kind = "a regression family" if task.regression else "an image data set"
        fail("model.name", f"model.name {task.model.name!r} does not fit data.dataset "
                           f"{task.data.dataset!r} ({kind}); use {family!r} (or 'warp_{family}' for Warp-Grad)")
    if task.regression and task.ways != 1:
        fail("episodes.ways", f"episodes.ways must be 1 for the regression family {task.data.dataset!r}, got {task.ways}")
    if task.inner_optimizer.method == "warp_grad":
        fail("inner_optimizer.method", WARP_GRAD_RULE)
    clash = task.data.rotation_clash()
    if clash is not None:
        split_key, reason = clash
        problems.add(f"{origins.of_all('data.augment', split_key)}: {reason}")
    _warp_checks(task, origins, problems)
    if task.learner.vmap_tasks and (task.model.batch_norm == PER_STEP or task.model.drop_rate):
        # Both write or draw outside the batched computation: per-step batch norm its running
        # statistics, DropBlock its masks from torch's generator.
        key, value = (("batch_norm", "'per_step'") if task.model.batch_norm == PER_STEP
                      else ("drop_rate", task.model.drop_rate))
        problems.add(f"{origins.of_all('learner.vmap_tasks', f'model.{key}')}: model.{key} = {value} needs the task "
                     f"loop (learner.vmap_tasks = false)")
    method = task.learner.method
    if not method.unrolls and not method.warped and task.inner_optimizer.method != "sgd":
        # iMAML's implicit meta-gradient and Reptile's pseudo-gradient reach the initialisation
        # only: a learned rule would never learn (Warp-Leap has a line of its own).
        fail("inner_optimizer.method", f"learner.algorithm {task.learner.algorithm!r} meta-learns the initialisation "
                                       f"only, so inner_optimizer.method must be 'sgd', got {task.inner_optimizer.method!r}")
    if method.prototype_head and task.regression:
        fail("learner.algorithm", f"learner.algorithm {task.learner.algorithm!r} builds each task's head from class "
                                  f"prototypes and needs a classification data set, got the regression family "
                                  f"{task.data.dataset!r}; use 'maml'")
    try:
        task.meta_optimizer_config()
    except ValueError as err:
        fail(_culprit("inner_optimizer", err, InnerOptimizerSettings), f"[inner_optimizer] {err}")
    try:
        build_schedule(task.meta_schedule, task.train.iterations)
    except ValueError as err:
        fail(_culprit("meta_schedule", err, ScheduleSettings), f"[meta_schedule] {err}")


def _culprit(section: str, err: ValueError, settings: type) -> str:
    """The key a library object's check blames, when it is a key of ``section``; else the
    section, whose every source is named (one of them set the values that clash)."""
    if isinstance(err, ConfigError) and err.key in {f.name for f in fields(settings)}:
        return f"{section}.{err.key}"
    return section


def _warp_checks(task: TaskConfig, origins: Origins, problems: Problems) -> None:
    """Warp-Grad algorithms and warped models come together, with the learner's own inner rule."""
    algorithm, model, method = task.learner.algorithm, task.model, task.inner_optimizer.method
    warp_algorithm = algorithm in WARP_ALGORITHMS
    if warp_algorithm and not model.warped:
        # ResNet-12 and WRN-28-10 have no warped form; conv4's is the image networks' one.
        warped = f"warp_{model.family}" if f"warp_{model.family}" in WARP_MODELS else "warp_conv4"
        problems.add(f"{origins.of_all('learner.algorithm', 'model.name')}: learner.algorithm {algorithm!r} "
                       f"needs a model with warp layers: model.name {warped!r}, got {model.name!r}")
    if model.warped and not warp_algorithm:
        # Any other algorithm would adapt the warp layers in the inner loop like the rest of the
        # net, so they would precondition nothing.
        problems.add(f"{origins.of_all('model.name', 'learner.algorithm')}: model.name {model.name!r} is "
                       f"meta-learned by learner.algorithm 'warp_maml' or 'warp_leap', got {algorithm!r}; "
                       f"with {algorithm!r} use model.name {model.family!r}")
    if warp_algorithm and method not in ("sgd", "warp_grad"):  # warp_grad has a line of its own
        # Warp-Grad's inner loop is gradient descent that the warps precondition; a learned
        # update rule on top has no place in its objective (and Leap would never train it).
        problems.add(f"{origins.of_all('learner.algorithm', 'inner_optimizer.method')}: learner.algorithm "
                       f"{algorithm!r} runs gradient descent in the inner loop, so inner_optimizer.method must be "
                       f"'sgd', got {method!r} (warp_maml learns inner lrs with learner.lr_granularity)")


def _search(values: Mapping[str, Any], origins: Origins, problems: Problems) -> SearchSpace | None:
    """The ``[search]`` table's space (see :mod:`.search_space`), or None without one."""
    if SEARCH not in values:
        return None
    try:
        return SearchSpace.parse(values[SEARCH], ALL_SECTIONS)
    except ConfigError as err:
        problems.add(f"{origins.of(err.key)}: {err}", SEARCH)
        return None


def build_task(values: Mapping[str, Any], origins: Origins, problems: Problems | None = None) -> TaskConfig:
    """A :class:`TaskConfig` from a task file's nested dict, every key checked; every problem
    (with those already in ``problems``) is raised together in one :class:`~.errors.TaskErrors`."""
    problems = Problems() if problems is None else problems
    top_names = {f.name for f in fields(TopLevel)}
    tables = {}
    for key, value in values.items():
        if key in ALL_SECTIONS:
            if isinstance(value, dict):
                tables[key] = value
            else:
                problems.add(f"{key!r} in {origins.of(key)} must be a table ([{key}]), got {value!r}", key)
        elif key not in top_names and key != SEARCH:
            problems.add(unknown_key(key, origins.of(key)))
    search = _search(values, origins, problems)
    top = _section(TopLevel, "", {k: v for k, v in values.items() if k in top_names}, origins, problems)
    sections = {name: _section(ALL_SECTIONS[name], f"{name}.", tables.get(name, {}), origins, problems)
                for name in SECTION_ORDER}
    if top is None or None in sections.values() or len(tables) < sum(key in ALL_SECTIONS for key in values):
        problems.raise_any()
    task = TaskConfig(name=top.name, description=top.description, seed=top.seed, **sections, search=search)
    if not problems:  # the clashes between sections are judged on values that are each right
        _cross_checks(task, origins, problems)
    problems.raise_any()
    return task


def load_task(
    path: str | os.PathLike | None,
    overrides: Sequence[str] = (),
    data_root: str | os.PathLike | None = None,
) -> TaskConfig:
    """The task in ``path`` (a task file, or the name of an installed one: see
    :func:`.task_catalog.task_file`; the quick start when None) with ``--set`` overrides and
    ``--data-root`` applied on top."""
    if path is None:
        values, source, base = read_task_file(bundled_task(QUICKSTART)), "the embedded quick-start task", Path.cwd()
    else:
        path = task_file(path)
        values, source, base = read_task_file(path), str(path), Path(path).resolve().parent
    origins = Origins(source)
    origins.record(values, source)
    if path is not None and "name" not in values:
        values["name"] = Path(path).stem
        origins.keys["name"] = f"the file name of {path} (name is not set in it)"
    _resolve_paths(values, PATH_KEYS, base)
    problems = Problems()
    changes: list[tuple[str, Any, str]] = []
    for text in overrides:
        try:
            changes.append((*parse_override(text), f"--set {text}"))
        except RunError as err:
            problems.add(str(err))
    if data_root is not None:
        changes.append(("data.root", str(data_root), "--data-root"))
    for key, value, where in changes:
        try:
            _set(values, key, value, where)
        except RunError as err:
            problems.add(str(err), key.partition(".")[0])
            continue
        origins.keys[key] = where
        if key in PATH_KEYS:
            _resolve_paths(values, [key], Path.cwd())
    return build_task(values, origins, problems)


def task_from_dict(values: Mapping[str, Any], source: str, data_root: str | os.PathLike | None = None) -> TaskConfig:
    """A resolved task stored in a run directory or checkpoint; ``data_root`` moves its data."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    origins = Origins(source)
    if data_root is not None:
        _set(values, "data.root", str(Path(data_root).expanduser().resolve()), "--data-root")
        origins.keys["data.root"] = "--data-root"
    return build_task(values, origins)
