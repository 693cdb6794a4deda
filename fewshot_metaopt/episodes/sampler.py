"""Seeded N-way K-shot episode sampling.

Every random draw comes from a :class:`torch.Generator` owned by the sampler, never from the
global RNGs, so a seed names the same episodes on every machine and a user's own use of
``torch.manual_seed``/``random`` cannot shift them. Evaluation episodes come from
:meth:`TaskDistributionSampler.fixed`: episode ``i`` has its own seed derived from
``(seed, i)``, so a manifest is the same whenever it is asked for, is independent of the
training stream, and ``fixed(100)`` is a prefix of ``fixed(600)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Iterator, Sequence, overload

import numpy as np
import torch

from .augmentation import Augmentation
from .augmentation_registry import as_augmentation
from .augmented_family import AugmentedFamily
from .episode import Episode
from .interop import as_task_family
from .task_family import TaskFamily

_TRAIN_STREAM = 0
_FIXED_STREAM = 1


def derive_seed(*words: int) -> int:
    """A 63-bit seed from integers (negative ones too), stable across machines and versions."""
    entropy = [int(w) % 2**64 for w in words]
    state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
    return int(state) >> 1


@dataclass(frozen=True)
class TaskDistributionConfig:
    """What episodes look like.

    ``ways=None`` means 5 for classification sources and 1 for regression families.
    ``episodes_per_epoch`` bounds iteration over the sampler (``None``: endless).
    """

    ways: int | None = None
    shots: int = 1
    queries: int = 15
    seed: int = 0
    episodes_per_epoch: int | None = None


class EpisodeManifest(Sequence[Episode]):
    """A fixed list of episodes, built lazily from one seed per episode.

    ``seed`` is the sampler seed the episodes' seeds were derived from, when known
    (:meth:`TaskDistributionSampler.fixed` sets it); a manifest file records it.
    """

    def __init__(self, source: Any, ways: int, shots: int, queries: int, seeds: Sequence[int],
                 seed: int | None = None):
        self.source = source
        self.ways, self.shots, self.queries = ways, shots, queries
        self.seeds = list(seeds)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.seeds)

    @overload
    def __getitem__(self, index: int) -> Episode: ...

    @overload
    def __getitem__(self, index: slice) -> "EpisodeManifest": ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return EpisodeManifest(self.source, self.ways, self.shots, self.queries, self.seeds[index], self.seed)
        generator = torch.Generator().manual_seed(self.seeds[index])
        return self.source.sample_episode(self.ways, self.shots, self.queries, generator)


class TaskDistributionSampler:
    """Draws :class:`Episode`s from a task family (a dataset split, the sinusoid family, ...).

    >>> sampler = TaskDistributionSampler(Glyphs(split="train"), ways=5, shots=1, queries=15, seed=0)
    >>> ep = sampler.sample()
    >>> batch = sampler.sample_batch(32)
    >>> test_episodes = sampler.fixed(600)

    Keyword arguments fill a :class:`TaskDistributionConfig` (or pass ``config=``).
    A learn2learn ``TaskDataset``/``Taskset`` is accepted as the source too (see
    :mod:`fewshot_metaopt.episodes.interop`).

    ``augment`` (an :class:`~.augmentation.Augmentation` or its name: ``"crop_flip_jitter"``,
    ``"resized_crop_flip_jitter"``, ``"class_rotation"``) augments every episode this sampler
    draws, its fixed manifests included, from seeds drawn from its generators; off by default.
    A sampler of evaluation episodes is usually built without it.
    """

    def __init__(self, source: Any, config: TaskDistributionConfig | None = None, *,
                 augment: Augmentation | str | None = None, **overrides: Any):
        if config is not None and not isinstance(config, TaskDistributionConfig):
            raise TypeError(f"config must be a TaskDistributionConfig, got {type(config).__name__}")
        try:
            config = replace(config or TaskDistributionConfig(), **overrides)
        except TypeError as err:
            known = ", ".join(TaskDistributionConfig.__dataclass_fields__)
            raise TypeError(f"unknown sampler option in {sorted(overrides)}; known: {known}") from err
        self.source: TaskFamily = as_task_family(source, shots=config.shots)
        if augment is not None:
            self.source = AugmentedFamily(self.source, as_augmentation(augment))
        regression = bool(getattr(self.source, "is_regression", False))
        ways = config.ways if config.ways is not None else (1 if regression else 5)
        if regression and ways != 1:
            raise ValueError(
                f"{type(self.source).__name__} is a regression family: ways must be 1, got {ways}"
            )
        if config.episodes_per_epoch is not None and config.episodes_per_epoch < 1:
            raise ValueError(
                f"episodes_per_epoch must be positive or None, got {config.episodes_per_epoch}"
            )
        self.config = replace(config, ways=ways)
        self.source.validate(ways, config.shots, config.queries)
        self.generator = torch.Generator().manual_seed(derive_seed(config.seed, _TRAIN_STREAM))

    @property
    def augmentation(self) -> Augmentation | None:
        """What augments this sampler's episodes (None: nothing)."""
        return self.source.augmentation if isinstance(self.source, AugmentedFamily) else None

    @property
    def ways(self) -> int:
        return self.config.ways

    @property
    def shots(self) -> int:
        return self.config.shots

    @property
    def queries(self) -> int:
        return self.config.queries

    def sample(self) -> Episode:
        c = self.config
        return self.source.sample_episode(c.ways, c.shots, c.queries, self.generator)

    def sample_batch(self, size: int) -> list[Episode]:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"batch size must be a positive integer, got {size!r}")
        return [self.sample() for _ in range(size)]

    def __iter__(self) -> Iterator[Episode]:
        n = self.config.episodes_per_epoch
        count = 0
        while n is None or count < n:
            yield self.sample()
            count += 1

    def fixed(self, num_episodes: int, seed: int | None = None) -> EpisodeManifest:
        """The same ``num_episodes`` episodes every call (for validation and test)."""
        if isinstance(num_episodes, bool) or not isinstance(num_episodes, int) or num_episodes < 1:
            raise ValueError(f"num_episodes must be a positive integer, got {num_episodes!r}")
        base = self.config.seed if seed is None else seed
        seeds = [derive_seed(base, _FIXED_STREAM, i) for i in range(num_episodes)]
        c = self.config
        return EpisodeManifest(self.source, c.ways, c.shots, c.queries, seeds, base)

    def state_dict(self) -> dict[str, Any]:
        """The config and the generator's position, for bit-exact resumption."""
        return {"config": asdict(self.config), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != asdict(self.config):
            raise ValueError(
                f"sampler state was saved for {state['config']}, this sampler is {asdict(self.config)}"
            )
        # A generator's state is a CPU ByteTensor; a checkpoint loaded onto a GPU holds it there.
        self.generator.set_state(state["generator"].cpu())
