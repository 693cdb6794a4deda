"""The contract of an episode augmentation: images in, the same images transformed, drawn from a generator.

An augmentation runs when an episode is drawn (:class:`~.augmented_family.AugmentedFamily`),
on the episode's images as float32 in [0, 1], before the data set's ``mean``/``std``
standardisation: the point where torchvision's transforms see a PIL image, so padding is black
and colour jitter clamps to the displayable range as theirs do. It draws from the generator it
is handed and from nothing else (no global RNG), so a seed names the same augmented episodes
on every machine.

Each augmentation says what one random draw transforms (``per``): a whole class of the episode
(the same transform for all its images, support and query alike) or a single image.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor

PER_CLASS = "class"
PER_IMAGE = "image"


class Augmentation(ABC):
    """Transforms an episode's images; see the module docstring.

    ``__call__(images, labels, generator)``: ``images`` float32 ``(n, C, H, W)`` in [0, 1], the
    support rows then the query rows; ``labels`` their labels ``0..ways-1``; returns images of
    the same shape in [0, 1], drawing only from ``generator``.
    """

    name: ClassVar[str]
    per: ClassVar[str]

    @abstractmethod
    def __call__(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor: ...

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The constructor's arguments as JSON values: ``type(self)(**settings())`` is the same augmentation."""

    def check(self, source: Any) -> None:
        """Raise a one-line ``ValueError`` if ``source``'s images cannot take this augmentation."""

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.settings().items())
        return f"{type(self).__name__}({arguments})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.settings() == self.settings()

    def __hash__(self) -> int:
        return hash((type(self), repr(self)))
