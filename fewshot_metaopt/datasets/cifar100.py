"""CIFAR-100 (Krizhevsky 2009) as the source of CIFAR-FS and FC100: the python archive, read safely.

``cifar-100-python.tar.gz`` (md5 ``eb9058c3a382ffc7106e4002c42a8d85``) holds
``cifar-100-python/train`` (50,000 images), ``test`` (10,000) and ``meta``: Python 2 pickles
of dicts with ``data`` (uint8 ``N x 3072``, the red, green and blue 32 x 32 planes of each
image), ``fine_labels`` (100 classes), ``coarse_labels`` (20 superclasses) and, in ``meta``,
``fine_label_names`` and ``coarse_label_names``. The few-shot benchmarks split the 100 classes,
not the images: each class keeps all its 600 images, its 500 training images first, then its
100 test images.

The archive (or its extracted folder ``cifar-100-python/``) is read once by a restricted
unpickler (:mod:`.safe_pickle`), its members' names are checked for absolute paths and
``..``, and the images, grouped by class (resized with LANCZOS when ``image_size`` is not 32),
are cached under a name derived from the archive's checksum.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from . import cache
from .base import ClassImageDataset
from .class_splits import packaged_split, packaged_split_path
from .download import check_members, download_file
from .image_settings import check_rgb_settings
from .safe_pickle import load_numpy_pickle, load_numpy_pickle_from, text_keys

NAME = "CIFAR-100"
ARCHIVE = "cifar-100-python.tar.gz"
FOLDER = "cifar-100-python"
ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
DEFAULT_BASE_URL = "https://www.cs.toronto.edu/~kriz/"
HOME = "https://www.cs.toronto.edu/~kriz/cifar.html"
NATIVE_SIZE = 32
FINE_CLASSES, COARSE_CLASSES = 100, 20
# Bumped whenever what is cached changes, so that older cache entries are not read back.
_CACHE_VERSION = "cifar100-v1"
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def _fix() -> str:
    return f"delete it and pass download=True, or fetch {ARCHIVE} from {HOME}"


def locate(root: Path) -> tuple[str, Path]:
    """``("archive", path)`` or ``("folder", path)``: what ``root`` holds of CIFAR-100."""
    archive, folder = root / ARCHIVE, root / FOLDER
    if archive.is_file():
        return "archive", archive
    if folder.is_dir():
        return "folder", folder
    raise FileNotFoundError(
        f"{NAME}: neither {archive} nor the folder {folder} exists; pass download=True (md5-checked, "
        f"161 MB) or put {ARCHIVE} from {HOME} in {root}"
    )


def download_archive(root: str | os.PathLike, base_url: str | None = None) -> Path | None:
    """Fetch ``cifar-100-python.tar.gz`` into ``root`` unless it (or its folder) is there.

    The download is md5-checked against :data:`ARCHIVE_MD5` (a mirror given by ``base_url``
    must hold the official file), refused if it is an HTML page, and renamed into place only
    when whole. Returns the path fetched, or None when nothing was.
    """
    root = Path(root).expanduser()
    if (root / ARCHIVE).is_file() or (root / FOLDER).is_dir():
        return None
    base = (base_url or DEFAULT_BASE_URL).rstrip("/") + "/"
    return download_file(base + ARCHIVE, root / ARCHIVE, md5=ARCHIVE_MD5)


def _read_members(kind: str, source: Path) -> dict[str, object]:
    """The unpickled ``train``, ``test`` and ``meta`` of the archive or folder."""
    wanted = ("train", "test", "meta")
    if kind == "folder":
        out = {}
        for member in wanted:
            path = source / member
            if not path.is_file():
                raise FileNotFoundError(
                    f"{NAME}: {path} does not exist; the folder {source} must hold train, test and meta "
                    f"as extracted from {ARCHIVE}"
                )
            out[member] = load_numpy_pickle(path, NAME, "a CIFAR-100 python batch")
        return out
    try:
        with tarfile.open(source, "r:gz") as tar:
            members = tar.getmembers()
            check_members([m.name for m in members], f"{NAME} archive {source}")
            by_name = {m.name: m for m in members if m.isfile()}
            missing = [f"{FOLDER}/{m}" for m in wanted if f"{FOLDER}/{m}" not in by_name]
            if missing:
                raise ValueError(
                    f"{NAME}: {source} has no member {missing[0]!r}; it is not the CIFAR-100 python archive: {_fix()}"
                )
            out = {}
            for member in wanted:
                name = f"{FOLDER}/{member}"
                handle = tar.extractfile(by_name[name])
                out[member] = load_numpy_pickle_from(
                    handle, f"member {name!r} of {source}", NAME, "a CIFAR-100 python batch"
                )
            return out
    except _ARCHIVE_ERRORS as err:
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        raise ValueError(f"{NAME}: {source} is not a readable tar.gz archive ({reason}); {_fix()}") from None


def _batch(data: object, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pixels (N, 3, 32, 32), fine labels, coarse labels)`` of one unpickled batch."""
    if not isinstance(data, dict):
        raise ValueError(f"{NAME}: {where} holds a {type(data).__name__}, expected a dict; {_fix()}")
    data = text_keys(data)
    missing = [k for k in ("data", "fine_labels", "coarse_labels") if k not in data]
    if missing:
        raise ValueError(f"{NAME}: {where} lacks {', '.join(map(repr, missing))}; {_fix()}")
    pixels = data["data"]
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3072:
        got = f"{pixels.dtype} {pixels.shape}" if isinstance(pixels, np.ndarray) else type(pixels).__name__
        raise ValueError(f"{NAME}: {where} data is {got}, expected uint8 (N, 3072); {_fix()}")
    labels = []
    for key, bound in (("fine_labels", FINE_CLASSES), ("coarse_labels", COARSE_CLASSES)):
        values = np.asarray(data[key])
        if values.shape != (pixels.shape[0],) or values.dtype.kind not in "iu":
            raise ValueError(
                f"{NAME}: {where} {key} must be {pixels.shape[0]} integers, one per image, got "
                f"{values.dtype} {values.shape}; {_fix()}"
            )
        if values.size and (int(values.min()) < 0 or int(values.max()) >= bound):
            raise ValueError(f"{NAME}: {where} {key} must lie in 0..{bound - 1}; {_fix()}")
        labels.append(values.astype(np.int64))
    return pixels.reshape(-1, 3, NATIVE_SIZE, NATIVE_SIZE), labels[0], labels[1]


def _names(meta: object, key: str, count: int, where: str) -> list[str]:
    meta = text_keys(meta) if isinstance(meta, dict) else {}
    names = meta.get(key)
    if not isinstance(names, (list, tuple)) or len(names) != count:
        raise ValueError(f"{NAME}: {where} needs {key} with {count} names; {_fix()}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    out = np.empty((images.shape[0], 3, size, size), dtype=np.uint8)
    for i, pixels in enumerate(images):
        im = Image.fromarray(pixels.transpose(1, 2, 0)).resize((size, size), resample=Image.Resampling.LANCZOS)
        out[i] = np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    return out


def _build(kind: str, source: Path, image_size: int) -> dict[str, np.ndarray]:
    members = _read_members(kind, source)
    where = {m: (f"{source}/{m}" if kind == "folder" else f"member '{FOLDER}/{m}' of {source}") for m in members}
    train = _batch(members["train"], where["train"])
    test = _batch(members["test"], where["test"])
    fine_names = _names(members["meta"], "fine_label_names", FINE_CLASSES, where["meta"])
    coarse_names = _names(members["meta"], "coarse_label_names", COARSE_CLASSES, where["meta"])
    pixels = np.concatenate([train[0], test[0]])
    fine = np.concatenate([train[1], test[1]])
    coarse = np.concatenate([train[2], test[2]])
    # Stable: within a class, its training images first, then its test images, in file order.
    order = np.argsort(fine, kind="stable")
    sizes = np.bincount(fine, minlength=FINE_CLASSES)
    superclass = np.full(FINE_CLASSES, -1, dtype=np.int64)
    for label in range(FINE_CLASSES):
        owners = np.unique(coarse[fine == label])
        if len(owners) > 1:
            raise ValueError(
                f"{NAME}: class {fine_names[label]!r} of {source} has images in {len(owners)} superclasses; "
                f"the batches are inconsistent: {_fix()}"
            )
        if len(owners):
            superclass[label] = owners[0]
    images = pixels[order]
    if image_size != NATIVE_SIZE:
        images = _resize(images, image_size)
    return {
        "images": images,
        "group_sizes": sizes.astype(np.int64),
        "fine_names": np.array(fine_names, dtype=np.str_),
        "coarse_names": np.array(coarse_names, dtype=np.str_),
        "superclass": superclass,
    }


def load(
    root: str | os.PathLike, cache_dir: str | os.PathLike | None = None, image_size: int = NATIVE_SIZE
) -> tuple[dict[str, np.ndarray], Path, Path]:
    """Every CIFAR-100 image grouped by fine class, from the cache or read (and then cached).

    Returns ``(arrays, source, cache_entry)``: ``images`` uint8 ``(60000, 3, S, S)``,
    ``group_sizes`` (images per fine class, in fine-label order), ``fine_names``,
    ``coarse_names`` and ``superclass`` (the coarse label of each fine class).
    """
    kind, source = locate(Path(root).expanduser())
    digest = cache.file_digest(source, "md5") if kind == "archive" else cache.tree_digest(source)
    key = cache.key_of([_CACHE_VERSION, kind, digest, f"image_size={image_size}"])
    entry = cache.resolve_cache_dir(cache_dir) / f"cifar100-{image_size}px-{key}.npz"

    def check(arrays: dict[str, np.ndarray]) -> str | None:
        images, sizes = arrays["images"], arrays["group_sizes"]
        if images.dtype != np.uint8 or images.shape[1:] != (3, image_size, image_size):
            return f"images are {images.dtype} {images.shape}, expected uint8 (N, 3, {image_size}, {image_size})"
        if sizes.shape != (FINE_CLASSES,) or int(sizes.sum()) != images.shape[0]:
            return f"its group sizes do not add up to its {images.shape[0]} images"
        if arrays["fine_names"].shape != (FINE_CLASSES,) or arrays["superclass"].shape != (FINE_CLASSES,):
            return "it does not name 100 classes and their superclasses"
        return None

    arrays = cache.cached(entry, lambda: _build(kind, source, image_size), NAME, check)
    return arrays, source, entry


class CIFAR100Classes(ClassImageDataset):
    """A few-shot split of CIFAR-100's classes; :class:`CIFARFS` and :class:`FC100` say which.

    A subclass names its ``SPLITS`` folder of class lists shipped with the package and their
    ``LEVEL``: ``"fine"`` lists classes, ``"coarse"`` lists superclasses, each standing for its
    five classes. Class ids follow fine-label (alphabetical) order; each class holds its 600
    images. ``superclasses`` gives each class's superclass.
    """

    NAME = NAME
    SPLITS = ""
    LEVEL = "fine"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        download: bool = False,
        cache_dir: str | os.PathLike | None = None,
        image_size: int = NATIVE_SIZE,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        base_url: str | None = None,
    ) -> None:
        check_rgb_settings(split, image_size, mean, std, self.NAME)
        self.root = Path(root).expanduser()
        self.image_size = image_size
        if download:
            download_archive(self.root, base_url)
        arrays, self.source, self.cache_path = load(self.root, cache_dir, image_size)
        fine_names = [str(n) for n in arrays["fine_names"]]
        coarse_names = [str(n) for n in arrays["coarse_names"]]
        superclass_of = {f: coarse_names[int(c)] for f, c in zip(fine_names, arrays["superclass"])}
        listed = packaged_split(self.SPLITS, split, self.NAME)
        known = fine_names if self.LEVEL == "fine" else coarse_names
        unknown = [n for n in listed if n not in known]
        if unknown:
            raise ValueError(
                f"{self.NAME}: split {split!r} names {unknown[0]!r}, which is not a CIFAR-100 "
                f"{'class' if self.LEVEL == 'fine' else 'superclass'} of {self.source}; is this the "
                f"CIFAR-100 python archive?"
            )
        chosen = [i for i, f in enumerate(fine_names)
                  if (f if self.LEVEL == "fine" else superclass_of[f]) in set(listed)]
        sizes = arrays["group_sizes"]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        index = np.concatenate([np.arange(starts[c], starts[c] + sizes[c]) for c in chosen])
        self.superclasses = [superclass_of[fine_names[c]] for c in chosen]
        self.split_files = packaged_split_path(self.SPLITS, split)
        super().__init__(
            torch.from_numpy(arrays["images"][index]),
            [int(sizes[c]) for c in chosen],
            [fine_names[c] for c in chosen],
            mean=mean,
            std=std,
            name=self.NAME,
            split=split,
        )
