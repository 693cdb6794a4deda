"""Meta-training one learned rule over a mixture of architectures and task sources.

A mixture is a weighted list of (architecture, episode source) pairs. Each meta-step draws a
pair by weight, a fresh initialisation of the pair's network and a meta-batch of the pair's
episodes, and calls :meth:`MetaOptimizer.meta_train_step(episodes, model)
<fewshot_metaopt.meta_training.meta_optimizer.MetaOptimizer.meta_train_step>`. The rule then
sees conv nets of several widths, MLPs, residual nets, classification and regression, so no
one architecture is the one it is tuned for. The task loss follows the config's ``loss``
(``auto``: cross-entropy for integer labels, MSE for the sinusoid's real targets).

>>> mixture = TaskMixture.from_names([("conv4-16", "omniglot-background"), ("mlp-1-40-40", "sinusoid", 0.5)],
...                                  data_root="data/omniglot", ways=5, shots=5)
>>> history = meta_train_on_mixture(mo, mixture, meta_steps=100, seed=0)

Every draw of meta-step ``k`` comes from a generator seeded by ``(seed, k)`` alone (``k //
calls_per_draw`` when a draw serves several meta-steps), so a run
split into chunks (``first_step``) draws exactly what one run draws, a resumed run continues
the same stream, and the global RNG is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch
from torch import nn

from .. import checks
from ..episodes.episode import Episode
from ..episodes.sampler import derive_seed
from .architectures import ARCHITECTURES
from .results import MetaOptTrainResult
from .task_sources import TASK_SOURCES

if TYPE_CHECKING:
    from .meta_optimizer import MetaOptimizer

# Rules whose meta-parameters are shared by every coordinate of every tensor, so one rule can
# step networks of any shape; Meta-SGD's lr tensors and Warp-Grad's warp layers belong to the
# one model they were built for.
MIXTURE_METHODS = ("lstm", "l2o")


@dataclass(frozen=True)
class MixtureComponent:
    """One (architecture, episode source) pair: ``make_model()`` builds a fresh network for
    ``ways``-way (or, for regression, one-output) episodes of ``shots`` support examples."""

    name: str
    make_model: Callable[[], nn.Module]
    source: Any
    ways: int
    shots: int
    queries: int = 1
    weight: float = 1.0
    description: str = ""

    def __post_init__(self) -> None:
        owner = f"mixture component {self.name!r}"
        checks.integer("ways", self.ways, 1, owner=owner)
        checks.integer("shots", self.shots, 1, owner=owner)
        checks.integer("queries", self.queries, 0, owner=owner)
        checks.positive("weight", self.weight, owner=owner)
        self.source.validate(self.ways, self.shots, self.queries)


@dataclass
class MixtureDraw:
    """What one meta-step trains on: a component, a fresh network of it and its episodes."""

    component: MixtureComponent
    model: nn.Module
    episodes: list[Episode] = field(default_factory=list)


@dataclass(frozen=True)
class MixtureStep:
    """One meta-step of :func:`meta_train_on_mixture`: its index, the component drawn and
    what :meth:`MetaOptimizer.meta_train_step` returned."""

    step: int
    component: str
    result: MetaOptTrainResult


def _pair(entry: Any) -> tuple[str, str, float]:
    if isinstance(entry, (tuple, list)) and len(entry) in (2, 3):
        return (entry[0], entry[1], entry[2] if len(entry) == 3 else 1.0)
    raise ValueError(f"mixture pair {entry!r} must be (architecture, task source) or "
                     "(architecture, task source, weight)")


class TaskMixture:
    """Weighted (architecture, episode source) pairs; see the module docstring."""

    def __init__(self, components: Iterable[MixtureComponent]) -> None:
        self.components: list[MixtureComponent] = list(components)
        if not self.components:
            raise ValueError("a TaskMixture needs at least one component, got none")
        names = [c.name for c in self.components]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"mixture component {name!r} is listed twice; list it once with a larger weight")
        self.weights = torch.tensor([c.weight for c in self.components], dtype=torch.float64)

    @classmethod
    def from_names(
        cls,
        pairs: Iterable[Sequence[Any]],
        data_root: str | Path | None = None,
        ways: int = 5,
        shots: int = 5,
        regression_shots: int = 10,
        queries: int = 1,
    ) -> "TaskMixture":
        """Pairs of registered names, ``(architecture, task source[, weight])`` (see
        ``ARCHITECTURES`` and ``TASK_SOURCES``). Classification sources give ``ways``-way
        ``shots``-shot episodes, regression sources one-output episodes of
        ``regression_shots`` points; each source is loaded once however many pairs use it."""
        root = None if data_root is None else Path(data_root)
        loaded: dict[str, tuple[Any, str]] = {}
        components = []
        for architecture, source_name, weight in map(_pair, pairs):
            arch, source_entry = ARCHITECTURES[architecture], TASK_SOURCES[source_name]
            if arch.inputs != source_entry.inputs:
                raise ValueError(f"architecture {architecture!r} reads {arch.inputs} inputs but task source "
                                 f"{source_name!r} gives {source_entry.inputs} inputs; pair each with a source "
                                 "of its own inputs")
            if source_name not in loaded:
                loaded[source_name] = source_entry.build(root)
            source, description = loaded[source_name]
            regression = bool(getattr(source, "is_regression", False))
            outputs = 1 if regression else ways
            components.append(MixtureComponent(
                name=f"{architecture} on {source_name}",
                make_model=lambda build=arch.build, outputs=outputs: build(outputs),
                source=source, ways=outputs, shots=regression_shots if regression else shots, queries=queries,
                weight=weight, description=description,
            ))
        return cls(components)

    def describe(self) -> list[str]:
        """One line per component: the pair, what was loaded, the episode size and weight."""
        total = float(self.weights.sum())
        return [f"{c.name} ({c.description or type(c.source).__name__}): {c.ways}-way {c.shots}-shot, "
                f"weight {c.weight:g} ({c.weight / total:.0%})" for c in self.components]

    def choose(self, generator: torch.Generator) -> MixtureComponent:
        """A component drawn with probability proportional to its weight."""
        return self.components[int(torch.multinomial(self.weights, 1, generator=generator))]

    def draw(self, generator: torch.Generator, episodes: int = 1) -> MixtureDraw:
        """A component, a freshly initialised network of it and ``episodes`` of its episodes."""
        episodes = checks.integer("episodes", episodes, 1, owner="TaskMixture.draw")
        component = self.choose(generator)
        init_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        # The network's initialisation comes from the mixture's stream, not the caller's RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = component.make_model()
        batch = [component.source.sample_episode(component.ways, component.shots, component.queries, generator)
                 for _ in range(episodes)]
        return MixtureDraw(component, model, batch)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of meta-step ``step``'s draws in a run seeded ``seed``."""
    return torch.Generator().manual_seed(derive_seed(seed, step))


def meta_train_on_mixture(
    optimizer: "MetaOptimizer",
    mixture: TaskMixture,
    meta_steps: int,
    episodes_per_step: int = 1,
    seed: int = 0,
    first_step: int = 0,
    calls_per_draw: int = 1,
) -> list[MixtureStep]:
    """Train ``optimizer``'s rule for ``meta_steps`` meta-steps, numbered from ``first_step``,
    on draws of ``mixture``; returns one record per meta-step.

    ``calls_per_draw`` is for outer trainers whose inner runs last several calls (PES
    advances its particles one truncation per ``meta_train_step``): each draw then serves that
    many consecutive meta-steps, so a run never changes network in the middle;
    ``ceil(inner_steps / unroll_steps)`` lets every run finish on the network it began on.

    A non-finite loss or meta-gradient raises from ``meta_train_step``; the window it happened
    in updates nothing.
    """
    meta_steps = checks.integer("meta_steps", meta_steps, 1, owner="meta_train_on_mixture")
    episodes_per_step = checks.integer("episodes_per_step", episodes_per_step, 1, owner="meta_train_on_mixture")
    seed = checks.integer("seed", seed, owner="meta_train_on_mixture")
    first_step = checks.integer("first_step", first_step, 0, owner="meta_train_on_mixture")
    calls_per_draw = checks.integer("calls_per_draw", calls_per_draw, 1, owner="meta_train_on_mixture")
    method = optimizer.config.method
    if method not in MIXTURE_METHODS:
        raise ValueError(f"meta_train_on_mixture needs a MetaOptimizer of method {' or '.join(MIXTURE_METHODS)}, "
                         f"got method {method!r}, whose meta-parameters fit one model only")
    history = []
    for step in range(first_step, first_step + meta_steps):
        draw = mixture.draw(step_generator(seed, step // calls_per_draw), episodes_per_step)
        history.append(MixtureStep(step, draw.component.name, optimizer.meta_train_step(draw.episodes, draw.model)))
    return history
