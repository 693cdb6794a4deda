"""Opening the ``[data]`` section's splits, with errors that say which file is missing and how to get it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..datasets import (CIFARFS, CUB, FC100, Glyphs, ImageFolder, MiniImageNet, MiniImageNetHDF5, Omniglot, Sinusoid,
                        TieredImageNet)
from ..datasets.class_splits import DEFAULT_FRACTIONS
from ..datasets.omniglot import ARCHIVES, DEFAULT_BASE_URL, LAKE_SPLITS, VINYALS_SPLITS
from ..registry import Registry
from .errors import RunError

if TYPE_CHECKING:  # pragma: no cover
    from .settings import DataSettings

DEFAULT_IMAGE_SIZE = {"glyphs": 28, "omniglot": 28, "miniimagenet": 84, "miniimagenet_hdf5": 84, "tieredimagenet": 84,
                      "cifar_fs": 32, "fc100": 32, "cub": 84, "image_folder": 84}
CHANNELS = {"glyphs": 1, "omniglot": 1, "miniimagenet": 3, "miniimagenet_hdf5": 3, "tieredimagenet": 3, "cifar_fs": 3,
            "fc100": 3, "cub": 3, "image_folder": 3}
OMNIGLOT_HOME = "https://github.com/brendenlake/omniglot (python/images_*.zip)"
MINIIMAGENET_TERMS = (
    "miniImageNet cannot be downloaded automatically (ImageNet's terms): obtain it, then point "
    "--data-root at the folder holding images/ with the Ravi & Larochelle CSVs, or the "
    "learn2learn pickles mini-imagenet-cache-*.pkl"
)


def image_shape(data: "DataSettings") -> tuple[int, int, int]:
    """``(channels, height, width)`` of the data set's images, known without reading it."""
    size = data.image_size or DEFAULT_IMAGE_SIZE[data.dataset]
    return data.channels or CHANNELS[data.dataset], size, size


def _root(data: "DataSettings", wants: str) -> Path:
    if data.root is None:
        raise RunError(f"data.dataset {data.dataset!r} needs its folder: pass --data-root DIR, the folder holding {wants}")
    root = Path(data.root)
    if not root.is_dir() and not data.download:
        raise RunError(f"data root {root} does not exist (it should hold {wants})")
    return root


def _check_omniglot(data: "DataSettings", split: str) -> None:
    """The files :class:`Omniglot` will read, checked first so the error speaks the CLI's language."""
    root = _root(data, "images_background.zip and images_evaluation.zip")
    if data.download:
        return
    stems = ARCHIVES if split in VINYALS_SPLITS else (LAKE_SPLITS.get(split, ARCHIVES[0]),)
    for stem in stems:
        if not (root / f"{stem}.zip").is_file() and not (root / stem).is_dir():
            raise RunError(
                f"{root} lacks {stem}.zip (or its extracted folder {stem}/): add --set data.download=true to "
                f"fetch it (md5-checked) from {DEFAULT_BASE_URL}, or copy it from {OMNIGLOT_HOME}"
            )
    if split in VINYALS_SPLITS:
        splits_dir = Path(data.splits_dir) if data.splits_dir else root / "splits" / "vinyals"
        if not (splits_dir / f"{split}.txt").is_file():
            raise RunError(
                f"{splits_dir / (split + '.txt')} is missing: the Vinyals et al. split file for {split!r}; "
                f"add --set data.download=true to fetch it, or set data.splits_dir to the folder holding it"
            )


# ``opener(data, split, image_size)`` -> the episode source of one split, by ``data.dataset``.
DATASETS: Registry[Callable[["DataSettings", str, Any], Any]] = Registry("data.dataset")


@DATASETS.register("glyphs")
def _glyphs(data: "DataSettings", split: str, size: int) -> Glyphs:
    extra = {k: getattr(data, k) for k in ("num_characters", "samples_per_class") if getattr(data, k) is not None}
    return Glyphs(split, seed=data.seed or 0, image_size=size, cache_dir=data.cache_dir, **extra)


@DATASETS.register("omniglot")
def _omniglot(data: "DataSettings", split: str, size: int) -> Omniglot:
    _check_omniglot(data, split)
    return Omniglot(data.root, split, splits_dir=data.splits_dir, download=data.download,
                    cache_dir=data.cache_dir, image_size=size)


@DATASETS.register("miniimagenet")
def _miniimagenet(data: "DataSettings", split: str, size: int) -> MiniImageNet:
    _root(data, "images/ with train.csv, val.csv, test.csv, or the pickles mini-imagenet-cache-*.pkl")
    try:
        return MiniImageNet(data.root, split, cache_dir=data.cache_dir, image_size=size, splits_dir=data.splits_dir)
    except FileNotFoundError as err:
        raise RunError(f"{err}; {MINIIMAGENET_TERMS}") from None


@DATASETS.register("miniimagenet_hdf5")
def _miniimagenet_hdf5(data: "DataSettings", split: str, size: int) -> MiniImageNetHDF5:
    _root(data, "torchmeta's <split>_data.hdf5 and <split>_labels.json")
    return MiniImageNetHDF5(data.root, split, image_size=size)


@DATASETS.register("tieredimagenet")
def _tieredimagenet(data: "DataSettings", split: str, size: int) -> TieredImageNet:
    _root(data, "<split>_images_png.pkl and <split>_labels.pkl, or torchmeta's <split>_data.hdf5 and "
                "<split>_labels.json")
    return TieredImageNet(data.root, split, cache_dir=data.cache_dir, image_size=size)


@DATASETS.register("cifar_fs")
def _cifar_fs(data: "DataSettings", split: str, size: int) -> CIFARFS:
    _root(data, "cifar-100-python.tar.gz (add --set data.download=true to fetch it)")
    return CIFARFS(data.root, split, download=data.download, cache_dir=data.cache_dir, image_size=size)


@DATASETS.register("fc100")
def _fc100(data: "DataSettings", split: str, size: int) -> FC100:
    _root(data, "cifar-100-python.tar.gz (add --set data.download=true to fetch it)")
    return FC100(data.root, split, download=data.download, cache_dir=data.cache_dir, image_size=size)


@DATASETS.register("cub")
def _cub(data: "DataSettings", split: str, size: int) -> CUB:
    _root(data, "CUB_200_2011.tgz or CUB_200_2011/images/")
    return CUB(data.root, split, cache_dir=data.cache_dir, image_size=size)


@DATASETS.register("image_folder")
def _image_folder(data: "DataSettings", split: str, size: int) -> ImageFolder:
    _root(data, "one subfolder of images per class")
    return ImageFolder(data.root, split, splits_dir=data.splits_dir, split_fractions=data.split_fractions or
                       DEFAULT_FRACTIONS, seed=data.seed or 0, cache_dir=data.cache_dir, image_size=size,
                       channels=data.channels or 3)


@DATASETS.register("sinusoid")
def _sinusoid(data: "DataSettings", split: str, size: None) -> Sinusoid:
    return Sinusoid(noise_std=data.noise_std or 0.0)


def open_split(data: "DataSettings", role: str) -> Any:
    """The episode source for ``role`` (``train``, ``val`` or ``test``): a data set split,
    or the sinusoid family (the same family for every role; manifests keep them apart)."""
    split = data.split(role)
    size = data.image_size or DEFAULT_IMAGE_SIZE.get(data.dataset)
    try:
        return DATASETS[data.dataset](data, split, size)
    except (ValueError, OSError) as err:
        raise RunError(f"data.{role}_split {split!r} of {data.dataset}: {err}") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_files(source: Any) -> list[Path]:
    """The files that define which classes and images a split holds (what results.json checksums)."""
    if isinstance(source, Omniglot):
        return [source.splits_dir / f"{source.split}.txt"] if source.split in VINYALS_SPLITS else []
    if isinstance(source, MiniImageNet):
        return list(source.sources)
    if isinstance(source, (CIFARFS, FC100, CUB, TieredImageNet, MiniImageNetHDF5, ImageFolder)):
        return list(source.split_files)
    if isinstance(source, Glyphs):
        # Drawn from the seed: the rendered pixels are the split (none when a full disk kept
        # the cache from being written; the task's seed still names them).
        return [source.cache_path] if source.cache_path.is_file() else []
    return []
