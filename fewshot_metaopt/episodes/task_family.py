"""The contract every episode source honours: the sampler needs nothing more."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .episode import Episode


@runtime_checkable
class TaskFamily(Protocol):
    """Anything with ``is_regression``, ``validate(ways, shots, queries)`` and
    ``sample_episode(ways, shots, queries, generator)``: the image data sets, the sinusoid
    family, and learn2learn/torchmeta data sets through their adapters."""

    is_regression: bool

    def validate(self, ways: int, shots: int, queries: int) -> None: ...

    def sample_episode(
        self, ways: int, shots: int, queries: int, generator: torch.Generator
    ) -> Episode: ...
