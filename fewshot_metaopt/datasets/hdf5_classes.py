"""torchmeta's hdf5 layout of a split: ``<split>_data.hdf5`` and ``<split>_labels.json``.

torchmeta converts miniImageNet, tieredImageNet and CUB into one HDF5 file per split whose
group ``datasets`` holds one dataset per class, named by the class, and a JSON list of those
names. A class's dataset is either pixels (miniImageNet: uint8 ``n x 84 x 84 x 3``) or
variable-length uint8 rows, each an encoded image (tieredImageNet's PNGs, CUB's JPEGs).

h5py is an optional dependency (the ``hdf5`` extra), imported only when such a file is read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EXTRA = "hdf5"


def require_h5py(owner: str):
    """The h5py module, or a one-line ImportError naming the extra to install."""
    try:
        import h5py
    except ImportError:
        raise ImportError(
            f"{owner}: reading torchmeta's hdf5 files needs h5py; install it with "
            f"pip install 'fewshot-metaopt[{EXTRA}]'"
        ) from None
    return h5py


@dataclass
class HDF5Split:
    """One split's classes as stored: ``pixels`` (``(N, H, W, C)`` uint8, classes in order) for
    pixel datasets, else ``encoded`` (one array of encoded-image bytes per image)."""

    names: list[str]
    sizes: list[int]
    pixels: np.ndarray | None
    encoded: list[np.ndarray] | None
    attributes: list[dict[str, str]]


def read_labels(path: str | os.PathLike, owner: str, fix: str) -> list[str]:
    """The class names of a ``<split>_labels.json``: a JSON list of distinct strings."""
    path = Path(path)
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{owner}: {path} is not a JSON list of class names ({err}); {fix}") from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{owner}: {path} must be a non-empty JSON list of class names; {fix}")
    if len(set(names)) != len(names):
        repeated = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"{owner}: {path} names the class {repeated!r} twice; {fix}")
    return names


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_split(data_path: str | os.PathLike, names: list[str], owner: str, fix: str) -> HDF5Split:
    """Every class ``names`` lists, read from the HDF5 file ``data_path``."""
    h5py = require_h5py(owner)
    data_path = Path(data_path)
    try:
        handle = h5py.File(data_path, "r")
    except OSError as err:
        raise ValueError(f"{owner}: {data_path} is not a readable HDF5 file ({err}); {fix}") from None
    with handle:
        group = handle.get("datasets")
        if not isinstance(group, h5py.Group):
            raise ValueError(f"{owner}: {data_path} has no group 'datasets'; it is not a torchmeta split file: {fix}")
        missing = [n for n in names if n not in group]
        if missing:
            raise ValueError(
                f"{owner}: {data_path} has no dataset for the class {missing[0]!r} its labels file names"
                f"{f' (nor for {len(missing) - 1} more)' if len(missing) > 1 else ''}; {fix}"
            )
        datasets = [group[n] for n in names]
        attributes = [{k: _text(v) for k, v in ds.attrs.items()} for ds in datasets]
        sizes = [int(ds.shape[0]) if ds.shape else 0 for ds in datasets]
        empty = [n for n, s in zip(names, sizes) if s == 0]
        if empty:
            raise ValueError(f"{owner}: {data_path} holds no image of the class {empty[0]!r}; {fix}")
        if all(h5py.check_vlen_dtype(ds.dtype) is not None for ds in datasets):
            encoded = [np.asarray(row, dtype=np.uint8) for ds in datasets for row in ds[()]]
            return HDF5Split(names, sizes, None, encoded, attributes)
        shapes = {ds.shape[1:] for ds in datasets}
        if any(ds.dtype != np.uint8 or ds.ndim != 4 for ds in datasets) or len(shapes) != 1:
            odd = next(ds for ds in datasets
                       if ds.dtype != np.uint8 or ds.ndim != 4 or ds.shape[1:] != datasets[0].shape[1:])
            raise ValueError(
                f"{owner}: {data_path} class {odd.name.rsplit('/', 1)[-1]!r} is {odd.dtype} {odd.shape}; every class "
                f"must be uint8 (n, H, W, C) pixels of one shape, or encoded images; {fix}"
            )
        pixels = np.concatenate([ds[()] for ds in datasets])
        return HDF5Split(names, sizes, pixels, None, attributes)
