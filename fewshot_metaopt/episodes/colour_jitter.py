"""Colour jitter on a batch of images in [0, 1], with torchvision's formulas, one draw per image.

Each adjustment blends an image with something by a factor ``f`` and clamps to [0, 1]:
brightness with black (``f x``), contrast with the mean of the image's grey levels, saturation
with each pixel's grey level (``0.2989 R + 0.587 G + 0.114 B``, as
``torchvision.transforms.functional.rgb_to_grayscale``; a grayscale image has no saturation to
change). Each image draws its own factors, uniform in ``[max(0, 1 - s), 1 + s]`` for strength
``s`` (``s = 0`` leaves the images exactly as they are), as torchvision's ``ColorJitter`` and
PIL's ``ImageEnhance`` do. Hue is not jittered: the papers these augmentations follow leave it.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

GREY_WEIGHTS = (0.2989, 0.587, 0.114)
# The columns of the factors and the entries of an order.
BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2
ADJUSTMENTS = ("brightness", "contrast", "saturation")


def grey(images: Tensor) -> Tensor:
    """``(n, 1, H, W)``: the grey level of each pixel (the image itself when it has one channel)."""
    if images.shape[1] == 1:
        return images
    weights = torch.tensor(GREY_WEIGHTS, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def adjust(images: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """``images`` adjusted by ``factors`` (``(n, 3)``: brightness, contrast, saturation per
    image), image ``i`` in the order ``order[i]`` (a permutation of 0, 1, 2)."""
    n = images.shape[0]
    if images.shape[1] == 1:
        factors = factors.clone()
        factors[:, SATURATION] = 1.0  # a grey pixel is its own grey level
    out = images
    # One blend per step for the whole batch: each image blends with what its own adjustment
    # at this step blends with.
    for step in range(len(ADJUSTMENTS)):
        kind = order[:, step].view(n, 1, 1, 1)
        factor = factors.gather(1, order[:, step : step + 1]).view(n, 1, 1, 1)
        levels = grey(out)
        target = torch.where(kind == SATURATION, levels, levels.mean(dim=(1, 2, 3), keepdim=True))
        target = torch.where(kind == BRIGHTNESS, torch.zeros((), dtype=out.dtype), target)
        # lerp is f * out + (1 - f) * target in one pass, and exactly ``out`` at f = 1.
        out = torch.lerp(target, out, factor).clamp_(0.0, 1.0)
    return out


def jitter(images: Tensor, strengths: Sequence[float], generator: torch.Generator, random_order: bool) -> Tensor:
    """``images`` with brightness, contrast and saturation jittered by ``strengths``, each image
    with factors of its own, in an order of its own when ``random_order`` (torchvision's
    ColorJitter) or in that fixed order (the ImageJitter of Chen et al. 2019)."""
    n = images.shape[0]
    strength = torch.tensor(list(strengths), dtype=images.dtype)
    low = (1.0 - strength).clamp(min=0.0)
    factors = low + (1.0 + strength - low) * torch.rand(n, len(ADJUSTMENTS), generator=generator, dtype=images.dtype)
    if random_order:
        order = torch.rand(n, len(ADJUSTMENTS), generator=generator).argsort(dim=1)
    else:
        order = torch.arange(len(ADJUSTMENTS)).expand(n, -1)
    return adjust(images, factors, order)
