"""tieredImageNet (Ren et al. 2018): 608 ImageNet classes grouped into 34 categories, split by
category into 351 train, 97 val and 160 test classes (20, 6 and 8 categories), 84 x 84 images.

Three on-disk forms are read, whichever ``root`` holds (checked in this order):

* **Ren et al.'s pickles**, as the authors released them (``tiered-imagenet.tar``) and as
  learn2learn unpacks them into ``tiered-imagenet/``: ``<split>_images_png.pkl``, a list of
  PNG-encoded images (uint8 arrays or bytes), and ``<split>_labels.pkl``, a dict with
  ``label_specific`` (each image's class id), ``label_specific_str`` (the class names, synset
  ids), ``label_general`` and ``label_general_str`` (the categories), in ``root`` or
  ``root/tiered-imagenet``. Both are read by a restricted unpickler (:mod:`.safe_pickle`).
* **torchmeta's hdf5**: ``<split>_data.hdf5`` (one dataset of PNG bytes per class, its
  category in the attribute ``label_general``) with ``<split>_labels.json``, in ``root`` or
  ``root/tieredimagenet``. Needs h5py (the ``hdf5`` extra).

The PNGs are decoded once (RGB, LANCZOS-resized when ``image_size`` is not 84) into a cache
entry per split file named by the files' checksum: the train split is 448,695 images, 9.5 GB
as uint8, so the first load takes a while and later loads read the cache. Classes are sorted
by name (the synset id), so class ids agree whichever form was read; ``categories`` names
each class's category.

tieredImageNet cannot be downloaded automatically (ImageNet's terms).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import cache
from .base import ClassImageDataset
from .class_splits import PARTS
from .hdf5_classes import HDF5Split, read_labels, read_split
from .image_decoding import decode_all
from .image_settings import check_rgb_settings
from .safe_pickle import load_numpy_pickle, text_keys

NAME = "tieredImageNet"
NATIVE_SIZE = 84
EXPECTED_CLASSES = {"train": 351, "val": 97, "test": 160}
PICKLE_FOLDER, HDF5_FOLDER = "tiered-imagenet", "tieredimagenet"
_CACHE_VERSION = "tieredimagenet-v1-lanczos-rgb"
_WHERE_TO_GET = (
    "tieredImageNet cannot be downloaded automatically (ImageNet's terms): get tiered-imagenet.tar "
    "from the authors (github.com/renmengye/few-shot-ssl-public) and point root at the folder holding "
    "its <split>_images_png.pkl and <split>_labels.pkl, or at torchmeta's <split>_data.hdf5 and "
    "<split>_labels.json"
)
_FIX = "replace it with the file of the original release"


def _find(root: Path, part: str) -> tuple[str, list[Path]]:
    for folder in (root, root / PICKLE_FOLDER):
        images, labels = folder / f"{part}_images_png.pkl", folder / f"{part}_labels.pkl"
        if images.is_file() and labels.is_file():
            return "pickle", [images, labels]
    for folder in (root, root / HDF5_FOLDER):
        data, labels = folder / f"{part}_data.hdf5", folder / f"{part}_labels.json"
        if data.is_file() and labels.is_file():
            return "hdf5", [data, labels]
    where = "" if root.is_dir() else " (the folder does not exist)"
    raise FileNotFoundError(
        f"{NAME}: no {part}_images_png.pkl with {part}_labels.pkl (in {root} or {root / PICKLE_FOLDER}) nor "
        f"{part}_data.hdf5 with {part}_labels.json (in {root} or {root / HDF5_FOLDER}){where}; {_WHERE_TO_GET}"
    )


def _png_bytes(item, index: int, path: Path) -> bytes:
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, str):  # a Python 2 byte string, read as latin-1 text
        return item.encode("latin1")
    raise ValueError(
        f"{NAME}: {path} item {index} is a {type(item).__name__}, expected PNG bytes (a uint8 array); {_FIX}"
    )


def _read_pickles(images_path: Path, labels_path: Path) -> tuple[list[str], list[int], list, list[str]]:
    """``(class names, each image's class id, the encoded images, each class's category)``."""
    images = load_numpy_pickle(images_path, NAME, "a tieredImageNet images pickle")
    if isinstance(images, np.ndarray) and images.dtype == object:
        images = list(images)
    if not isinstance(images, list):
        raise ValueError(
            f"{NAME}: {images_path} holds a {type(images).__name__}, expected a list of PNG-encoded images; {_FIX}"
        )
    labels = load_numpy_pickle(labels_path, NAME, "a tieredImageNet labels pickle")
    if not isinstance(labels, dict):
        raise ValueError(f"{NAME}: {labels_path} holds a {type(labels).__name__}, expected a dict; {_FIX}")
    labels = text_keys(labels)
    missing = [k for k in ("label_specific", "label_specific_str") if k not in labels]
    if missing:
        raise ValueError(f"{NAME}: {labels_path} lacks {' and '.join(map(repr, missing))}; {_FIX}")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in labels["label_specific_str"]]
    ids = np.asarray(labels["label_specific"])
    if ids.shape != (len(images),) or ids.dtype.kind not in "iu":
        raise ValueError(
            f"{NAME}: {labels_path} label_specific must hold one integer per image of {images_path.name} "
            f"({len(images)}), got {ids.dtype} {ids.shape}; the two files do not belong together"
        )
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= len(names)):
        raise ValueError(
            f"{NAME}: {labels_path} label_specific has ids outside 0..{len(names) - 1} "
            f"(label_specific_str names {len(names)} classes); {_FIX}"
        )
    general = [str(g.decode() if isinstance(g, bytes) else g) for g in labels.get("label_general_str", [])]
    general_ids = np.asarray(labels.get("label_general", []))
    categories = [""] * len(names)
    if general and general_ids.shape == ids.shape:
        for class_id, general_id in zip(ids.tolist(), general_ids.tolist()):
            if 0 <= general_id < len(general):
                categories[class_id] = general[general_id]
    return names, ids.tolist(), images, categories


def _load_part(kind: str, files: list[Path], image_size: int, cache_dir: Path) -> tuple[dict[str, np.ndarray], Path]:
    """One split file's images grouped by sorted class name, from the cache or decoded."""
    digests = [cache.file_digest(f, "sha256") for f in files]
    key = cache.key_of([_CACHE_VERSION, kind, *digests, f"image_size={image_size}"])
    part = files[0].name.split("_")[0]
    entry = cache_dir / "tieredimagenet" / f"{part}-{image_size}px-{key}.npz"

    def build() -> dict[str, np.ndarray]:
        if kind == "pickle":
            names, ids, images, categories = _read_pickles(*files)
            order = sorted(range(len(names)), key=names.__getitem__)
            members = {c: [] for c in range(len(names))}
            for i, c in enumerate(ids):
                members[c].append(i)
            empty = [names[c] for c in order if not members[c]]
            if empty:
                raise ValueError(f"{NAME}: {files[1]} names the class {empty[0]!r} but no image has it; {_FIX}")
            rows = [i for c in order for i in members[c]]
            sizes = [len(members[c]) for c in order]
            names, categories = [names[c] for c in order], [categories[c] for c in order]
            where = files[0]

            def read(i: int):
                return _png_bytes(images[rows[i]], rows[i], where), f"image {rows[i]} of {where}"
        else:
            split = read_split(files[0], read_labels(files[1], NAME, _FIX), NAME, _FIX)
            if split.encoded is None:
                raise ValueError(
                    f"{NAME}: {files[0]} holds pixel arrays, not PNG bytes; it is not torchmeta's tieredImageNet "
                    f"file (miniImageNet's hdf5 is read by MiniImageNetHDF5)"
                )
            names, sizes, rows, categories = _sorted_hdf5(split)
            encoded, where = split.encoded, files[0]

            def read(i: int):
                return encoded[rows[i]].tobytes(), f"image {rows[i]} of {where}"

        pixels = decode_all(len(rows), read, image_size, "RGB", NAME, f"{_FIX} ({where})")
        return {
            "images": pixels,
            "class_names": np.array(names, dtype=np.str_),
            "categories": np.array(categories, dtype=np.str_),
            "group_sizes": np.array(sizes, dtype=np.int64),
        }

    def check(arrays: dict[str, np.ndarray]) -> str | None:
        images, sizes = arrays["images"], arrays["group_sizes"]
        if images.dtype != np.uint8 or images.shape[1:] != (3, image_size, image_size):
            return f"images are {images.dtype} {images.shape}, expected uint8 (N, 3, {image_size}, {image_size})"
        if int(sizes.sum()) != images.shape[0] or len(arrays["class_names"]) != len(sizes):
            return "its class names and group sizes do not match its images"
        return None

    return cache.cached(entry, build, NAME, check), entry


def _sorted_hdf5(split: HDF5Split) -> tuple[list[str], list[int], list[int], list[str]]:
    starts = np.concatenate([[0], np.cumsum(split.sizes)[:-1]]).tolist()
    order = sorted(range(len(split.names)), key=split.names.__getitem__)
    rows = [r for c in order for r in range(starts[c], starts[c] + split.sizes[c])]
    categories = [split.attributes[c].get("label_general", "") for c in order]
    return [split.names[c] for c in order], [split.sizes[c] for c in order], rows, categories


class TieredImageNet(ClassImageDataset):
    """tieredImageNet as N-way K-shot episodes of uint8 ``(3, image_size, image_size)`` images.

    Args:
        root: the folder holding the pickles (or ``tiered-imagenet/`` with them) or torchmeta's
            hdf5 files (or ``tieredimagenet/`` with them).
        split: ``"train"`` (351 classes), ``"val"`` (97), ``"test"`` (160) or ``"trainval"`` (448).
        cache_dir: where decoded splits are cached (default
            :func:`fewshot_metaopt.datasets.cache.default_cache_dir`).
        image_size: side of the square images (84 as released; others are LANCZOS-resized).
        mean, std: per-channel normalisation applied after scaling pixels to [0, 1].

    ``format`` (``"pickle"`` or ``"hdf5"``), ``sources`` (the files read), ``cache_paths`` and
    ``categories`` (each class's category) tell where the data came from.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        cache_dir: str | os.PathLike | None = None,
        image_size: int = NATIVE_SIZE,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        check_rgb_settings(split, image_size, mean, std, NAME)
        self.root = Path(root).expanduser()
        self.image_size = image_size
        found = [_find(self.root, part) for part in PARTS[split]]
        self.format = found[0][0]
        self.sources = [f for _, files in found for f in files]
        cache_root = cache.resolve_cache_dir(cache_dir)
        loaded = [_load_part(kind, files, image_size, cache_root) for kind, files in found]
        self.cache_paths = [entry for _, entry in loaded]
        parts = [arrays for arrays, _ in loaded]
        names = [str(n) for arrays in parts for n in arrays["class_names"]]
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"{NAME}: the class {twice!r} is in both the train and val files; they are mixed up")
        if len(parts) == 1:
            images, sizes, categories = parts[0]["images"], parts[0]["group_sizes"].tolist(), parts[0]["categories"]
        else:
            images, names, sizes, categories = _merge(parts)
        self.categories = [str(c) for c in categories]
        self.split_files = [f for f in self.sources if f.suffix in (".pkl", ".json") and "labels" in f.name]
        super().__init__(torch.from_numpy(images), sizes, names, mean=mean, std=std, name=NAME, split=split)


def _merge(parts: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, list[str], list[int], list[str]]:
    """Several parts' classes as one array, sorted by class name."""
    blocks = []
    for arrays in parts:
        starts = np.concatenate([[0], np.cumsum(arrays["group_sizes"])[:-1]])
        for name, category, start, size in zip(arrays["class_names"], arrays["categories"], starts,
                                               arrays["group_sizes"]):
            blocks.append((str(name), str(category), arrays["images"], int(start), int(size)))
    blocks.sort(key=lambda b: b[0])
    images = np.concatenate([source[start:start + size] for _, _, source, start, size in blocks])
    return images, [b[0] for b in blocks], [b[4] for b in blocks], [b[1] for b in blocks]
