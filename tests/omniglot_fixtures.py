"""Small generated Omniglot look-alikes in the official layout, for tests that need no real data.

``make_omniglot(root)`` writes ``images_background.zip`` and ``images_evaluation.zip`` (and/or
their extracted folders) holding random 105x105 one-bit PNGs,
``images_<set>/<Alphabet>/<characterNN>/<id>_<drawer>.png``, plus Vinyals-style split files
``splits/vinyals/{train,val,trainval,test}.txt`` over those characters (four rotations each).
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ALPHABETS = {
    "images_background": ["Alpha", "Beta"],
    "images_evaluation": ["Gamma", "Delta"],
}
CHARACTERS = 3
DRAWERS = 20
SIZE = 105
ROTATIONS = ("rot000", "rot090", "rot180", "rot270")

# Vinyals-style split over the generated characters: train and val are disjoint, trainval is
# their union, test is disjoint from both; train takes characters from both archives.
SPLIT_CHARACTERS = {
    "train": [f"Alpha/character0{i}" for i in (1, 2, 3)]
    + [f"Beta/character0{i}" for i in (1, 2)]
    + ["Gamma/character01"],
    "val": ["Beta/character03", "Gamma/character02"],
    "test": ["Gamma/character03"] + [f"Delta/character0{i}" for i in (1, 2, 3)],
}
SPLIT_CHARACTERS["trainval"] = SPLIT_CHARACTERS["train"] + SPLIT_CHARACTERS["val"]


def split_lines(split: str) -> list[str]:
    return [f"{c}/{r}" for c in SPLIT_CHARACTERS[split] for r in ROTATIONS]


def random_ink(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A random asymmetric 'drawing': a few thick random-walk strokes and some specks."""
    strokes = int(rng.integers(3, 7))
    steps = int(rng.integers(10, 40))
    start = rng.integers(10, size - 10, size=(strokes, 1, 2))
    walk = np.clip(start + rng.integers(-3, 4, size=(strokes, steps, 2)).cumsum(axis=1), 0, size - 1)
    points = np.zeros((size + 4, size + 4), dtype=bool)
    points[walk[..., 0].ravel() + 2, walk[..., 1].ravel() + 2] = True
    ink = np.zeros((size, size), dtype=bool)
    for dy in range(4):  # thicken to 4x4 pens
        for dx in range(4):
            ink |= points[dy : dy + size, dx : dx + size]
    return ink | (rng.random((size, size)) < 0.01)


def png_bytes(ink: np.ndarray) -> bytes:
    """A one-bit PNG as the official data has them (white paper = 1, black ink = 0), via Pillow."""
    buf = io.BytesIO()
    Image.fromarray(~ink).save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))


def encode_png_1bit(ink: np.ndarray, filters: list[int] | None = None, extra: bytes = b"") -> bytes:
    """A hand-made one-bit grayscale PNG whose rows use the given filter types (0-4, or an
    invalid code). ``extra`` is inserted as raw chunk bytes before IDAT."""
    height, width = ink.shape
    rows = np.packbits(~ink, axis=1).astype(np.int32)  # paper = 1
    filters = filters if filters is not None else [r % 5 for r in range(height)]
    out = bytearray()
    prev = np.zeros(rows.shape[1], dtype=np.int32)
    for r in range(height):
        cur = rows[r]
        kind = filters[r]
        left = np.concatenate([[0], cur[:-1]])
        upper_left = np.concatenate([[0], prev[:-1]])
        if kind == 1:
            enc = cur - left
        elif kind == 2:
            enc = cur - prev
        elif kind == 3:
            enc = cur - (left + prev) // 2
        elif kind == 4:
            p = left + prev - upper_left
            pa, pb, pc = np.abs(p - left), np.abs(p - prev), np.abs(p - upper_left)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upper_left))
            enc = cur - pred
        else:
            enc = cur
        out.append(kind)
        out.extend((enc & 0xFF).astype(np.uint8).tobytes())
        prev = cur
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + extra
        + _chunk(b"IDAT", zlib.compress(bytes(out)))
        + _chunk(b"IEND", b"")
    )


def generate(seed: int = 0) -> dict[str, dict[str, bytes]]:
    """``{archive stem: {member name: png bytes}}`` in the official layout."""
    rng = np.random.default_rng(seed)
    archives: dict[str, dict[str, bytes]] = {}
    image_id = 1
    for stem, alphabets in ALPHABETS.items():
        members = {}
        for alphabet in alphabets:
            for c in range(1, CHARACTERS + 1):
                for drawer in range(1, DRAWERS + 1):
                    name = f"{stem}/{alphabet}/character{c:02d}/{image_id:04d}_{drawer:02d}.png"
                    members[name] = png_bytes(random_ink(rng))
                image_id += 1
        archives[stem] = members
    return archives


def write_zip(path: Path, members: dict[str, bytes], directories: bool = True,
              compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """A zip like the official ones (with directory entries unless ``directories=False``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression) as zf:
        if directories:
            folders = sorted({"/".join(name.split("/")[:k]) + "/" for name in members
                              for k in range(1, name.count("/") + 1)})
            for folder in folders:
                zf.writestr(folder, b"")
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def write_folder(root: Path, members: dict[str, bytes]) -> None:
    for name, data in members.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def write_splits(folder: Path, splits: dict[str, list[str]] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    splits = splits or {s: split_lines(s) for s in SPLIT_CHARACTERS}
    for split, lines in splits.items():
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return folder


def make_omniglot(root: Path, *, zips: bool = True, folders: bool = False, splits: bool = True,
                  seed: int = 0) -> dict[str, dict[str, bytes]]:
    """Write a generated Omniglot into ``root``; return its members (see :func:`generate`)."""
    root.mkdir(parents=True, exist_ok=True)
    archives = generate(seed)
    for stem, members in archives.items():
        if zips:
            write_zip(root / f"{stem}.zip", members)
        if folders:
            write_folder(root, members)
    if splits:
        write_splits(root / "splits" / "vinyals")
    return archives


def expected_pixels(png: bytes, image_size: int = 28) -> np.ndarray:
    """What the loader must store for one PNG, computed by Pillow alone."""
    img = Image.open(io.BytesIO(png)).convert("L")
    img = Image.eval(img, lambda v: 255 - v)
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.LANCZOS)
    return np.asarray(img, dtype=np.uint8)
