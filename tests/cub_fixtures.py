"""A small stand-in for CUB-200-2011 in its real layout (the archive is 1.1 GB).

``CUB_200_2011/images/<NNN.Species>/<Species>_<NNNN>_<id>.jpg`` with the real 200 class folder
names, two or three small JPEGs a class (the real ones hold 41 to 60), some grayscale as a
few real photographs are; the archive form is ``CUB_200_2011.tgz`` with the images and the
official top-level ``attributes.txt`` beside them.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from fewshot_metaopt.datasets.class_splits import packaged_split

CLASSES = sorted(packaged_split("cub", "trainval", "test") + packaged_split("cub", "test", "test"))


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def make_images(seed: int = 0) -> dict[str, bytes]:
    """Relative path under ``CUB_200_2011/images`` -> JPEG bytes."""
    rng = np.random.default_rng(seed)
    files = {}
    for number, name in enumerate(CLASSES):
        species = name.split(".", 1)[1]
        for j in range(2 + (number % 3 == 0)):
            shape = (20, 24) if j == 1 else (20, 24, 3)  # the second image of each class is grayscale
            pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
            files[f"{name}/{species}_{j + 1:04d}_{number * 10 + j}.jpg"] = jpeg(pixels)
    return files


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    images = root / "CUB_200_2011" / "images"
    for relative, payload in files.items():
        path = images / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
    return root


def write_archive(root: Path, files: dict[str, bytes], extra: dict[str, bytes] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / "CUB_200_2011.tgz", "w:gz") as tar:
        members = {"attributes.txt": b"1 has_bill_shape::curved\n",
                   **{f"CUB_200_2011/images/{k}": v for k, v in files.items()}, **(extra or {})}
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return root
