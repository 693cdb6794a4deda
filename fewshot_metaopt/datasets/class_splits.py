"""Which classes a split holds: class-list files (shipped with the package or the user's) and a
seeded split for data that comes without one.

A class-list file has one class name a line; blank lines and lines starting with ``#`` are
skipped. The benchmark splits that ship with the package live in ``datasets/splits/<data
set>/<split>.txt`` (their provenance is in each data set's module docstring).
"""

from __future__ import annotations

import math
import os
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

SPLITS = ("train", "val", "test", "trainval")
PARTS = {"train": ("train",), "val": ("val",), "test": ("test",), "trainval": ("train", "val")}
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)


def check_split(split: str, owner: str, extra: Sequence[str] = ()) -> str:
    valid = (*SPLITS, *extra)
    if not isinstance(split, str) or split not in valid:
        raise ValueError(f"{owner}: unknown split {split!r}; use one of {', '.join(map(repr, valid))}")
    return split


def parse_class_list(text: str, source: str, owner: str) -> list[str]:
    """The class names of a class-list file's text, in file order; ``source`` names the file."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        name = raw.strip()
        if not name or name.startswith("#"):
            continue
        if name in seen:
            raise ValueError(
                f"{owner}: {source} line {number} repeats the class {name!r} (first on line {seen[name]}); "
                f"remove the duplicate"
            )
        seen[name] = number
        names.append(name)
    if not names:
        raise ValueError(f"{owner}: {source} names no class; expected one class name a line")
    return names


def read_class_list(path: str | os.PathLike, owner: str) -> list[str]:
    """The class names listed in the file ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{owner}: class-list file {path} does not exist; write one class name a line there, or "
            f"point splits_dir at the folder holding {path.name}"
        ) from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{owner}: {path} is not UTF-8 text ({err}); expected one class name a line") from None
    return parse_class_list(text, str(path), owner)


def packaged_split(dataset: str, split: str, owner: str) -> list[str]:
    """The class names of a benchmark split shipped with the package (``trainval`` joins two)."""
    names: list[str] = []
    for part in PARTS[split]:
        resource = resources.files(__package__).joinpath("splits", dataset, f"{part}.txt")
        names += parse_class_list(resource.read_text(encoding="utf-8"), f"splits/{dataset}/{part}.txt", owner)
    return names


def packaged_split_path(dataset: str, split: str) -> list[Path]:
    """The files :func:`packaged_split` reads (what a run checksums as its split files)."""
    return [Path(str(resources.files(__package__).joinpath("splits", dataset, f"{part}.txt")))
            for part in PARTS[split]]


def check_fractions(fractions: Sequence[float], owner: str) -> tuple[float, float, float]:
    """Three finite non-negative shares (train, val, test) with a positive sum."""
    values = tuple(fractions) if isinstance(fractions, (list, tuple)) else ()
    if (
        len(values) != 3
        or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and math.isfinite(f) and f >= 0
                   for f in values)
        or sum(values) <= 0
    ):
        raise ValueError(
            f"{owner}: split_fractions must be three non-negative numbers (train, val, test) with a positive "
            f"sum, got {fractions!r}; e.g. [0.6, 0.2, 0.2]"
        )
    return values  # type: ignore[return-value]


def seeded_split(
    names: Sequence[str], split: str, fractions: Sequence[float], seed: int, owner: str
) -> list[str]:
    """The classes of ``split`` when ``names`` are shuffled with ``seed`` and cut by ``fractions``.

    The result depends only on the set of names, the seed and the fractions (names are sorted
    first; NumPy's PCG64 shuffles them), so it is the same on every machine and every run.
    Train, val and test are disjoint and together hold every class; each is returned sorted.
    """
    shares = check_fractions(fractions, owner)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{owner}: the class-split seed must be an integer, got {seed!r}")
    ordered = sorted(names)
    order = np.random.default_rng(seed).permutation(len(ordered))
    total = sum(shares)
    cut1 = round(len(ordered) * shares[0] / total)
    cut2 = round(len(ordered) * (shares[0] + shares[1]) / total)
    bounds = {"train": (0, cut1), "val": (cut1, cut2), "test": (cut2, len(ordered))}
    chosen: list[str] = []
    for part in PARTS[split]:
        start, stop = bounds[part]
        chosen += [ordered[i] for i in order[start:stop]]
    if not chosen:
        raise ValueError(
            f"{owner}: split {split!r} gets none of the {len(ordered)} classes with split_fractions "
            f"{list(shares)}; give it a larger share or add classes"
        )
    return sorted(chosen)
