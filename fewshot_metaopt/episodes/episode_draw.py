"""What an image episode is made of before its pixels are read: an :class:`EpisodeDraw`.

An image data set draws an episode in two steps, ``draw`` (which classes, which of their
images) and ``build_episode`` (gather the pixels, augment them, normalise them). Between the
two an episode is a handful of integers, which is what a manifest file stores
(:mod:`fewshot_metaopt.datasets.episode_manifest`) and what rebuilds the same episode later.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class EpisodeDraw:
    """The classes and images of one episode.

    ``classes[i]`` is the data set's class behind label ``i``; ``positions[i]`` holds the
    positions of that class's images within the class (in the order the data set stores them),
    its ``shots`` support images first, then its queries. ``augment_seed`` seeds the episode's
    augmentation (None: not augmented).
    """

    classes: Tensor
    positions: Tensor
    shots: int
    augment_seed: int | None = None

    @property
    def ways(self) -> int:
        return int(self.classes.numel())

    @property
    def queries(self) -> int:
        return self.positions.shape[1] - self.shots

    def labels(self) -> Tensor:
        """The labels of the episode's rows: the support set's, then the query set's (class-major)."""
        labels = torch.arange(self.ways)
        return torch.cat([labels.repeat_interleave(self.shots), labels.repeat_interleave(self.queries)])
