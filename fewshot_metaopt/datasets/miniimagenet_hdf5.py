"""miniImageNet as torchmeta stores it: ``<split>_data.hdf5`` and ``<split>_labels.json``.

torchmeta converts the learn2learn pickles (``mini-imagenet-cache-<split>.pkl``) into one
HDF5 file per split, a group ``datasets`` holding one uint8 ``600 x 84 x 84 x 3`` dataset per
class named by its synset, and a JSON list of those names, in ``root/miniimagenet/``. Those
files are read here as they are, in ``root`` or ``root/miniimagenet``; the classes and splits
are Ravi & Larochelle's, as :class:`~fewshot_metaopt.datasets.MiniImageNet` reads them from
the image folder or the pickles, and class ids agree with it (classes sorted by name, images
in stored order). Reading needs h5py (the ``hdf5`` extra). The pixels are read straight from
the file, so there is no cache; the files hold 84 x 84 images only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .base import ClassImageDataset
from .class_splits import PARTS, check_split
from .hdf5_classes import read_labels, read_split
from .image_settings import check_normalisation

NAME = "MiniImageNetHDF5"
NATIVE_SIZE = 84
FOLDER = "miniimagenet"
_FIX = "convert the learn2learn pickles again with torchmeta, or read them with MiniImageNet"


class MiniImageNetHDF5(ClassImageDataset):
    """miniImageNet from torchmeta's hdf5 files: uint8 ``(3, 84, 84)`` images, 600 a class.

    Args:
        root: the folder holding ``<split>_data.hdf5`` and ``<split>_labels.json``, or
            torchmeta's root with them in ``miniimagenet/``.
        split: ``"train"`` (64 classes), ``"val"`` (16), ``"test"`` (20) or ``"trainval"`` (80).
        image_size: must be 84, the size the files hold (kept for the constructor habits of
            the other data sets; resize with the image-folder layout of ``MiniImageNet``).
        mean, std: per-channel normalisation applied after scaling pixels to [0, 1].

    ``sources`` lists the files read.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        image_size: int = NATIVE_SIZE,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        check_split(split, NAME)
        if image_size != NATIVE_SIZE or isinstance(image_size, bool):
            raise ValueError(
                f"{NAME}: the hdf5 files hold 84x84 images, got image_size={image_size!r}; use image_size=84, "
                f"or MiniImageNet's image-folder layout for other sizes"
            )
        check_normalisation(mean, std, 3, NAME)
        self.root = Path(root).expanduser()
        self.image_size = image_size
        self.sources: list[Path] = []
        blocks: list[tuple[str, np.ndarray]] = []
        for part in PARTS[split]:
            data, labels = self._find(part)
            self.sources += [data, labels]
            stored = read_split(data, read_labels(labels, NAME, _FIX), NAME, _FIX)
            if stored.pixels is None or stored.pixels.shape[1:] != (NATIVE_SIZE, NATIVE_SIZE, 3):
                got = "encoded images" if stored.pixels is None else f"pixels of shape {stored.pixels.shape[1:]}"
                raise ValueError(
                    f"{NAME}: {data} holds {got}, not uint8 84x84x3 pixels; it is not torchmeta's miniImageNet "
                    f"file (tieredImageNet's is read by TieredImageNet)"
                )
            starts = np.concatenate([[0], np.cumsum(stored.sizes)[:-1]])
            blocks += [(n, stored.pixels[s:s + k]) for n, s, k in zip(stored.names, starts, stored.sizes)]
        names = [n for n, _ in blocks]
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"{NAME}: the class {twice!r} is in both the train and val files; they are mixed up")
        blocks.sort(key=lambda block: block[0])
        images = np.concatenate([pixels for _, pixels in blocks]).transpose(0, 3, 1, 2)
        self.split_files = [p for p in self.sources if p.suffix == ".json"]
        super().__init__(
            torch.from_numpy(np.ascontiguousarray(images)),
            [len(pixels) for _, pixels in blocks],
            [n for n, _ in blocks],
            mean=mean,
            std=std,
            name=NAME,
            split=split,
        )

    def _find(self, part: str) -> tuple[Path, Path]:
        for folder in (self.root, self.root / FOLDER):
            data, labels = folder / f"{part}_data.hdf5", folder / f"{part}_labels.json"
            if data.is_file() and labels.is_file():
                return data, labels
        where = "" if self.root.is_dir() else " (the folder does not exist)"
        raise FileNotFoundError(
            f"{NAME}: no {part}_data.hdf5 with {part}_labels.json in {self.root} or {self.root / FOLDER}{where}; "
            f"torchmeta writes them from the learn2learn pickles (miniImageNet cannot be downloaded automatically: "
            f"ImageNet's terms), or read the pickles or the image folder with MiniImageNet"
        )
