"""The natural-image augmentations of the few-shot papers: a random crop, colour jitter and a
horizontal flip, with torch ops (no torchvision).

Both are drawn per image: the papers apply them in the data set's ``__getitem__``, once for
every image read, so the images of one class are cropped, jittered and flipped each its own
way (and that variety within a class is what the augmentation adds).

* :class:`CropFlipJitter`: MetaOptNet's (Lee et al. 2019) training transform for
  miniImageNet, tieredImageNet, CIFAR-FS and FC100: ``RandomCrop(size, padding)``,
  ``ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)``, ``RandomHorizontalFlip()``.
* :class:`ResizedCropFlipJitter`: Chen et al.'s (2019, "A Closer Look at Few-shot
  Classification") for CUB and miniImageNet: ``RandomResizedCrop(size)`` (8%-100% of the
  area, aspect ratio 3/4-4/3, bilinear), ``ImageJitter`` (brightness, contrast, colour 0.4, in
  that order) and ``RandomHorizontalFlip()``. Our images are already at the episode's size,
  so the crop is taken from them and scaled back up; theirs is taken from the photograph.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import checks
from .augmentation import PER_IMAGE, Augmentation
from .colour_jitter import jitter

# MetaOptNet pads CIFAR's 32-pixel images by 4 and miniImageNet's 84-pixel ones by 8.
SMALL_IMAGE_PADDING = 4
LARGE_IMAGE_PADDING = 8
LARGE_IMAGE = 64
# torchvision's RandomResizedCrop tries this many boxes before falling back to the whole image.
CROP_ATTEMPTS = 10


def _strengths(owner: str, brightness: float, contrast: float, saturation: float) -> tuple[float, float, float]:
    return tuple(checks.real(name, value, 0.0, owner=owner)
                 for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)))


def draw_flips(n: int, generator: torch.Generator) -> Tensor:
    """Which of ``n`` images to mirror left to right: each with probability 1/2."""
    return torch.rand(n, generator=generator) < 0.5


def padded_crop(images: Tensor, padding: int, flips: Tensor, generator: torch.Generator) -> Tensor:
    """Each image padded with black by ``padding`` on every side and cropped back to its size
    at an offset of its own (torchvision's ``RandomCrop(size, padding)``), mirrored where
    ``flips`` says."""
    n, _, h, w = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).tolist()
    padded = F.pad(images, (padding, padding, padding, padding))
    # A slice per image: a batched gather of the same windows is several times slower on a CPU.
    crops = [padded[i, :, top : top + h, left : left + w] for i, (top, left) in enumerate(offsets)]
    return torch.stack([crop.flip(-1) if flip else crop for crop, flip in zip(crops, flips.tolist())])


def resized_crop_boxes(n: int, h: int, w: int, scale: Sequence[float], ratio: Sequence[float],
                       generator: torch.Generator) -> Tensor:
    """``(n, 4)`` boxes ``(top, left, height, width)`` drawn as torchvision's
    ``RandomResizedCrop.get_params``: the first of ``CROP_ATTEMPTS`` boxes of a uniform share of
    the area and a log-uniform aspect ratio that fits, else the central box of the nearest ratio."""
    area = torch.rand(n, CROP_ATTEMPTS, generator=generator, dtype=torch.float64)
    area = h * w * (scale[0] + (scale[1] - scale[0]) * area)
    log_ratio = torch.rand(n, CROP_ATTEMPTS, generator=generator, dtype=torch.float64)
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * log_ratio)
    widths = torch.sqrt(area * aspect).round().long()
    heights = torch.sqrt(area / aspect).round().long()
    fits = (widths >= 1) & (widths <= w) & (heights >= 1) & (heights <= h)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    found = fits.any(dim=1)
    if w / h < ratio[0]:
        fallback = (round(w / ratio[0]), w)
    elif w / h > ratio[1]:
        fallback = (h, round(h * ratio[1]))
    else:
        fallback = (h, w)
    height = torch.where(found, heights.gather(1, first).squeeze(1), fallback[0])
    width = torch.where(found, widths.gather(1, first).squeeze(1), fallback[1])
    where = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = torch.where(found, (where[:, 0] * (h - height + 1)).floor().long(), (h - height) // 2)
    left = torch.where(found, (where[:, 1] * (w - width + 1)).floor().long(), (w - width) // 2)
    return torch.stack([top, left, height, width], dim=1)


def resized_crop(images: Tensor, boxes: Tensor, flips: Tensor) -> Tensor:
    """Each image's box scaled to the image's size as torchvision's ``resized_crop`` does
    (bilinear, antialiased), mirrored where ``flips`` says (before scaling, which is the same)."""
    _, _, h, w = images.shape
    out = torch.empty_like(images)
    for i, ((top, left, height, width), flip) in enumerate(zip(boxes.tolist(), flips.tolist())):
        crop = images[i : i + 1, :, top : top + height, left : left + width]
        crop = crop.flip(-1) if flip else crop
        out[i : i + 1] = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0)


class CropFlipJitter(Augmentation):
    """MetaOptNet's random crop with padding, colour jitter and flip, per image (module docstring).

    Args:
        padding: black border added on each side before cropping; default 4 pixels for
            images up to 64 pixels (CIFAR's 32) and 8 above (miniImageNet's 84), as MetaOptNet.
        brightness, contrast, saturation: jitter strengths (0 turns one off).
    """

    name = "crop_flip_jitter"
    per = PER_IMAGE

    def __init__(self, padding: int | None = None, brightness: float = 0.4, contrast: float = 0.4,
                 saturation: float = 0.4) -> None:
        owner = type(self).__name__
        self.padding = None if padding is None else checks.integer("padding", padding, 0, owner=owner)
        self.strengths = _strengths(owner, brightness, contrast, saturation)

    def padding_for(self, size: int) -> int:
        if self.padding is not None:
            return self.padding
        return LARGE_IMAGE_PADDING if size > LARGE_IMAGE else SMALL_IMAGE_PADDING

    def __call__(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        # Flipped with the crop, before the jitter: the jitter is blind to where a pixel is.
        flips = draw_flips(images.shape[0], generator)
        images = padded_crop(images, self.padding_for(max(images.shape[-2:])), flips, generator)
        return jitter(images, self.strengths, generator, random_order=True)

    def settings(self) -> dict[str, Any]:
        brightness, contrast, saturation = self.strengths
        return {"padding": self.padding, "brightness": brightness, "contrast": contrast, "saturation": saturation}


class ResizedCropFlipJitter(Augmentation):
    """Chen et al.'s random resized crop, colour jitter and flip, per image (module docstring).

    Args:
        scale: the range of the crop's share of the image's area.
        ratio: the range of the crop's aspect ratio (width / height), drawn log-uniformly.
        brightness, contrast, saturation: jitter strengths (0 turns one off).
    """

    name = "resized_crop_flip_jitter"
    per = PER_IMAGE

    def __init__(self, scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4) -> None:
        owner = type(self).__name__
        self.scale = self._range(owner, "scale", scale, 1.0)
        self.ratio = self._range(owner, "ratio", ratio, math.inf)
        self.strengths = _strengths(owner, brightness, contrast, saturation)

    @staticmethod
    def _range(owner: str, key: str, value: Sequence[float], high: float) -> tuple[float, float]:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
            raise ValueError(f"{owner} needs a {key} of two numbers (low, high), got {value!r}")
        low_value, high_value = (checks.real(key, v, 0.0, high, owner=owner) for v in value)
        if not 0 < low_value <= high_value:
            raise ValueError(f"{owner} needs a {key} with 0 < low <= high, got {tuple(value)!r}")
        return low_value, high_value

    def __call__(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        n, _, h, w = images.shape
        flips = draw_flips(n, generator)
        images = resized_crop(images, resized_crop_boxes(n, h, w, self.scale, self.ratio, generator), flips)
        return jitter(images, self.strengths, generator, random_order=False)

    def settings(self) -> dict[str, Any]:
        brightness, contrast, saturation = self.strengths
        return {"scale": list(self.scale), "ratio": list(self.ratio), "brightness": brightness,
                "contrast": contrast, "saturation": saturation}
