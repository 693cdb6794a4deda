"""CUB-200-2011 (Wah et al. 2011): 11,788 photographs of 200 bird species, split 100/50/50.

The split is the one of Chen et al. (2019, "A Closer Look at Few-shot Classification"), who
follow Hilliard et al. (2018): with the 200 class folders sorted by name and numbered from 0,
the even ones are train, those with number % 4 == 1 val and those with number % 4 == 3 test.
The class lists ship with the package (``datasets/splits/cub/``); they were written from that
rule, checked against Chen et al.'s ``write_CUB_filelist.py`` and equal torchmeta's CUB assets.

``root`` holds the official archive ``CUB_200_2011.tgz`` or what it extracts to,
``CUB_200_2011/images/<NNN.Species_name>/<image>.jpg`` (``root`` may also be the
``CUB_200_2011`` folder itself). Images are converted to RGB, resized to ``image_size`` x
``image_size`` with LANCZOS (the whole photograph, without the bounding box, as Chen et al.
do) and cached per split under a name derived from the source's checksum. A class keeps
all its images (41 to 60).

CUB is not downloaded automatically: get ``CUB_200_2011.tgz`` from the Caltech Vision
Lab's page (https://www.vision.caltech.edu/datasets/cub_200_2011/).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
import torch

from . import cache
from .base import ClassImageDataset
from .class_splits import packaged_split, packaged_split_path
from .download import is_safe_member
from .image_decoding import decode_all
from .image_settings import check_rgb_settings

NAME = "CUB"
ARCHIVE = "CUB_200_2011.tgz"
FOLDER = "CUB_200_2011"
HOME = "https://www.vision.caltech.edu/datasets/cub_200_2011/"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_CACHE_VERSION = "cub-v1-lanczos-rgb"
_FIX = f"replace it with the file of the official archive ({HOME})"


def _image_dir(root: Path) -> Path | None:
    for candidate in (root / FOLDER / "images", root / "images"):
        if candidate.is_dir():
            return candidate
    return None


def _is_image(name: str) -> bool:
    leaf = PurePosixPath(name).name
    return not leaf.startswith(".") and leaf.lower().endswith(IMAGE_SUFFIXES)


def _folder_images(image_dir: Path, classes: Sequence[str]) -> list[tuple[str, Path]]:
    missing = [c for c in classes if not (image_dir / c).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{NAME}: {image_dir} has no folder {missing[0]!r}"
            f"{f' (nor {len(missing) - 1} more of the split)' if len(missing) > 1 else ''}; extract the whole "
            f"official {ARCHIVE} ({HOME})"
        )
    found = []
    for name in classes:
        files = sorted(p for p in (image_dir / name).rglob("*") if p.is_file() and _is_image(p.name))
        if not files:
            raise ValueError(f"{NAME}: the class folder {image_dir / name} holds no image; {_FIX}")
        found += [(name, p) for p in files]
    return found


def _archive_images(archive: Path, classes: Sequence[str]) -> list[tuple[str, str, bytes]]:
    """``(class, member name, bytes)`` of the split's images, read in one pass over the archive."""
    wanted = set(classes)
    found: list[tuple[str, str, bytes]] = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if not is_safe_member(member.name):
                    raise ValueError(
                        f"refusing {NAME} archive {archive}: member {member.name!r} is an absolute path or "
                        f"contains '..'; the archive is corrupt or malicious"
                    )
                parts = PurePosixPath(member.name).parts
                if (member.isfile() and len(parts) >= 4 and parts[:2] == (FOLDER, "images")
                        and parts[2] in wanted and _is_image(member.name)):
                    found.append((parts[2], member.name, tar.extractfile(member).read()))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        raise ValueError(f"{NAME}: {archive} is not a readable tar.gz archive ({reason}); {_FIX}") from None
    present = {c for c, _, _ in found}
    missing = [c for c in classes if c not in present]
    if missing:
        raise ValueError(
            f"{NAME}: {archive} has no image of the class {missing[0]!r} (under {FOLDER}/images/); {_FIX}"
        )
    order = {c: i for i, c in enumerate(classes)}
    found.sort(key=lambda item: (order[item[0]], item[1]))
    return found


class CUB(ClassImageDataset):
    """CUB-200-2011 as N-way K-shot episodes of uint8 ``(3, image_size, image_size)`` images.

    Args:
        root: the folder holding ``CUB_200_2011.tgz`` or ``CUB_200_2011/images/``.
        split: ``"train"`` (100 classes), ``"val"`` (50), ``"test"`` (50) or ``"trainval"`` (150).
        cache_dir: where decoded splits are cached (default
            :func:`fewshot_metaopt.datasets.cache.default_cache_dir`).
        image_size: side of the square images (84, as Chen et al.'s Conv-4 reads them).
        mean, std: per-channel normalisation applied after scaling pixels to [0, 1].

    Class names are the folder names (``001.Black_footed_Albatross``); ``source`` is the
    archive or image folder read, ``cache_path`` the cache entry, ``split_files`` the class
    lists that define the split.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        cache_dir: str | os.PathLike | None = None,
        image_size: int = 84,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        check_rgb_settings(split, image_size, mean, std, NAME)
        self.root = Path(root).expanduser()
        self.image_size = image_size
        classes = sorted(packaged_split("cub", split, NAME))
        self.split_files = packaged_split_path("cub", split)
        image_dir = _image_dir(self.root)
        archive = self.root / ARCHIVE
        if image_dir is not None:
            self.source = image_dir
            files = _folder_images(image_dir, classes)
            digest = hashlib.sha256()
            for name, path in files:
                digest.update(path.relative_to(image_dir).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
            source_key = digest.hexdigest()
        elif archive.is_file():
            self.source = archive
            files = None
            source_key = cache.file_digest(archive, "md5")
        else:
            where = "" if self.root.is_dir() else " (the folder does not exist)"
            raise FileNotFoundError(
                f"{NAME}: neither {archive} nor {self.root / FOLDER / 'images'} exists{where}; CUB is not "
                f"downloaded automatically: get {ARCHIVE} from {HOME} and put it (or what it extracts to) in root"
            )
        key = cache.key_of([_CACHE_VERSION, split, source_key, f"image_size={image_size}"])
        self.cache_path = cache.resolve_cache_dir(cache_dir) / "cub" / f"{split}-{image_size}px-{key}.npz"

        def build() -> dict[str, np.ndarray]:
            if files is not None:
                labels = [name for name, _ in files]
                pixels = decode_all(len(files), lambda i: (files[i][1], f"image {files[i][1]}"), image_size,
                                    "RGB", NAME, _FIX)
            else:
                members = _archive_images(archive, classes)
                labels = [name for name, _, _ in members]
                pixels = decode_all(len(members), lambda i: (members[i][2], f"member {members[i][1]!r} of {archive}"),
                                    image_size, "RGB", NAME, _FIX)
            return {
                "images": pixels,
                "class_names": np.array(classes, dtype=np.str_),
                "group_sizes": np.array([labels.count(c) for c in classes], dtype=np.int64),
            }

        def check(arrays: dict[str, np.ndarray]) -> str | None:
            images = arrays["images"]
            if images.dtype != np.uint8 or images.shape[1:] != (3, image_size, image_size):
                return f"images are {images.dtype} {images.shape}, expected uint8 (N, 3, {image_size}, {image_size})"
            if arrays["class_names"].tolist() != classes or int(arrays["group_sizes"].sum()) != images.shape[0]:
                return f"its classes are not those of the {split} split"
            return None

        arrays = cache.cached(self.cache_path, build, NAME, check)
        super().__init__(
            torch.from_numpy(arrays["images"]),
            arrays["group_sizes"].tolist(),
            classes,
            mean=mean,
            std=std,
            name=NAME,
            split=split,
        )
