"""Any labelled ``torch.utils.data.Dataset`` of images as a few-shot data set.

A dataset whose items are ``(image, label)`` pairs (torchvision's datasets, a user's own
class) is read once, item by item, into uint8 pixels grouped by label: a
:class:`~fewshot_metaopt.datasets.ClassImageDataset`, whose episodes are drawn as those of
the built-in data sets are. Its classes can be split with the same seeded class split as
:class:`~fewshot_metaopt.datasets.ImageFolder`. Nothing is cached (the dataset has no files
to name the cache by); all images must have one shape (resize them in the dataset's
transform).

Image conventions: a PIL image, or a NumPy array ``(H, W)`` / ``(H, W, C)`` as PIL and NumPy
store pixels; a torch tensor ``(C, H, W)`` or ``(H, W)`` as torch does. uint8 values are taken
as they are; floating values must lie in [0, 1] (``ToTensor()``'s output) and are rounded to
uint8.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .base import ClassImageDataset
from .class_splits import DEFAULT_FRACTIONS, check_split, seeded_split
from .image_settings import check_normalisation


def _pixels(image: Any, index: int, name: str) -> np.ndarray:
    """Item ``index``'s image as uint8 ``(C, H, W)``."""
    if isinstance(image, Image.Image):
        array = np.asarray(image)
        chw = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        chw = (tensor[None] if tensor.dim() == 2 else tensor).numpy()
        if chw.ndim != 3:
            raise ValueError(
                f"{name}: item {index}'s image is a tensor of shape {tuple(tensor.shape)}, expected (C, H, W)"
            )
    elif isinstance(image, np.ndarray):
        if image.ndim not in (2, 3):
            raise ValueError(f"{name}: item {index}'s image is an array of shape {image.shape}, expected (H, W[, C])")
        chw = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
    else:
        raise TypeError(
            f"{name}: item {index}'s image is a {type(image).__name__}; expected a PIL image, a NumPy array or a "
            f"torch tensor (apply a transform that returns one)"
        )
    if chw.dtype == np.uint8:
        return np.ascontiguousarray(chw)
    if chw.dtype.kind == "f":
        if chw.size and (not np.isfinite(chw).all() or chw.min() < 0 or chw.max() > 1):
            raise ValueError(
                f"{name}: item {index}'s image has values outside [0, 1] ({float(np.nanmin(chw)):.3g} to "
                f"{float(np.nanmax(chw)):.3g}); give uint8 pixels or ToTensor()'s [0, 1] floats, not normalised ones"
            )
        return np.rint(chw * 255.0).astype(np.uint8)
    raise ValueError(f"{name}: item {index}'s image has dtype {chw.dtype}; expected uint8 or floats in [0, 1]")


def _label(label: Any, index: int, name: str) -> int:
    if isinstance(label, torch.Tensor) and label.numel() == 1 and not label.is_floating_point():
        return int(label.item())
    if isinstance(label, numbers.Integral) and not isinstance(label, bool):
        return int(label)
    raise TypeError(f"{name}: item {index}'s label is {label!r}; expected an integer class id")


def from_labelled_dataset(
    dataset: Any,
    split: str = "all",
    split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    name: str = "LabelledDataset",
) -> ClassImageDataset:
    """The images of ``dataset`` grouped by label, as a few-shot data set.

    Args:
        dataset: anything with ``len()`` and ``dataset[i] -> (image, label)``.
        split: ``"all"`` (every label), or ``"train"``, ``"val"``, ``"test"``, ``"trainval"``
            of the seeded class split of :func:`~fewshot_metaopt.datasets.class_splits.seeded_split`
            over the class names (so ``ImageFolder`` and this agree on the same names).
        split_fractions, seed: the seeded split's train/val/test shares and seed.
        class_names: the name of each label (``class_names[label]``); default
            ``dataset.classes`` when it has one (torchvision's datasets do), else the label as text.
        mean, std: per-channel normalisation applied after scaling pixels to [0, 1].
        name: what the data set is called in its ``repr`` and errors.

    Classes are ordered by label; images keep the dataset's order within a class.
    """
    check_split(split, name, ("all",))
    try:
        count = len(dataset)
    except TypeError:
        raise TypeError(
            f"{name}: the dataset has no len(); pass a map-style dataset (dataset[i] -> (image, label))"
        ) from None
    if count == 0:
        raise ValueError(f"{name}: the dataset is empty")
    names_of = list(class_names) if class_names is not None else getattr(dataset, "classes", None)
    images: list[np.ndarray] = []
    labels: list[int] = []
    for index in range(count):
        item = dataset[index]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise TypeError(f"{name}: item {index} is a {type(item).__name__}, expected an (image, label) pair")
        pixels = _pixels(item[0], index, name)
        if images and pixels.shape != images[0].shape:
            raise ValueError(
                f"{name}: item {index}'s image is {pixels.shape[1:]} with {pixels.shape[0]} channel(s), item 0's "
                f"{images[0].shape[1:]} with {images[0].shape[0]}; resize them to one shape in the dataset's transform"
            )
        images.append(pixels)
        labels.append(_label(item[1], index, name))
    present = sorted(set(labels))

    def label_name(label: int) -> str:
        if names_of is None:
            return str(label)
        if not 0 <= label < len(names_of):
            raise ValueError(f"{name}: label {label} has no name in class_names ({len(names_of)} names)")
        return str(names_of[label])

    named = {label_name(label): label for label in present}
    if len(named) != len(present):
        raise ValueError(f"{name}: class_names gives two labels the same name; names must be distinct")
    if split == "all":
        chosen = present
    else:
        chosen = sorted(named[n] for n in seeded_split(list(named), split, split_fractions, seed, name))
    check_normalisation(mean, std, images[0].shape[0], name)
    label_array = np.asarray(labels)
    order = np.concatenate([np.flatnonzero(label_array == label) for label in chosen])
    stacked = np.stack([images[i] for i in order])
    return ClassImageDataset(
        torch.from_numpy(stacked),
        [int((label_array == label).sum()) for label in chosen],
        [label_name(label) for label in chosen],
        mean=mean,
        std=std,
        name=name,
        split=split,
    )
