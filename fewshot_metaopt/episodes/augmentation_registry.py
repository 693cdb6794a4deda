"""The augmentations by name: what ``augment="..."`` and a task file's ``data.augment`` name."""

from __future__ import annotations

from typing import Any

from ..registry import Registry
from .augmentation import Augmentation
from .class_rotation import ClassRotation
from .crop_flip_jitter import CropFlipJitter, ResizedCropFlipJitter

# name -> the Augmentation class; ``AUGMENTATIONS.build(name, **settings)`` makes one.
AUGMENTATIONS: Registry[type[Augmentation]] = Registry("augmentation")
for _kind in (CropFlipJitter, ResizedCropFlipJitter, ClassRotation):
    AUGMENTATIONS.register(_kind.name, _kind)


def as_augmentation(value: Any) -> Augmentation:
    """An :class:`Augmentation`, or the name of one (built with its paper's settings)."""
    if isinstance(value, Augmentation):
        return value
    if isinstance(value, str):
        return AUGMENTATIONS.build(value)
    raise TypeError(f"augment must be an Augmentation or one of {', '.join(AUGMENTATIONS.names())}, "
                    f"got {type(value).__name__}")
