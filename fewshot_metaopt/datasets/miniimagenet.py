"""miniImageNet (Vinyals et al. 2016) with the class splits of Ravi & Larochelle (2017).

100 ImageNet synsets of 600 images each, split 64/16/20 into train/val/test classes, kept in
memory as uint8 ``(N, 3, 84, 84)`` (a quarter of the float32 copy learn2learn holds) and
normalised only for the images an episode uses. Two on-disk layouts are read, whichever
``root`` holds:

* **Ravi & Larochelle**: ``root/images/<filename>`` plus ``train.csv``/``val.csv``/``test.csv``
  (a ``filename,label`` header, then one row per image) in ``splits_dir``, or else in ``root``
  or ``root/splits/ravi``. Images are converted to RGB and resized to ``image_size`` (Lanczos,
  as Ravi's preprocessing did) when they are not that size already, then cached as one
  ``.npz`` per CSV so that later loads read pixels instead of decoding JPEGs.
* **learn2learn pickles**: ``root/mini-imagenet-cache-{train,val,test}.pkl`` (the validation
  pickle may be named ``...-validation.pkl``), each a dict with ``image_data`` (uint8
  ``N x 84 x 84 x 3``) and ``class_dict`` (``{class_name: [indices]}``). They are read by an
  unpickler that only resolves the numpy globals needed to rebuild arrays, so a tampered
  pickle cannot run code.

When both are present the image folder is used. Classes are sorted by name (the synset id),
so class ids are the same whichever layout was read; within a class, images keep their CSV
row order (or ``class_dict`` order).

>>> train = MiniImageNet("~/data/miniimagenet", split="train",
...                      splits_dir="../shared/data/miniimagenet/splits/ravi")
>>> episode = train.sample_episode(5, 1, 15, torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
import torch

from . import cache
from .base import ClassImageDataset
from .image_decoding import decode_files
# UnsafePickleError stays importable from here: load_pickle raises it.
from .safe_pickle import WITH_PYTHON3_BYTES, UnsafePickleError, load_numpy_pickle  # noqa: F401

log = logging.getLogger(__name__)

NAME = "MiniImageNet"
SPLITS = ("train", "val", "test", "trainval")
_PARTS = {"train": ("train",), "val": ("val",), "test": ("test",), "trainval": ("train", "val")}
PICKLE_NAMES = {
    "train": ("mini-imagenet-cache-train.pkl",),
    "val": ("mini-imagenet-cache-val.pkl", "mini-imagenet-cache-validation.pkl"),
    "test": ("mini-imagenet-cache-test.pkl",),
}
CSV_HEADER = ("filename", "label")
# Bumped whenever decoding changes, so that older cache entries are not read back.
_CACHE_VERSION = "miniimagenet-v1-lanczos-rgb"


# --------------------------------------------------------------------------- split CSVs


def read_split_csv(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The ``(filename, label)`` rows of a Ravi split CSV, in file order.

    Raises a ValueError naming the line for a wrong header, a row without exactly two
    non-empty fields, a filename that leaves the image folder, or a repeated filename.
    """
    return [(filename, label) for filename, label, _ in _read_csv_rows(path)]


def _read_csv_rows(path: str | os.PathLike) -> list[tuple[str, str, int]]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{NAME}: split file {path} does not exist; put the Ravi & Larochelle "
            f"{path.name} there or pass splits_dir= pointing at the folder holding it"
        ) from None
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{NAME}: {path} is not a UTF-8 text CSV ({err}); expected 'filename,label' rows: replace "
            f"it with the Ravi & Larochelle {path.name}"
        ) from None
    reader = csv.reader(text.splitlines())
    rows: list[tuple[str, str, int]] = []
    seen: dict[str, int] = {}
    for fields in reader:
        line = reader.line_num
        cells = [c.strip() for c in fields]
        if line == 1:
            if tuple(c.lower() for c in cells) != CSV_HEADER:
                raise ValueError(
                    f"{NAME}: {path} line 1 is {','.join(fields)!r}, expected the header "
                    f"'filename,label'; is this a Ravi & Larochelle split CSV?"
                )
            continue
        if not cells or cells == [""]:
            continue  # blank line (a trailing newline, say)
        if len(cells) != 2 or not all(cells):
            raise ValueError(
                f"{NAME}: {path} line {line} is {','.join(fields)!r}, expected "
                f"'<filename>,<label>' with both fields non-empty; fix or remove that line"
            )
        filename, label = cells
        parts = PurePosixPath(filename.replace("\\", "/"))
        if parts.is_absolute() or ".." in parts.parts:
            raise ValueError(
                f"{NAME}: {path} line {line} names {filename!r}, which is outside the images "
                f"folder; filenames must be relative to root/images"
            )
        if filename in seen:
            raise ValueError(
                f"{NAME}: {path} line {line} repeats {filename!r} (first on line {seen[filename]}); "
                f"remove the duplicate row"
            )
        seen[filename] = line
        rows.append((filename, label, line))
    if not rows:
        raise ValueError(f"{NAME}: {path} has no image rows after its header; expected 'filename,label' rows")
    return rows


# --------------------------------------------------------------------------- safe pickles


def load_pickle(path: str | os.PathLike):
    """Unpickle ``path`` allowing only the numpy globals that rebuild arrays (and the one Python 3
    protocol-2 pickles write bytes with).

    Anything else (``os.system``, ``builtins.eval``, any class) raises
    :class:`UnsafePickleError` before it is called; a damaged file raises ValueError.
    """
    return load_numpy_pickle(path, NAME, "a miniImageNet pickle", WITH_PYTHON3_BYTES)


def _pickle_classes(path: Path, image_size: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    data = load_pickle(path)
    if not isinstance(data, dict):
        raise ValueError(
            f"{NAME}: {path} holds a {type(data).__name__}, expected a dict with "
            f"'image_data' and 'class_dict'; is this a learn2learn miniImageNet pickle?"
        )
    missing = [k for k in ("image_data", "class_dict") if k not in data]
    if missing:
        raise ValueError(
            f"{NAME}: {path} lacks {' and '.join(map(repr, missing))} (has {sorted(map(str, data))}); "
            f"expected a learn2learn miniImageNet pickle"
        )
    images, class_dict = data["image_data"], data["class_dict"]
    expected = (image_size, image_size, 3)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
        got = (
            f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        )
        raise ValueError(
            f"{NAME}: {path} image_data is {got}, expected uint8 (N, {image_size}, {image_size}, 3); "
            f"pickles hold 84x84 images, so use image_size=84 or the Ravi image folder for other sizes"
        )
    if not isinstance(class_dict, dict) or not class_dict:
        raise ValueError(f"{NAME}: {path} class_dict must be a non-empty dict {{class_name: [indices]}}")
    classes: dict[str, np.ndarray] = {}
    for key, indices in class_dict.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        idx = np.asarray(indices)
        if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu":
            raise ValueError(
                f"{NAME}: {path} class_dict[{name!r}] must be a non-empty list of integer indices"
            )
        if int(idx.min()) < 0 or int(idx.max()) >= images.shape[0]:
            raise ValueError(
                f"{NAME}: {path} class_dict[{name!r}] has indices outside image_data's "
                f"{images.shape[0]} images; the pickle is damaged"
            )
        classes[name] = idx.astype(np.int64)
    return images, classes


# --------------------------------------------------------------------------- image folder


def _decode_all(paths: Sequence[Path], size: int) -> np.ndarray:
    """The images as uint8 ``(N, 3, size, size)`` RGB, resized with LANCZOS where needed."""
    return decode_files(paths, size, "RGB", NAME, "the file is corrupt or not an image: replace it with the original")


def _images_digest(image_dir: Path, filenames: Sequence[str]) -> str:
    h = hashlib.sha256()
    for filename in filenames:
        h.update(filename.encode())
        h.update(b"\0")
        h.update((image_dir / filename).read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def _group_rows(rows: Sequence[tuple[str, str, int]]) -> tuple[list[str], list[str], list[int]]:
    """Filenames regrouped by sorted class name (CSV order within a class)."""
    by_class: dict[str, list[str]] = {}
    for filename, label, _ in rows:
        by_class.setdefault(label, []).append(filename)
    names = sorted(by_class)
    return [f for n in names for f in by_class[n]], names, [len(by_class[n]) for n in names]


def _load_csv_part(
    image_dir: Path, csv_path: Path, image_size: int, cache_dir: Path
) -> tuple[np.ndarray, list[str], list[int], Path]:
    """The images a split CSV lists, grouped by sorted class, from the cache or decoded."""
    rows = _read_csv_rows(csv_path)
    missing = [(f, line) for f, _, line in rows if not (image_dir / f).is_file()]
    if missing:
        (filename, line), more = missing[0], len(missing) - 1
        raise FileNotFoundError(
            f"{NAME}: image {image_dir / filename} listed on line {line} of {csv_path} does not "
            f"exist{f' (nor do {more} more)' if more else ''}; extract the full miniImageNet "
            f"images into {image_dir}"
        )
    filenames, names, sizes = _group_rows(rows)
    key = cache.key_of(
        [
            _CACHE_VERSION,
            hashlib.sha256(csv_path.read_bytes()).hexdigest(),
            _images_digest(image_dir, filenames),
            f"image_size={image_size}",
        ]
    )
    entry = cache_dir / "miniimagenet" / f"{csv_path.stem}-{image_size}px-{key}.npz"
    shape = (len(filenames), 3, image_size, image_size)

    def build() -> dict[str, np.ndarray]:
        log.info("%s: decoding %d images listed in %s (once; cached in %s)", NAME, len(filenames), csv_path, entry)
        return {
            "images": _decode_all([image_dir / f for f in filenames], image_size),
            "class_names": np.array(names, dtype=np.str_),
            "group_sizes": np.array(sizes, dtype=np.int64),
        }

    def check(arrays: dict[str, np.ndarray]) -> str | None:
        images = arrays["images"]
        if images.dtype != np.uint8 or images.shape != shape:
            return f"images are {images.dtype} {images.shape}, {csv_path} needs uint8 {shape}"
        if arrays["class_names"].tolist() != names or arrays["group_sizes"].tolist() != sizes:
            return f"its classes are not those of {csv_path}"
        return None

    images = cache.cached(entry, build, NAME, check)["images"]
    return images, names, sizes, entry


# --------------------------------------------------------------------------- dataset

# One source's classes: its images, ``(N, 3, H, W)`` or channels-last ``(N, H, W, 3)``,
# whether they are channels-last, and for each class name the indices of its images.
_Part = tuple[np.ndarray, bool, dict[str, np.ndarray]]


def _merge(parts: Sequence[_Part], image_size: int) -> tuple[np.ndarray, list[str], list[int]]:
    """One ``(N, 3, H, W)`` array grouped by sorted class name.

    A class present in several parts gets the images of all of them, in part order.
    """
    segments: dict[str, list[tuple[np.ndarray, bool, np.ndarray]]] = {}
    for images, channels_last, classes in parts:
        for name, idx in classes.items():
            segments.setdefault(name, []).append((images, channels_last, idx))
    names = sorted(segments)
    sizes = [sum(len(idx) for _, _, idx in segments[n]) for n in names]
    out = np.empty((sum(sizes), 3, image_size, image_size), dtype=np.uint8)
    pos = 0
    for name in names:
        for images, channels_last, idx in segments[name]:
            block = images[idx]
            out[pos : pos + len(idx)] = block.transpose(0, 3, 1, 2) if channels_last else block
            pos += len(idx)
    return out, names, sizes


class MiniImageNet(ClassImageDataset):
    """A miniImageNet split as N-way K-shot episodes of float32 ``(3, 84, 84)`` images.

    Args:
        root: the folder holding ``images/`` (plus the split CSVs) or the learn2learn pickles.
        split: ``"train"`` (64 classes), ``"val"`` (16), ``"test"`` (20) or ``"trainval"`` (80).
        cache_dir: where decoded image folders are cached (default
            :func:`fewshot_metaopt.datasets.cache.default_cache_dir`); unused for pickles.
        image_size: side of the square images (pickles only hold 84).
        mean, std: per-channel normalisation applied after scaling pixels to [0, 1].
        splits_dir: folder of ``train.csv``/``val.csv``/``test.csv``; default ``root`` or
            ``root/splits/ravi``. Giving it selects the image-folder layout.

    Attributes ``format`` (``"ravi"`` or ``"pickle"``), ``sources`` (the CSVs or pickles read)
    and ``cache_paths`` (cache entries, image folder only) tell where the data came from.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        cache_dir: str | os.PathLike | None = None,
        image_size: int = 84,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        splits_dir: str | os.PathLike | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"{NAME}: unknown split {split!r}; use one of {', '.join(map(repr, SPLITS))}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"{NAME}: image_size must be a positive integer, got {image_size!r}")
        for label, values in (("mean", mean), ("std", std)):
            if values is not None and len(values) != 3:
                raise ValueError(f"{NAME}: {label} needs one value per RGB channel (3), got {list(values)!r}")
        if std is not None and any(float(s) == 0 for s in std):
            raise ValueError(f"{NAME}: std must be non-zero in every channel, got {list(std)!r}")
        self.root = Path(root).expanduser()
        self.image_size = image_size
        self.cache_paths: list[Path] = []
        layout, sources = self._locate(split, splits_dir)
        self.format = layout
        self.sources = sources
        parts: list[_Part] = []
        if layout == "ravi":
            cache_root = cache.resolve_cache_dir(cache_dir)
            for csv_path in sources:
                images, names, sizes, entry = _load_csv_part(
                    self.root / "images", csv_path, image_size, cache_root
                )
                self.cache_paths.append(entry)
                bounds = np.cumsum([0] + sizes)
                classes = {n: np.arange(a, b) for n, a, b in zip(names, bounds[:-1], bounds[1:])}
                parts.append((images, False, classes))
        else:
            for pkl in sources:
                images, classes = _pickle_classes(pkl, image_size)
                parts.append((images, True, classes))
        if len(parts) == 1 and layout == "ravi":
            # Already grouped by sorted class: use the array as it is, without a copy.
            images, classes = parts[0][0], parts[0][2]
            names, sizes = list(classes), [len(i) for i in classes.values()]
        else:
            images, names, sizes = _merge(parts, image_size)
        del parts
        super().__init__(
            torch.from_numpy(images),
            sizes,
            names,
            mean=mean,
            std=std,
            name=NAME,
            split=split,
        )

    def _locate(self, split: str, splits_dir: str | os.PathLike | None) -> tuple[str, list[Path]]:
        root, parts = self.root, _PARTS[split]
        image_dir = root / "images"
        csv_dirs = [Path(splits_dir).expanduser()] if splits_dir is not None else [root, root / "splits" / "ravi"]

        def find(candidates: Sequence[Path]) -> Path | None:
            return next((p for p in candidates if p.is_file()), None)

        csvs = [find([d / f"{part}.csv" for d in csv_dirs]) for part in parts]
        pickles = [find([root / n for n in PICKLE_NAMES[part]]) for part in parts]
        have_images = image_dir.is_dir()
        # The image folder wins when its CSVs are there, and when it is the only candidate.
        if splits_dir is not None or (have_images and (all(csvs) or not all(pickles))):
            if not have_images:
                raise FileNotFoundError(
                    f"{NAME}: image folder {image_dir} does not exist; extract the miniImageNet "
                    f"images there (root/images/<filename> as listed in the split CSVs)"
                )
            for part, found in zip(parts, csvs):
                if found is None:
                    raise FileNotFoundError(
                        f"{NAME}: no {part}.csv in {' or '.join(map(str, csv_dirs))}; put the Ravi & "
                        f"Larochelle split CSVs there or pass splits_dir= pointing at them"
                    )
            return "ravi", csvs
        if all(pickles):
            return "pickle", pickles
        looked = " + ".join(f"{p}.csv" for p in parts)
        wanted = "; ".join(" or ".join(PICKLE_NAMES[p]) for p in parts)
        where = "" if root.is_dir() else " (the folder does not exist)"
        raise FileNotFoundError(
            f"{NAME}: no miniImageNet data for split {split!r} in {root}{where}: looked for "
            f"images/ with {looked} (in root or root/splits/ravi) and for {wanted}; point root "
            f"at the folder holding either layout"
        )
