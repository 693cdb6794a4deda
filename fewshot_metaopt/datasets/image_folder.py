"""Your own images as a few-shot data set: ``root/<class>/<image>``, as torchvision's ImageFolder.

Every non-hidden folder directly under ``root`` is a class, named by the folder; its images
are the image files anywhere below it (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif``,
``.tif``, ``.tiff``, ``.webp``, ``.ppm``, ``.pgm``; other files are ignored). Which classes a
split holds:

* ``split="all"``: every class.
* class-list files: ``splits_dir/<split>.txt`` names the classes of ``train``, ``val`` and
  ``test`` (``trainval`` reads train and val), one a line; the files present must not share a
  class.
* otherwise a seeded class split: the sorted class names shuffled with ``seed`` and cut by
  ``split_fractions`` (train, val, test; default 0.6/0.2/0.2), the same on every machine
  (see :func:`~fewshot_metaopt.datasets.class_splits.seeded_split`).

Images are decoded once (RGB or grayscale, LANCZOS to ``image_size`` x ``image_size``) into a
cache entry per split, named by a checksum of the split's files and the settings, as
Omniglot's and miniImageNet's are; a changed, added or removed image builds a new entry.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import cache
from .base import ClassImageDataset
from .class_splits import DEFAULT_FRACTIONS, PARTS, SPLITS, check_fractions, check_split, read_class_list, seeded_split
from .image_decoding import decode_files
from .image_settings import check_channels, check_image_size, check_normalisation

NAME = "ImageFolder"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_CACHE_VERSION = "image-folder-v1-lanczos"
_FIX = "replace or remove that file"


def _class_folders(root: Path, exclude: Path | None) -> list[str]:
    if not root.is_dir():
        raise FileNotFoundError(
            f"{NAME}: {root} is not a folder; point root at the folder holding one subfolder per class "
            f"(root/<class>/<image>)"
        )
    names = sorted(
        p.name for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (exclude is None or p.resolve() != exclude.resolve())
    )
    if not names:
        raise ValueError(f"{NAME}: {root} has no class folders; expected root/<class>/<image>")
    return names


def _images_of(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


class ImageFolder(ClassImageDataset):
    """A folder of class subfolders as N-way K-shot episodes of uint8 ``(channels, S, S)`` images.

    Args:
        root: the folder holding one subfolder per class.
        split: ``"all"``, ``"train"``, ``"val"``, ``"test"`` or ``"trainval"``.
        splits_dir: folder of class-list files ``train.txt``, ``val.txt``, ``test.txt``; when
            given, the split is read from them (a folder inside ``root`` is not a class).
        split_fractions: train, val and test shares of the seeded split (without ``splits_dir``).
        seed: the seeded split's seed.
        cache_dir: where decoded splits are cached (default
            :func:`fewshot_metaopt.datasets.cache.default_cache_dir`).
        image_size: side of the square images.
        channels: 3 (RGB) or 1 (grayscale).
        mean, std: per-channel normalisation applied after scaling pixels to [0, 1].

    ``split_files`` lists the class-list files read; ``cache_path`` is the cache entry.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "all",
        splits_dir: str | os.PathLike | None = None,
        split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        image_size: int = 84,
        channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        check_split(split, NAME, ("all",))
        check_image_size(image_size, NAME)
        mode = check_channels(channels, NAME)
        check_normalisation(mean, std, channels, NAME)
        check_fractions(split_fractions, NAME)
        self.root = Path(root).expanduser()
        self.image_size, self.channels = image_size, channels
        self.splits_dir = None if splits_dir is None else Path(splits_dir).expanduser()
        available = _class_folders(self.root, self.splits_dir)
        self.split_files: list[Path] = []
        if split == "all":
            classes = available
        elif self.splits_dir is not None:
            classes = self._listed(split, available)
        else:
            classes = seeded_split(available, split, split_fractions, seed, NAME)
        files: list[Path] = []
        sizes: list[int] = []
        for name in classes:
            found = _images_of(self.root / name)
            if not found:
                raise ValueError(
                    f"{NAME}: the class folder {self.root / name} holds no image ({', '.join(IMAGE_SUFFIXES)}); "
                    f"add its images or remove the folder"
                )
            files += found
            sizes.append(len(found))
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.relative_to(self.root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
        key = cache.key_of([_CACHE_VERSION, digest.hexdigest(), f"image_size={image_size}", f"mode={mode}"])
        label = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.root.name) or "root"
        self.cache_path = cache.resolve_cache_dir(cache_dir) / "image_folder" / (
            f"{label}-{split}-{image_size}px-{mode}-{key}.npz")
        shape = (len(files), channels, image_size, image_size)

        def build() -> dict[str, np.ndarray]:
            return {"images": decode_files(files, image_size, mode, NAME, _FIX)}

        def check(arrays: dict[str, np.ndarray]) -> str | None:
            images = arrays["images"]
            if images.dtype != np.uint8 or images.shape != shape:
                return f"images are {images.dtype} {images.shape}, the split needs uint8 {shape}"
            return None

        images = cache.cached(self.cache_path, build, NAME, check)["images"]
        super().__init__(torch.from_numpy(images), sizes, classes, mean=mean, std=std, name=NAME, split=split)

    def _listed(self, split: str, available: list[str]) -> list[str]:
        """The classes the class-list files give ``split``, checked against the folders and each other."""
        assert self.splits_dir is not None
        owner: dict[str, Path] = {}
        for part in SPLITS[:3]:
            path = self.splits_dir / f"{part}.txt"
            if not path.is_file() and part not in PARTS[split]:
                continue  # another split's file may be absent; this split's must exist (read_class_list says so)
            for name in read_class_list(path, NAME):
                if name in owner:
                    raise ValueError(
                        f"{NAME}: the class {name!r} is listed in both {owner[name]} and {path}; a class belongs "
                        f"to one split"
                    )
                owner[name] = path
        chosen = [n for n, path in owner.items() if path.stem in PARTS[split]]
        missing = [n for n in chosen if n not in available]
        if missing:
            raise ValueError(
                f"{NAME}: {owner[missing[0]]} lists the class {missing[0]!r}, which has no folder in {self.root}; "
                f"fix the class-list file or add the folder"
            )
        self.split_files = [self.splits_dir / f"{part}.txt" for part in PARTS[split]]
        return sorted(chosen)
