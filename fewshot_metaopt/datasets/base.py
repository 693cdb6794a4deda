"""The shared machinery of image datasets, each a
:class:`~fewshot_metaopt.episodes.task_family.TaskFamily`.

Image datasets keep their pixels as uint8 in memory (a quarter of float32) and convert only
the images an episode uses.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from ..episodes.episode import Episode
from ..episodes.episode_draw import EpisodeDraw

# An episode's images in [0, 1] -> the same images augmented (see fewshot_metaopt.episodes.augmentation).
PixelTransform = Callable[[Tensor], Tensor]


def check_counts(shots: int, queries: int) -> None:
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots must be a positive integer, got {shots!r}")
    if isinstance(queries, bool) or not isinstance(queries, int) or queries < 0:
        raise ValueError(f"queries must be a non-negative integer, got {queries!r}")


class ClassImageDataset:
    """Classes of uint8 images, sampled into N-way K-shot episodes.

    Images are grouped (one group per drawn character, per photographed synset...); a class
    reads the images of one group, optionally rotated by a multiple of 90 degrees, so that
    Omniglot's four rotations of a character share pixels instead of copying them.

    Args:
        images: uint8 ``(N, C, H, W)``, grouped contiguously.
        group_sizes: number of images in each group, in storage order.
        class_names: one name per class.
        class_group: for each class, the index of the group it reads.
        class_rotation: for each class, quarter turns (counter-clockwise) applied on the fly.
        mean, std: per-channel normalisation applied after scaling to [0, 1].
    """

    is_regression = False

    def __init__(
        self,
        images: Tensor,
        group_sizes: Sequence[int],
        class_names: Sequence[str],
        class_group: Tensor | None = None,
        class_rotation: Tensor | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        name: str = "dataset",
        split: str = "",
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"{name}: images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        sizes = torch.as_tensor(list(group_sizes), dtype=torch.long)
        if int(sizes.sum()) != images.shape[0]:
            raise ValueError(
                f"{name}: group sizes add up to {int(sizes.sum())} but there are {images.shape[0]} images"
            )
        self.images = images
        self.name = name
        self.split = split
        self.class_names = list(class_names)
        n = len(self.class_names)
        self.class_group = torch.arange(n) if class_group is None else class_group.long()
        self.class_rotation = (
            torch.zeros(n, dtype=torch.long) if class_rotation is None else class_rotation.long()
        )
        if self.class_group.numel() != n or self.class_rotation.numel() != n:
            raise ValueError(f"{name}: class_group and class_rotation need one entry per class")
        self._group_start = torch.cumsum(sizes, 0) - sizes
        self._class_start = self._group_start[self.class_group]
        self._class_size = sizes[self.class_group]
        self._uniform_size = int(self._class_size.min()) if n else 0
        if n and int(self._class_size.max()) != self._uniform_size:
            self._uniform_size = 0
        rotated = bool((self.class_rotation % 4 != 0).any())
        if rotated and images.shape[-1] != images.shape[-2]:
            raise ValueError(f"{name}: rotated classes need square images, got {tuple(images.shape[-2:])}")
        # Rotated classes read from all four quarter turns stacked once (4x the uint8 pixels,
        # about 100 MB for Omniglot): an episode is then a single gather, where rotating its
        # images after the gather costs more than everything else in sampling together.
        self._source = (
            torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)]) if rotated else images
        )
        self._class_start = self._class_start + (self.class_rotation % 4) * images.shape[0]
        c = images.shape[1]
        self._mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(c, 1, 1)
        self._std = None if std is None else torch.tensor(std, dtype=torch.float32).view(c, 1, 1)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def samples_per_class(self) -> int:
        """The fewest images any class has: the bound on shots + queries."""
        return int(self._class_size.min()) if self.num_classes else 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return self.num_classes

    def __repr__(self) -> str:
        return (
            f"{self.name}(split={self.split!r}, classes={self.num_classes}, "
            f"images={self.images.shape[0]}, shape={self.image_shape})"
        )

    def validate(self, ways: int, shots: int, queries: int) -> None:
        check_counts(shots, queries)
        if isinstance(ways, bool) or not isinstance(ways, int) or ways < 1:
            raise ValueError(f"ways must be a positive integer, got {ways!r}")
        if ways > self.num_classes:
            raise ValueError(
                f"ways={ways} exceeds the {self.num_classes} classes of {self.name} split "
                f"{self.split!r}; lower ways or use a larger split"
            )
        if shots + queries > self.samples_per_class:
            raise ValueError(
                f"shots + queries = {shots + queries} exceeds the {self.samples_per_class} "
                f"samples per class of {self.name} split {self.split!r}; lower shots or queries"
            )

    @property
    def class_sizes(self) -> Tensor:
        """The number of images of each class (the bound on a manifest's image ids)."""
        return self._class_size

    def normalise(self, pixels: Tensor, transform: PixelTransform | None = None) -> Tensor:
        """uint8 pixels as float32 in [0, 1], through ``transform`` (an augmentation, which sees
        them in [0, 1] as torchvision's do), then standardised with ``mean`` and ``std``."""
        x = pixels.to(torch.float32).mul_(1.0 / 255.0)
        if transform is not None:
            x = transform(x)
        if self._mean is not None:
            x = x.sub_(self._mean)
        if self._std is not None:
            x = x.div_(self._std)
        return x

    def draw(self, ways: int, shots: int, queries: int, generator: torch.Generator) -> EpisodeDraw:
        """Which classes an episode takes and which of their images, drawn from ``generator``."""
        # The top-k of i.i.d. uniforms is a uniform k-subset in uniform order (the labels), and
        # cheaper than a full randperm over thousands of classes.
        classes = torch.rand(self.num_classes, generator=generator).topk(ways).indices
        per_class = shots + queries
        if self._uniform_size:
            # One argsort of uniform noise draws every class's images without replacement.
            order = torch.rand(ways, self._uniform_size, generator=generator).argsort(dim=1)
            order = order[:, :per_class]
        else:
            order = torch.stack(
                [torch.randperm(int(n), generator=generator)[:per_class] for n in self._class_size[classes]]
            )
        return EpisodeDraw(classes, order, shots)

    def pixels(self, draw: EpisodeDraw) -> Tensor:
        """The uint8 images of ``draw``: the support set's rows, then the query set's."""
        rows = self._class_start[draw.classes].unsqueeze(1) + draw.positions
        # Support rows first, then query rows: one gather, and both sets are contiguous views.
        flat = torch.cat([rows[:, : draw.shots].reshape(-1), rows[:, draw.shots :].reshape(-1)])
        return self._source.index_select(0, flat)

    def build_episode(self, draw: EpisodeDraw, transform: PixelTransform | None = None) -> Episode:
        """The episode ``draw`` describes, its pixels through ``transform`` when one is given."""
        x = self.normalise(self.pixels(draw), transform)
        labels = torch.arange(draw.ways)
        n_support = draw.ways * draw.shots
        return Episode(
            support_x=x[:n_support],
            support_y=labels.repeat_interleave(draw.shots),
            query_x=x[n_support:],
            query_y=labels.repeat_interleave(draw.queries),
            classes=draw.classes,
        )

    def sample_episode(
        self, ways: int, shots: int, queries: int, generator: torch.Generator
    ) -> Episode:
        return self.build_episode(self.draw(ways, shots, queries, generator))
