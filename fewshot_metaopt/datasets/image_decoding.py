"""Encoded images (PNG, JPEG, ... bytes or files) to uint8 ``(C, S, S)`` pixels, on every core.

The loaders of tieredImageNet, CUB and image folders decode each image once, convert it to
RGB (or grayscale), resize it to ``S`` x ``S`` with LANCZOS when it is not that size already
(as miniImageNet's images were made), and cache the result. A file that cannot be decoded is
a one-line error naming it, never a silently black image.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

# What Pillow raises for a damaged, truncated or foreign file (UnidentifiedImageError is an OSError).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError)


def decode(source: bytes | Path, where: str, size: int, mode: str, owner: str, fix: str) -> np.ndarray:
    """One image as uint8 ``(C, size, size)``; ``where`` names it and ``fix`` says what to do
    in the error a damaged image raises."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as im:
            im = im.convert(mode)
            if im.size != (size, size):
                im = im.resize((size, size), resample=Image.Resampling.LANCZOS)
            pixels = np.asarray(im, dtype=np.uint8)
    except DECODE_ERRORS as err:
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        raise ValueError(f"{owner}: cannot decode {where} ({reason}); {fix}") from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def decode_all(
    count: int,
    read: Callable[[int], tuple[bytes | Path, str]],
    size: int,
    mode: str,
    owner: str,
    fix: str,
) -> np.ndarray:
    """``count`` images as one uint8 ``(count, C, size, size)`` array; ``read(i)`` gives image
    ``i``'s bytes or path and its description."""
    channels = len(mode)  # "L" or "RGB"
    out = np.empty((count, channels, size, size), dtype=np.uint8)

    def work(i: int) -> None:
        source, where = read(i)
        out[i] = decode(source, where, size, mode, owner, fix)

    # Pillow releases the GIL while decoding and resizing, so threads use every core.
    pool = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1, count)))
    try:
        for _ in pool.map(work, range(count)):
            pass
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def decode_files(paths: Sequence[Path], size: int, mode: str, owner: str, fix: str) -> np.ndarray:
    """:func:`decode_all` over image files."""
    return decode_all(len(paths), lambda i: (paths[i], f"image {paths[i]}"), size, mode, owner, fix)
