"""Colour jitter on a batch of images in [0, 1], with torchvision's formulas, one draw per image.

Brightness scales the pixels, contrast blends each image with the mean of its grey levels,
saturation blends each pixel with its grey level (``0.2989 R + 0.587 G + 0.114 B``, as
``torchvision.transforms.functional.rgb_to_grayscale``; a grayscale image has no saturation to
change). Each image draws its own factors, uniform in ``[max(0, 1 - s), 1 + s]`` for strength
``s``, and the result is clamped to [0, 1] after every adjustment, as torchvision's
``ColorJitter`` and PIL's ``ImageEnhance`` do. Hue is not jittered: the papers these
augmentations follow leave it alone.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

GREY_WEIGHTS = (0.2989, 0.587, 0.114)


def grey(images: Tensor) -> Tensor:
    """``(n, 1, H, W)``: the grey level of each pixel (the image itself when it has one channel)."""
    if images.shape[1] == 1:
        return images
    weights = torch.tensor(GREY_WEIGHTS, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def _blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    factor = factor.view(-1, 1, 1, 1)
    return (factor * images + (1.0 - factor) * other).clamp_(0.0, 1.0)


def brightness(images: Tensor, factor: Tensor) -> Tensor:
    return (images * factor.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def contrast(images: Tensor, factor: Tensor) -> Tensor:
    return _blend(images, grey(images).mean(dim=(1, 2, 3), keepdim=True), factor)


def saturation(images: Tensor, factor: Tensor) -> Tensor:
    if images.shape[1] == 1:
        return images
    return _blend(images, grey(images), factor)


ADJUSTMENTS: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (brightness, contrast, saturation)


def jitter(images: Tensor, strengths: Sequence[float], generator: torch.Generator, random_order: bool) -> Tensor:
    """``images`` with brightness, contrast and saturation jittered by ``strengths`` (in that
    order), each image in an order of its own when ``random_order`` (torchvision's ColorJitter)
    or in the fixed order (the ImageJitter of Chen et al. 2019)."""
    n = images.shape[0]
    strength = torch.tensor(list(strengths), dtype=images.dtype)
    low = (1.0 - strength).clamp(min=0.0)
    factors = low + (1.0 + strength - low) * torch.rand(n, len(ADJUSTMENTS), generator=generator, dtype=images.dtype)
    if random_order:
        order = torch.rand(n, len(ADJUSTMENTS), generator=generator).argsort(dim=1)
    else:
        order = torch.arange(len(ADJUSTMENTS)).expand(n, -1)
    out = images.clone()
    for step in range(len(ADJUSTMENTS)):
        for index, adjust in enumerate(ADJUSTMENTS):
            if strengths[index] == 0:
                continue
            chosen = order[:, step] == index
            if bool(chosen.any()):
                out[chosen] = adjust(out[chosen], factors[chosen, index])
    return out
