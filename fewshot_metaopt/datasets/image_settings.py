"""The checks of the settings every image data set shares: image size, channels, normalisation."""

from __future__ import annotations

import math
from typing import Sequence

from .class_splits import check_split

MODES = {1: "L", 3: "RGB"}


def check_image_size(image_size: int, owner: str) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"{owner}: image_size must be a positive integer, got {image_size!r}")
    return image_size


def check_channels(channels: int, owner: str) -> str:
    """The Pillow mode of ``channels`` (1: grayscale, 3: RGB); a one-line error otherwise."""
    if isinstance(channels, bool) or channels not in MODES:
        raise ValueError(f"{owner}: channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    return MODES[channels]


def check_normalisation(
    mean: Sequence[float] | None, std: Sequence[float] | None, channels: int, owner: str
) -> None:
    """``mean`` and ``std`` give one finite value per channel, and ``std`` none that is zero."""
    for label, values in (("mean", mean), ("std", std)):
        if values is None:
            continue
        values = list(values)
        if len(values) != channels or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
        ):
            raise ValueError(
                f"{owner}: {label} needs one finite number per channel ({channels}), got {values!r}"
            )
    if std is not None and any(float(s) == 0 for s in std):
        raise ValueError(f"{owner}: std must be non-zero in every channel, got {list(std)!r}")


def check_rgb_settings(
    split: str, image_size: int, mean: Sequence[float] | None, std: Sequence[float] | None, owner: str
) -> None:
    """A one-line error when the split, the image size or the per-channel normalisation an RGB data
    set with the standard splits is asked for is not valid."""
    check_split(split, owner)
    check_image_size(image_size, owner)
    check_normalisation(mean, std, 3, owner)
