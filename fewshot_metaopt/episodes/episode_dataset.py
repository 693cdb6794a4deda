"""Episodes for ``torch.utils.data.DataLoader``: a finite, reproducible, shardable stream.

>>> dataset = EpisodeDataset(sampler, episodes=3200)
>>> loader = DataLoader(dataset, batch_size=32, num_workers=4, collate_fn=stack_episodes)
>>> for batch in loader:                  # 100 EpisodeBatches of 32 episodes
...     learner.meta_train_step(batch.unbind())

Episode ``i`` of an epoch is drawn from its own seed, derived from ``(seed, epoch, i)``, the
way :meth:`TaskDistributionSampler.fixed` draws a manifest. So worker ``w`` of ``W`` draws
episodes ``w, w + W, w + 2W, ...``: the workers' streams are disjoint, each episode is the
same whatever the number of workers and whichever worker drew it, and the same seed and
worker count give the same batches in the same order. The stream is its own: it neither
reads nor moves the sampler's training generator, and is independent of its manifests.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .episode import Episode
from .sampler import TaskDistributionSampler, derive_seed

# Seeds of this stream are derived from (seed, LOADER_STREAM, epoch, index), apart from the
# sampler's training stream and its fixed manifests.
LOADER_STREAM = 2


def _count(name: str, value: object, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"EpisodeDataset needs an integer {name} >= {least}, got {value!r}")
    return value


class EpisodeDataset(IterableDataset):
    """``episodes`` episodes per epoch of ``sampler``'s task family and shape (see the module
    docstring).

    Args:
        sampler: a :class:`TaskDistributionSampler`; its source, ways, shots, queries and seed
            are used, not its generator.
        episodes: episodes per epoch (``len(dataset)``); default: the sampler's
            ``episodes_per_epoch``. One of the two must say it: a stream without end has no
            length for a ``DataLoader`` to report, and no epoch for a worker to finish.
        seed: of the stream (default: the sampler's seed).
        epoch: which epoch's episodes to draw; see :meth:`set_epoch`.
    """

    def __init__(self, sampler: TaskDistributionSampler, episodes: int | None = None, seed: int | None = None,
                 epoch: int = 0) -> None:
        if not isinstance(sampler, TaskDistributionSampler):
            raise TypeError(f"EpisodeDataset needs a TaskDistributionSampler, got {type(sampler).__name__}")
        if episodes is None:
            episodes = sampler.config.episodes_per_epoch
            if episodes is None:
                raise ValueError("EpisodeDataset needs a number of episodes per epoch: pass episodes=N, or "
                                 "build the sampler with episodes_per_epoch=N")
        self.source = sampler.source
        self.ways, self.shots, self.queries = sampler.ways, sampler.shots, sampler.queries
        self.episodes = _count("episodes", episodes, 1)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"EpisodeDataset needs an integer seed, got {seed!r}")
        self.seed = sampler.config.seed if seed is None else seed
        self.epoch = _count("epoch", epoch, 0)

    def __len__(self) -> int:
        return self.episodes

    def set_epoch(self, epoch: int) -> None:
        """Draw epoch ``epoch``'s episodes from the next iteration on (every epoch has its own).

        Call it before each epoch's ``for batch in loader``: a ``DataLoader`` hands its workers
        a copy of the dataset when the iteration starts. With ``persistent_workers=True`` the
        workers keep the copy they started with, so every epoch repeats the first one.
        """
        self.epoch = _count("epoch", epoch, 0)

    def episode(self, index: int) -> Episode:
        """Episode ``index`` of the current epoch, wherever and whenever it is drawn."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.episodes:
            raise IndexError(f"episode index {index!r} is out of range for {self.episodes} episodes")
        generator = torch.Generator().manual_seed(derive_seed(self.seed, LOADER_STREAM, self.epoch, index))
        return self.source.sample_episode(self.ways, self.shots, self.queries, generator)

    def __iter__(self) -> Iterator[Episode]:
        worker = get_worker_info()
        first, step = (0, 1) if worker is None else (worker.id, worker.num_workers)
        for index in range(first, self.episodes, step):
            yield self.episode(index)
