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

import functools
import io
import math
import os
import re
import struct
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .base import ClassImageDataset
from .cache import atomic_write_npz, file_digest, key_of, load_npz, resolve_cache_dir, tree_digest
from .download import download_file, is_safe_member, safe_extract

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
#
# Pillow spends most of ~0.4 ms per Omniglot PNG in per-image Python overhead, so 32k images
# take over 10 s. The images are 1-bit grayscale PNGs; the fast path below parses them with
# zlib, reverses the PNG row filters for all images of an archive at once with numpy, and
# resizes whole batches of square pictures with a re-implementation of Pillow's 8-bit LANCZOS
# (same coefficients, same fixed-point rounding, same two passes). Its output is checked against
# Pillow on a few images of every build; any difference, and any PNG outside the fast path's
# reach, goes through Pillow itself. On the real archives the two agree on all 32,460 images.

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PRECISION_BITS = 32 - 8 - 2  # Pillow's Resample.c, 8 bits per channel
_RESIZE_BATCH = 1024
_SELF_CHECKS = 4


class _SlowPath(Exception):
    """The fast path does not handle this PNG; Pillow will."""


def _png_scanlines(data: bytes) -> tuple[int, int, bytes]:
    """``(width, height, filtered rows)`` of a 1-bit grayscale non-interlaced PNG."""
    if data[:8] != _PNG_SIGNATURE:
        raise _SlowPath
    pos, end = 8, len(data)
    header = None
    idat = []
    while True:
        if pos + 12 > end:
            raise _SlowPath
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length or pos + 12 + length > end:
            raise _SlowPath
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        if zlib.crc32(body, zlib.crc32(kind)) != crc:
            raise _SlowPath
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body) if length == 13 else None
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        elif not kind[0] & 0x20:  # an unknown critical chunk (PLTE, ...)
            raise _SlowPath
        pos += 12 + length
    if header is None or header[2:] != (1, 0, 0, 0, 0) or not idat:
        raise _SlowPath
    width, height = header[0], header[1]
    try:
        rows = zlib.decompress(b"".join(idat))
    except zlib.error:
        raise _SlowPath from None
    size = ((width + 7) // 8 + 1) * height
    if width == 0 or height == 0 or len(rows) < size:
        raise _SlowPath
    return width, height, rows[:size]


def _unfilter(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reverse the PNG row filters of ``(n, height, 1 + row_bytes)`` images (one byte per pixel
    step, as for every bit depth below 8). Returns the rows and a mask of images with an invalid
    filter type."""
    n, height, stride = raw.shape
    width = stride - 1
    out = np.empty((n, height, width), dtype=np.uint8)
    prev = np.zeros((n, width), dtype=np.uint8)
    bad = np.zeros(n, dtype=bool)
    for r in range(height):
        kind = raw[:, r, 0]
        x = raw[:, r, 1:]
        cur = x.copy()
        up = kind == 2
        cur[up] += prev[up]
        sub = np.flatnonzero(kind == 1)
        if sub.size:
            cur[sub] = np.cumsum(x[sub], axis=1, dtype=np.uint8)
        for code in (3, 4):
            rows = np.flatnonzero(kind == code)
            if not rows.size:
                continue
            xs = x[rows].astype(np.int16)
            above = prev[rows].astype(np.int16)
            res = np.empty_like(xs)
            left = np.zeros(rows.size, dtype=np.int16)
            upper_left = np.zeros(rows.size, dtype=np.int16)
            for j in range(width):
                b = above[:, j]
                if code == 3:
                    pred = (left + b) >> 1
                else:
                    p = left + b - upper_left
                    pa, pb, pc = np.abs(p - left), np.abs(p - b), np.abs(p - upper_left)
                    pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, b, upper_left))
                left = (xs[:, j] + pred) & 0xFF
                res[:, j] = left
                upper_left = b
            cur[rows] = res.astype(np.uint8)
        bad |= kind > 4
        out[:, r] = cur
        prev = cur
    return out, bad


@functools.lru_cache(maxsize=16)
def _lanczos_weights(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's LANCZOS coefficients (``precompute_coeffs`` + ``normalize_coeffs_8bpc``) as an
    ``(out_size, in_size)`` matrix of 22-bit fixed-point integers (held in float64, exactly)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    inv = 1.0 / filterscale

    def sinc(x: float) -> float:
        if x == 0.0:
            return 1.0
        x *= math.pi
        return math.sin(x) / x

    def lanczos(x: float) -> float:
        return sinc(x) * sinc(x / 3.0) if -3.0 <= x < 3.0 else 0.0

    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        weights = [lanczos((x + xmin - center + 0.5) * inv) for x in range(xmax)]
        total = 0.0
        for w in weights:  # summed in order, as the C loop does
            total += w
        for x, w in enumerate(weights):
            w = w / total if total != 0.0 else w
            scaled = w * (1 << _PRECISION_BITS)
            matrix[xx, xmin + x] = int(scaled - 0.5) if w < 0 else int(scaled + 0.5)
    return matrix


def _round8(sums: np.ndarray) -> np.ndarray:
    """Pillow's ``clip8``, in place: ``(sum + 2**21) >> 22`` clipped to 0..255 (``sums`` hold
    integers)."""
    sums += float(1 << (_PRECISION_BITS - 1))
    sums *= 1.0 / (1 << _PRECISION_BITS)  # a power of two: exact
    np.floor(sums, out=sums)
    return np.clip(sums, 0, 255, out=sums)


def _resize(images: np.ndarray, image_size: int, binary: bool = False) -> np.ndarray:
    """Pillow ``resize((s, s), LANCZOS)`` of ``(n, h, w)`` uint8 images, bit for bit.

    With ``binary=True`` the images hold 0/1 and stand for 0/255 pictures. Square pictures
    are resized here, horizontal pass first as Pillow does for them; others by Pillow.
    """
    n, height, width = images.shape
    if (height, width) == (image_size, image_size):
        return images * np.uint8(255) if binary else images.copy()
    if height != width:
        # Pillow may run the vertical pass first for oblong pictures; leave those to it.
        from PIL import Image

        pixels = images * np.uint8(255) if binary else images
        return np.stack(
            [np.asarray(Image.fromarray(p).resize((image_size, image_size), Image.LANCZOS)) for p in pixels]
        )
    horizontal = _lanczos_weights(width, image_size).T  # (w, s)
    vertical = _lanczos_weights(height, image_size).T  # (h, s)
    horizontal32 = horizontal.astype(np.float32)
    out = np.empty((n, image_size, image_size), dtype=np.uint8)
    for start in range(0, n, _RESIZE_BATCH):
        block = images[start : start + _RESIZE_BATCH]
        m = block.shape[0]
        flat = block.reshape(m * height, width)
        # Every product and partial sum is an integer small enough for the float type used
        # (below 2**24 for 0/1 pixels in float32, below 2**53 in float64), so the matrix
        # products give Pillow's fixed-point sums exactly. Horizontal pass, rounded to 8 bits:
        if binary:
            # Blank rows (about half of an Omniglot picture) sum to 0: skip them.
            live = np.flatnonzero(flat.any(axis=1))
            sums = np.zeros((m * height, image_size), dtype=np.float64)
            sums[live] = flat[live].astype(np.float32) @ horizontal32
            sums *= 255.0
        else:
            sums = flat.astype(np.float64) @ horizontal
        rows = _round8(sums)
        # then the vertical pass, over the columns of that intermediate image.
        cols = rows.reshape(m, height, image_size).transpose(0, 2, 1).reshape(m * image_size, height)
        cols = _round8(cols @ vertical)
        out[start : start + m] = cols.reshape(m, image_size, image_size).transpose(0, 2, 1)
    return out


def _pil_pixels(data: bytes, where: str) -> np.ndarray:
    """Pillow's decoding of one PNG: grayscale, inverted, full size, uint8."""
    from PIL import Image, ImageOps

    try:
        img = Image.open(io.BytesIO(data), formats=("PNG",))
        img.load()
        return np.asarray(ImageOps.invert(img.convert("L")), dtype=np.uint8)
    except Exception as err:  # Pillow raises several types for damaged files
        raise ValueError(
            f"Omniglot: corrupt image: {where} could not be decoded ({type(err).__name__}: {err}); "
            f"replace the archive (delete it and pass download=True)"
        ) from None


def _pil_reference(data: bytes, where: str, image_size: int) -> np.ndarray:
    """The whole preprocessing done by Pillow alone (the fast path must agree with it)."""
    from PIL import Image

    full = _pil_pixels(data, where)
    if full.shape == (image_size, image_size):
        return full
    img = Image.fromarray(full).resize((image_size, image_size), Image.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def _decode_images(blobs: Sequence[bytes], wheres: Sequence[str], image_size: int) -> np.ndarray:
    """PNG bytes -> ``(n, image_size, image_size)`` uint8, strokes 255 on 0."""
    n = len(blobs)
    out = np.empty((n, image_size, image_size), dtype=np.uint8)
    fast: dict[tuple[int, int], list[tuple[int, bytes]]] = {}
    slow: list[int] = []
    for i, data in enumerate(blobs):
        try:
            width, height, rows = _png_scanlines(data)
        except _SlowPath:
            slow.append(i)
        else:
            fast.setdefault((height, width), []).append((i, rows))
    checked: list[int] = []
    for (height, width), items in fast.items():
        index = np.array([i for i, _ in items])
        raw = np.frombuffer(b"".join(rows for _, rows in items), dtype=np.uint8)
        rows, bad = _unfilter(raw.reshape(len(items), height, -1))
        slow.extend(int(i) for i in index[bad])
        index, rows = index[~bad], rows[~bad]
        for start in range(0, len(index), _RESIZE_BATCH):
            # 1-bit pixels: 0 is ink, 1 is paper; stored inverted, ink = 255.
            ink = np.unpackbits(~rows[start : start + _RESIZE_BATCH], axis=2)[:, :, :width]
            out[index[start : start + _RESIZE_BATCH]] = _resize(ink, image_size, binary=True)
        if index.size:
            checked.extend(int(index[j]) for j in np.linspace(0, index.size - 1, _SELF_CHECKS).astype(int))
    by_shape: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}
    for i in sorted(set(slow)):
        full = _pil_pixels(blobs[i], wheres[i])
        by_shape.setdefault(full.shape, []).append((i, full))
    for items in by_shape.values():
        out[[i for i, _ in items]] = _resize(np.stack([full for _, full in items]), image_size)
        checked.append(items[0][0])
    for i in checked:
        if not np.array_equal(out[i], _pil_reference(blobs[i], wheres[i], image_size)):
            warnings.warn(
                "Omniglot: the fast PNG path disagrees with Pillow on this system; decoding every "
                "image with Pillow instead (slower)"
            )
            return np.stack([_pil_reference(b, w, image_size) for b, w in zip(blobs, wheres)])
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
        for name in names:
            if not is_safe_member(name):
                raise ValueError(
                    f"Omniglot: refusing {source}: member {name!r} is an absolute path or contains "
                    f"'..'; the archive is corrupt or malicious"
                )
        entries = _sorted_entries(names, stem, source)
        data = source.read_bytes()
        blobs = []
        for _, name in entries:
            try:
                blobs.append(_zip_member(zf, data, name))
            except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as err:
                raise ValueError(
                    f"Omniglot: corrupt image: member {name!r} of {source} cannot be read ({err}); "
                    f"replace the archive (delete it and pass download=True)"
                ) from None
    return [k for k, _ in entries], blobs, [f"member {name!r} of {source}" for _, name in entries]


def _zip_member(zf: zipfile.ZipFile, data: bytes, name: str) -> bytes:
    """A member's bytes, inflated straight from the archive's bytes (``zipfile.read`` costs
    ten times more per small member); unusual members go through ``zipfile``."""
    info = zf.getinfo(name)
    offset = info.header_offset
    if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return zf.read(info)
    if data[offset : offset + 4] != b"PK\x03\x04":
        raise ValueError("bad local header")
    name_len, extra_len = struct.unpack_from("<HH", data, offset + 26)
    start = offset + 30 + name_len + extra_len
    payload = data[start : start + info.compress_size]
    if len(payload) != info.compress_size:
        raise ValueError("truncated member")
    if info.compress_type == zipfile.ZIP_DEFLATED:
        payload = zlib.decompress(payload, -15)
    if len(payload) != info.file_size or zlib.crc32(payload) != info.CRC:
        raise ValueError("CRC or size mismatch")
    return payload


def _cache_path(cache_dir: Path, stem: str, kind: str, source: Path, image_size: int) -> Path:
    digest = file_digest(source, "md5") if kind == "zip" else tree_digest(source)
    key = key_of(["Omniglot", stem, kind, digest, str(image_size), FORMAT_VERSION])
    return cache_dir / f"omniglot-{stem}-{image_size}px-{key}.npz"


def _read_cache(path: Path, image_size: int) -> dict[str, np.ndarray] | None:
    try:
        arrays = load_npz(path)
        images, characters, sizes = arrays["images"], arrays["characters"], arrays["group_sizes"]
    except Exception as err:  # unreadable entry: rebuild it
        warnings.warn(f"Omniglot: ignoring unreadable cache file {path} ({err}); rebuilding it")
        return None
    if (
        images.dtype != np.uint8
        or images.shape[1:] != (1, image_size, image_size)
        or int(sizes.sum()) != images.shape[0]
        or len(characters) != len(sizes)
    ):
        warnings.warn(f"Omniglot: cache file {path} does not match its name; rebuilding it")
        return None
    return arrays


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
    arrays = _read_cache(cache_file, image_size) if cache_file.is_file() else None
    if arrays is None:
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
        arrays = {
            "images": pixels[:, None],
            "characters": np.array(characters, dtype=str),
            "group_sizes": np.array(sizes, dtype=np.int64),
            "format": np.array(FORMAT_VERSION),
        }
        atomic_write_npz(cache_file, arrays)
    return arrays["images"], [str(c) for c in arrays["characters"]], arrays["group_sizes"], cache_file


# ----------------------------------------------------------------------------- split files


def read_split_file(path: str | os.PathLike) -> list[tuple[str, int]]:
    """``[(Alphabet/characterNN, quarter_turns), ...]`` from a Vinyals split file."""
    path = Path(path)
    classes: list[tuple[str, int]] = []
    seen: set[str] = set()
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
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
                raise ValueError(
                    f"Omniglot: {split_file} names {character}/rot{turns * 90:03d}, a character in "
                    f"neither {' nor '.join(s + '.zip' for s in stems)} under {self.root}; check that "
                    f"the split file and the archives belong together"
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
