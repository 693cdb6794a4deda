"""An image data set whose episodes are augmented when they are drawn.

:class:`AugmentedFamily` is a task family like the data set it wraps, so every way of drawing
episodes (the sampler's training stream, its fixed manifests, ``EpisodeDataset`` workers)
augments them alike. Each episode draws one seed from the generator it is drawn with, right
after its classes and images, and its augmentation draws from a generator of that seed: the
sampler's seed names the augmented episodes, and a manifest that stores the seed rebuilds the
same augmented tensors (:mod:`fewshot_metaopt.datasets.episode_manifest`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from .augmentation import Augmentation
from .episode import Episode
from .episode_draw import EpisodeDraw

# Augmentation seeds are drawn below 2**62, well inside a generator's 64-bit seed.
SEED_BOUND = 2**62
IMAGE_DATASET_METHODS = ("draw", "pixels", "build_episode")


class AugmentedFamily:
    """``source``'s episodes with ``augmentation`` applied (see the module docstring).

    ``source`` is an image data set (a :class:`~fewshot_metaopt.datasets.ClassImageDataset`):
    an augmentation transforms pixels, which regression families and third-party task objects
    do not hand over.
    """

    is_regression = False

    def __init__(self, source: Any, augmentation: Augmentation) -> None:
        if isinstance(source, AugmentedFamily):
            raise ValueError(f"{source!r} is augmented already; augment the data set itself once")
        if not all(hasattr(source, method) for method in IMAGE_DATASET_METHODS):
            raise TypeError(f"augmentation needs an image data set (a ClassImageDataset), got "
                            f"{type(source).__name__}, whose episodes it cannot reach before they are built")
        if not isinstance(augmentation, Augmentation):
            raise TypeError(f"augmentation must be an Augmentation, got {type(augmentation).__name__}")
        augmentation.check(source)
        self.source, self.augmentation = source, augmentation

    # What a manifest and a reader of the episodes ask of an image data set.
    name = property(lambda self: self.source.name)
    split = property(lambda self: self.source.split)
    class_names = property(lambda self: self.source.class_names)
    class_sizes = property(lambda self: self.source.class_sizes)
    num_classes = property(lambda self: self.source.num_classes)
    image_shape = property(lambda self: self.source.image_shape)

    def __repr__(self) -> str:
        return f"AugmentedFamily({self.source!r}, {self.augmentation!r})"

    def validate(self, ways: int, shots: int, queries: int) -> None:
        self.source.validate(ways, shots, queries)

    def draw(self, ways: int, shots: int, queries: int, generator: torch.Generator) -> EpisodeDraw:
        draw = self.source.draw(ways, shots, queries, generator)
        seed = int(torch.randint(SEED_BOUND, (), generator=generator))
        return replace(draw, augment_seed=seed)

    def pixels(self, draw: EpisodeDraw) -> Tensor:
        """The episode's images as stored, before augmentation."""
        return self.source.pixels(draw)

    def build_episode(self, draw: EpisodeDraw) -> Episode:
        if draw.augment_seed is None:
            raise ValueError("this episode was drawn without augmentation (its augment_seed is None); draw it "
                             "with the augmented family's draw, or build it with the data set itself")
        generator = torch.Generator().manual_seed(draw.augment_seed)
        labels = draw.labels()
        return self.source.build_episode(draw, lambda images: self.augmentation(images, labels, generator))

    def sample_episode(self, ways: int, shots: int, queries: int, generator: torch.Generator) -> Episode:
        return self.build_episode(self.draw(ways, shots, queries, generator))
