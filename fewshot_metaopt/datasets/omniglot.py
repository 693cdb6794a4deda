"""Omniglot (Lake et al., 2015): 1623 hand-drawn characters from 50 alphabets, 20 drawers each.

Two ways to split it:

* the split of Vinyals et al. (2016) used by MAML and its successors, ``split`` in
  ``{"train", "val", "trainval", "test"}``: each line of ``<split>.txt`` names a class
  ``Alphabet/characterNN/rotDDD``, a character rotated by 0, 90, 180 or 270 degrees
  counter-clockwise. The four rotations of a character read the same 20 stored images and are
  rotated when an episode is drawn. These splits take characters from both archives.
* the split of Lake et al., ``split`` in ``{"background", "evaluation"}``: every character
  of ``images_background.zip`` or ``images_evaluation.zip`` is a class, unrotated.

The images are read once from the official archives (or their extracted folders), turned into
white-on-black ``image_size`` x ``image_size`` uint8 pictures (LANCZOS) and cached, one
``.npz`` per archive, under a name derived from the archive's checksum and the settings: later
loads read the cache only.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .base import ClassImageDataset
from .cache import cached, file_digest, key_of, resolve_cache_dir, tree_digest
from .download import check_members, download_file, safe_extract

ARCHIVES = ("images_background", "images_evaluation")
LAKE_SPLITS = {"background": "images_background", "evaluation": "images_evaluation"}
VINYALS_SPLITS = ("train", "val", "trainval", "test")
DEFAULT_BASE_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
DEFAULT_SPLITS_URL = (
    "https://raw.githubusercontent.com/jakesnell/prototypical-networks/master/data/omniglot/splits/vinyals/"
)
FORMAT_VERSION = "1"

_SPLIT_LINE = re.compile(r"^([^/]+)/(character\d+)/rot(000|090|180|270)$")


def _valid_splits() -> str:
    return ", ".join(VINYALS_SPLITS) + " (Vinyals) or " + ", ".join(LAKE_SPLITS) + " (Lake)"


# ----------------------------------------------------------------------------- decoding


def _decode_one(data: bytes, where: str, image_size: int) -> np.ndarray:
    """One PNG -> grayscale, inverted (ink 255 on 0), LANCZOS-resized, uint8."""
    buffer = io.BytesIO(data)
    try:
        img = Image.open(buffer, formats=("PNG",))
        img = ImageOps.invert(img.convert("L"))
    except Exception as err:  # Pillow raises several types for damaged files
        if isinstance(err, UnidentifiedImageError):
            reason = "not a PNG image"
        else:  # Pillow names the in-memory buffer, which tells the reader nothing
            reason = f"{type(err).__name__}: {str(err).replace(repr(buffer), where)}"
        raise ValueError(
            f"Omniglot: corrupt image: {where} could not be decoded ({reason}); "
            f"replace the archive (delete it and pass download=True)"
        ) from None
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def _decode_images(blobs: Sequence[bytes], wheres: Sequence[str], image_size: int) -> np.ndarray:
    """PNG bytes -> ``(n, image_size, image_size)`` uint8, strokes 255 on 0."""
    out = np.empty((len(blobs), image_size, image_size), dtype=np.uint8)
    for i, (data, where) in enumerate(zip(blobs, wheres)):
        out[i] = _decode_one(data, where, image_size)
    return out


# ----------------------------------------------------------------------------- archives


def _locate(root: Path, stem: str) -> tuple[str, Path]:
    archive = root / f"{stem}.zip"
    if archive.is_file():
        return "zip", archive
    folder = root / stem
    if folder.is_dir():
        return "folder", folder
    raise FileNotFoundError(
        f"Omniglot: neither {archive} nor the folder {folder} exists; pass download=True, or point "
        f"root at the folder holding {stem}.zip"
    )


def _layout_key(name: str, stem: str, source: Path) -> tuple[str, str, str] | None:
    """``(alphabet, character, file)`` for an image, None for entries that are not images."""
    parts = name.split("/")
    if name.endswith("/") or parts[0] == "__MACOSX" or parts[-1].startswith("."):
        return None
    if not parts[-1].lower().endswith(".png"):
        return None
    if parts[0] == stem:
        parts = parts[1:]
    if len(parts) != 3:
        raise ValueError(
            f"Omniglot: unexpected image {name!r} in {source}; the layout must be "
            f"{stem}/<Alphabet>/<characterNN>/<image>.png"
        )
    return parts[0], parts[1], parts[2]


def _sorted_entries(names: Iterable[str], stem: str, source: Path) -> list[tuple[tuple[str, str, str], str]]:
    entries = []
    for name in names:
        key = _layout_key(name, stem, source)
        if key is not None:
            entries.append((key, name))
    if not entries:
        raise ValueError(
            f"Omniglot: no PNG images found in {source}; expected {stem}/<Alphabet>/<characterNN>/<image>.png"
        )
    entries.sort()
    return entries


def _read_images(kind: str, source: Path, stem: str) -> tuple[list[tuple[str, str, str]], list[bytes], list[str]]:
    """The layout keys, bytes and descriptions of every image of an archive or folder, sorted."""
    if kind == "folder":
        names = (p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
        entries = _sorted_entries(names, stem, source)
        blobs = [(source / name).read_bytes() for _, name in entries]
        return [k for k, _ in entries], blobs, [f"file {name!r} in {source}" for _, name in entries]
    try:
        zf = zipfile.ZipFile(source)
    except zipfile.BadZipFile as err:
        raise ValueError(
            f"Omniglot: {source} is not a valid zip archive ({err}); delete it and pass download=True"
        ) from None
    with zf:
        names = zf.namelist()
        check_members(names, f"Omniglot archive {source}")
        entries = _sorted_entries(names, stem, source)
        blobs = []
        for _, name in entries:
            try:
                blobs.append(zf.read(name))
            except (zipfile.BadZipFile, zlib.error, EOFError) as err:
                raise ValueError(
                    f"Omniglot: corrupt image: member {name!r} of {source} cannot be read ({err}); "
                    f"replace the archive (delete it and pass download=True)"
                ) from None
    return [k for k, _ in entries], blobs, [f"member {name!r} of {source}" for _, name in entries]


def _cache_path(cache_dir: Path, stem: str, kind: str, source: Path, image_size: int) -> Path:
    digest = file_digest(source, "md5") if kind == "zip" else tree_digest(source)
    key = key_of(["Omniglot", stem, kind, digest, str(image_size), FORMAT_VERSION])
    return cache_dir / f"omniglot-{stem}-{image_size}px-{key}.npz"


def _cache_check(image_size: int):
    def check(arrays: dict[str, np.ndarray]) -> str | None:
        images, characters, sizes = arrays["images"], arrays["characters"], arrays["group_sizes"]
        if images.dtype != np.uint8 or images.shape[1:] != (1, image_size, image_size):
            return f"images are {images.dtype} {images.shape}, expected uint8 (N, 1, {image_size}, {image_size})"
        if int(sizes.sum()) != images.shape[0] or len(characters) != len(sizes):
            return (
                f"{len(characters)} characters and {len(sizes)} group sizes adding up to "
                f"{int(sizes.sum())} for {images.shape[0]} images"
            )
        return None

    return check


def load_archive(
    root: str | os.PathLike,
    stem: str,
    cache_dir: str | os.PathLike | None = None,
    image_size: int = 28,
) -> tuple[np.ndarray, list[str], np.ndarray, Path]:
    """One archive's pictures, from the cache or decoded (and then cached).

    Returns ``(images, characters, group_sizes, cache_file)``: uint8 ``(N, 1, S, S)`` images
    grouped by character in sorted ``Alphabet/characterNN`` order, one name and one image
    count per character, and the cache entry they came from.
    """
    kind, source = _locate(Path(root).expanduser(), stem)
    cache_file = _cache_path(resolve_cache_dir(cache_dir), stem, kind, source, image_size)

    def build() -> dict[str, np.ndarray]:
        keys, blobs, wheres = _read_images(kind, source, stem)
        pixels = _decode_images(blobs, wheres, image_size)
        del blobs
        characters: list[str] = []
        sizes: list[int] = []
        for alphabet, character, _ in keys:
            label = f"{alphabet}/{character}"
            if characters and characters[-1] == label:
                sizes[-1] += 1
            else:
                characters.append(label)
                sizes.append(1)
        return {
            "images": pixels[:, None],
            "characters": np.array(characters, dtype=str),
            "group_sizes": np.array(sizes, dtype=np.int64),
            "format": np.array(FORMAT_VERSION),
        }

    arrays = cached(cache_file, build, "Omniglot", _cache_check(image_size))
    return arrays["images"], [str(c) for c in arrays["characters"]], arrays["group_sizes"], cache_file


# ----------------------------------------------------------------------------- split files


def read_split_file(path: str | os.PathLike) -> list[tuple[str, int]]:
    """``[(Alphabet/characterNN, quarter_turns), ...]`` from a Vinyals split file."""
    path = Path(path)
    classes: list[tuple[str, int]] = []
    seen: set[str] = set()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"Omniglot: split file {path} is not UTF-8 text ({err}); replace it with the Vinyals "
            f"split file (delete it and pass download=True)"
        ) from None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        match = _SPLIT_LINE.match(line)
        if match is None:
            raise ValueError(
                f"Omniglot: {path} line {number} is {line!r}, not Alphabet/characterNN/rotDDD "
                f"with DDD in 000, 090, 180, 270; fix or replace the split file"
            )
        if line in seen:
            raise ValueError(f"Omniglot: {path} line {number} repeats the class {line!r}; remove the duplicate")
        seen.add(line)
        alphabet, character, degrees = match.groups()
        classes.append((f"{alphabet}/{character}", int(degrees) // 90))
    return classes


def _split_validator(split: str, expected_lines: int | None):
    def validate(path: Path) -> None:
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise ValueError(f"Omniglot: the downloaded {split}.txt is not text; check the split URL") from None
        for number, line in enumerate(lines, 1):
            if not _SPLIT_LINE.match(line):
                raise ValueError(
                    f"Omniglot: the downloaded {split}.txt is not a Vinyals split file: line {number} "
                    f"is {line[:80]!r}; check the split URL"
                )
        if expected_lines is not None and len(lines) != expected_lines:
            raise ValueError(
                f"Omniglot: the downloaded {split}.txt has {len(lines)} classes, expected "
                f"{expected_lines}; check the split URL"
            )

    return validate


# ----------------------------------------------------------------------------- dataset


class Omniglot(ClassImageDataset):
    """Omniglot characters as few-shot classes of uint8 ``(1, image_size, image_size)`` images.

    Args:
        root: folder holding ``images_background.zip`` and ``images_evaluation.zip`` (or
            their extracted folders ``images_background/``, ``images_evaluation/``).
        split: ``"train"``, ``"val"``, ``"trainval"``, ``"test"`` (Vinyals et al.; 4112, 688,
            4800, 1692 classes) or ``"background"``, ``"evaluation"`` (Lake et al.; 964 and
            659 characters).
        splits_dir: folder of the Vinyals split files (default ``root/splits/vinyals``).
        download: fetch what is missing (archives, split file) from ``base_url``.
        cache_dir: where preprocessed archives are kept (default: see
            :func:`fewshot_metaopt.datasets.cache.default_cache_dir`).
        image_size: side of the stored square images (LANCZOS from 105).
        base_url: where the archives are fetched from (default: the official repository). A
            mirror given here must have the layout of ``root``: the split files are then
            fetched from ``base_url + "splits/vinyals/"``; without ``base_url`` they come from
            :data:`DEFAULT_SPLITS_URL`.

    Class names are ``Alphabet/characterNN/rotDDD`` (Vinyals) or ``Alphabet/characterNN``
    (Lake); ``characters`` names the stored groups of images.
    """

    ARCHIVE_MD5 = {
        "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
        "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
    }
    SPLIT_SIZES = {"train": 4112, "val": 688, "trainval": 4800, "test": 1692}

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        splits_dir: str | os.PathLike | None = None,
        download: bool = False,
        cache_dir: str | os.PathLike | None = None,
        image_size: int = 28,
        base_url: str | None = None,
    ) -> None:
        if not isinstance(split, str) or (split not in VINYALS_SPLITS and split not in LAKE_SPLITS):
            raise ValueError(f"Omniglot: unknown split {split!r}; valid splits: {_valid_splits()}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"Omniglot: image_size must be a positive integer, got {image_size!r}")
        self.root = Path(root).expanduser()
        self.image_size = image_size
        vinyals = split in VINYALS_SPLITS
        self.splits_dir = (
            Path(splits_dir).expanduser() if splits_dir is not None else self.root / "splits" / "vinyals"
        )
        stems = list(ARCHIVES) if vinyals else [LAKE_SPLITS[split]]
        if download:
            splits_url = None if base_url is None else base_url.rstrip("/") + "/splits/vinyals/"
            type(self).download(
                self.root,
                archives=stems,
                splits=[split] if vinyals else [],
                splits_dir=self.splits_dir,
                base_url=base_url,
                splits_url=splits_url,
            )
        split_classes = None
        if vinyals:
            split_file = self.splits_dir / f"{split}.txt"
            if not split_file.is_file():
                raise FileNotFoundError(
                    f"Omniglot: split file {split}.txt not found at {split_file}; pass download=True, "
                    f"or splits_dir= the folder holding {split}.txt"
                )
            split_classes = read_split_file(split_file)

        loaded = {stem: load_archive(self.root, stem, cache_dir, image_size) for stem in stems}
        self.cache_files = [loaded[stem][3] for stem in stems]

        if split_classes is None:
            images, characters, sizes, _ = loaded[stems[0]]
            class_names = list(characters)
            class_group = None
            class_rotation = None
            self.characters = list(characters)
        else:
            images, sizes, class_names, class_group, class_rotation = self._select(
                loaded, stems, split_classes, split_file
            )
        super().__init__(
            images=torch.from_numpy(images),
            group_sizes=[int(s) for s in sizes],
            class_names=class_names,
            class_group=class_group,
            class_rotation=class_rotation,
            name="Omniglot",
            split=split,
        )

    def _select(self, loaded, stems, split_classes, split_file):
        """The groups a Vinyals split reads (in archive order) and its class tables."""
        where: dict[str, tuple[int, int]] = {}
        for a, stem in enumerate(stems):
            for g, character in enumerate(loaded[stem][1]):
                if character in where:
                    raise ValueError(
                        f"Omniglot: character {character!r} is in both {stems[where[character][0]]} "
                        f"and {stem}; the archives are mixed up"
                    )
                where[character] = (a, g)
        for character, turns in split_classes:
            if character not in where:
                kinds = [_locate(self.root, stem)[0] for stem in stems]
                places = [
                    f"{stem}.zip" if kind == "zip" else f"the folder {stem}/{character}"
                    for stem, kind in zip(stems, kinds)
                ]
                sources = "archives" if kinds == ["zip"] * len(kinds) else "image folders"
                raise ValueError(
                    f"Omniglot: {split_file} names {character}/rot{turns * 90:03d}, a character in "
                    f"neither {' nor '.join(places)} under {self.root}; check that the split file "
                    f"and the {sources} belong together"
                )
        used = sorted({where[character] for character, _ in split_classes})
        position = {key: i for i, key in enumerate(used)}
        pieces, sizes, characters = [], [], []
        for a, stem in enumerate(stems):
            images, names, group_sizes, _ = loaded[stem]
            starts = np.concatenate([[0], np.cumsum(group_sizes)[:-1]])
            groups = [g for (aa, g) in used if aa == a]
            if not groups:
                continue
            index = np.concatenate([np.arange(starts[g], starts[g] + group_sizes[g]) for g in groups])
            pieces.append(images[index])
            sizes.extend(int(group_sizes[g]) for g in groups)
            characters.extend(names[g] for g in groups)
        self.characters = characters
        class_names = [f"{c}/rot{t * 90:03d}" for c, t in split_classes]
        class_group = torch.tensor([position[where[c]] for c, _ in split_classes], dtype=torch.long)
        class_rotation = torch.tensor([t for _, t in split_classes], dtype=torch.long)
        images = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        return images, sizes, class_names, class_group, class_rotation

    @classmethod
    def download(
        cls,
        root: str | os.PathLike,
        archives: Iterable[str] = ARCHIVES,
        splits: Iterable[str] = VINYALS_SPLITS,
        splits_dir: str | os.PathLike | None = None,
        base_url: str | None = None,
        splits_url: str | None = None,
        extract: bool = False,
    ) -> list[Path]:
        """Fetch the archives and Vinyals split files that ``root`` lacks; return what was fetched.

        An archive counts as present when ``root`` holds its zip or its extracted folder; a
        present file is never checked or replaced. Downloaded archives must match
        :attr:`ARCHIVE_MD5`; downloaded split files must look like Vinyals split files and have
        :attr:`SPLIT_SIZES` lines. ``extract=True`` also unzips each archive whose folder is
        missing (refusing members that would land outside ``root``).
        """
        root = Path(root).expanduser()
        splits_dir = Path(splits_dir).expanduser() if splits_dir is not None else root / "splits" / "vinyals"
        base = (base_url or DEFAULT_BASE_URL).rstrip("/") + "/"
        split_base = (splits_url or DEFAULT_SPLITS_URL).rstrip("/") + "/"
        fetched: list[Path] = []
        for stem in archives:
            if stem not in ARCHIVES:
                raise ValueError(f"Omniglot: unknown archive {stem!r}; valid: {', '.join(ARCHIVES)}")
            archive = root / f"{stem}.zip"
            if not archive.is_file() and not (root / stem).is_dir():
                fetched.append(download_file(base + archive.name, archive, md5=cls.ARCHIVE_MD5.get(archive.name)))
            if extract and archive.is_file() and not (root / stem).is_dir():
                safe_extract(archive, root)
        for split in splits:
            if split not in VINYALS_SPLITS:
                raise ValueError(
                    f"Omniglot: split files exist for {', '.join(VINYALS_SPLITS)} only, got {split!r}"
                )
            target = splits_dir / f"{split}.txt"
            if not target.is_file():
                validate = _split_validator(split, cls.SPLIT_SIZES.get(split))
                fetched.append(download_file(split_base + target.name, target, validate=validate))
        return fetched
