"""Episodes from learn2learn and torchmeta objects, by duck typing.

Neither package is a dependency (neither installs cleanly on current Python/torch); we only
rely on the shapes their objects return:

- learn2learn ``TaskDataset``/``Taskset``: ``.sample()`` returns ``(X, y)`` holding
  ``shots + queries`` examples of each of the task's classes, in any order.
- torchmeta ``BatchMetaDataLoader`` batch: a mapping with ``"train"`` and ``"test"``, each a
  pair ``(inputs[B, n, ...], targets[B, n])``.
"""

from __future__ import annotations

import random
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import Tensor

from .episode import Episode


def split_support_query(x: Tensor, y: Tensor, shots: int) -> Episode:
    """Turn one task's examples into an Episode: the first ``shots`` of each class support.

    Labels are remapped to ``0..N-1`` in order of their values; ``classes`` keeps the values.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"task has {x.shape[0]} inputs but {y.shape[0]} labels")
    classes, inverse, counts = torch.unique(y, sorted=True, return_inverse=True, return_counts=True)
    if int(counts.min()) != int(counts.max()):
        raise ValueError(
            f"task classes have unequal sizes {counts.tolist()}; every class needs shots + queries examples"
        )
    per_class = int(counts[0])
    if per_class <= shots:
        raise ValueError(
            f"task has {per_class} examples per class, not enough for shots={shots} plus a query"
        )
    # A stable sort keeps each class's examples in their original order.
    order = torch.sort(inverse, stable=True).indices.view(len(classes), per_class)
    support, query = order[:, :shots].reshape(-1), order[:, shots:].reshape(-1)
    return Episode(
        support_x=x[support],
        support_y=inverse[support],
        query_x=x[query],
        query_y=inverse[query],
        classes=classes.long(),
    )


class Learn2LearnTasks:
    """A learn2learn ``TaskDataset``/``Taskset`` as a task family for the sampler.

    learn2learn draws from Python's global ``random``. For each draw we seed that RNG from the
    sampler's generator and restore its previous state afterwards, so seeds and fixed
    manifests are repeatable with this source too, and the caller's ``random`` stream is left
    where it was.
    """

    is_regression = False

    def __init__(self, taskset: Any, shots: int):
        self.taskset = taskset
        self.shots = shots

    def validate(self, ways: int, shots: int, queries: int) -> None:
        if shots != self.shots:
            raise ValueError(f"Learn2LearnTasks was built for shots={self.shots}, sampler asks {shots}")

    def sample_episode(self, ways: int, shots: int, queries: int, generator: torch.Generator) -> Episode:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        outer = random.getstate()
        random.seed(seed)
        try:
            x, y = self.taskset.sample()
        finally:
            random.setstate(outer)
        episode = split_support_query(torch.as_tensor(x), torch.as_tensor(y), shots)
        if episode.ways != ways or episode.queries != queries:
            raise ValueError(
                f"learn2learn task has {episode.ways} ways and {episode.queries} queries per class, "
                f"sampler asks ways={ways}, queries={queries}; match its NWays/KShots transforms"
            )
        return episode


def as_task_family(source: Any, shots: int) -> Any:
    """Our task families pass through; a learn2learn task set is wrapped."""
    if hasattr(source, "sample_episode") and hasattr(source, "validate"):
        return source
    if callable(getattr(source, "sample", None)):
        return Learn2LearnTasks(source, shots)
    raise TypeError(
        f"cannot sample episodes from {type(source).__name__}: expected a fewshot_metaopt dataset "
        "or a learn2learn TaskDataset (an object with .sample())"
    )


def episodes_from_torchmeta(batch: Mapping[str, Any]) -> list[Episode]:
    """One Episode per task of a torchmeta ``BatchMetaDataLoader`` batch."""
    try:
        (train_x, train_y), (test_x, test_y) = batch["train"], batch["test"]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            "a torchmeta batch is a mapping with 'train' and 'test' pairs of (inputs, targets)"
        ) from err
    episodes = []
    for sx, sy, qx, qy in zip(train_x, train_y, test_x, test_y):
        classes = torch.unique(sy, sorted=True)
        if not torch.equal(torch.unique(qy, sorted=True), classes):
            raise ValueError("torchmeta task has query labels that its support set lacks")
        episodes.append(
            Episode(
                support_x=sx,
                support_y=torch.searchsorted(classes, sy),
                query_x=qx,
                query_y=torch.searchsorted(classes, qy),
                classes=classes.long(),
            )
        )
    return episodes


def iter_torchmeta(loader: Iterable[Mapping[str, Any]]) -> Iterator[Episode]:
    """Episodes from every batch of a torchmeta ``BatchMetaDataLoader``."""
    for batch in loader:
        yield from episodes_from_torchmeta(batch)
