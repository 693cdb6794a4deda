"""Small stand-ins for tieredImageNet in its released forms (the real train split is 12 GB).

Ren et al.'s pickles: ``<split>_images_png.pkl``, a Python 2 pickle of a list of PNG-encoded
84x84 RGB images (uint8 arrays shaped ``(n, 1)`` as OpenCV's ``imencode`` returns them), and
``<split>_labels.pkl``, a dict of ``label_specific``, ``label_specific_str``, ``label_general``
and ``label_general_str``. torchmeta's hdf5: ``<split>_data.hdf5`` with a group ``datasets``
of one variable-length uint8 dataset of PNG bytes per class (its category in the attribute
``label_general``) and ``<split>_labels.json``. Images of different classes are interleaved
and class ids are not in name order, so a reader has to regroup and sort.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from py2_pickles import py2_dumps

SIZE = 84
# split -> (class synset, category); ids are list positions, deliberately not in name order
CLASSES = {
    "train": [("n03000003", "instrument"), ("n01000001", "animal"), ("n02000002", "animal"), ("n04000004", "vessel")],
    "val": [("n06000002", "food"), ("n05000001", "plant")],
    "test": [("n09000003", "craft"), ("n07000001", "device"), ("n08000002", "device")],
}
PER_CLASS = 5


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def make_split(split: str, seed: int = 0) -> tuple[list[int], list[np.ndarray]]:
    """``(class id of each image, HWC pixels of each image)``, classes interleaved."""
    rng = np.random.default_rng(seed + len(split))
    ids, pixels = [], []
    for _ in range(PER_CLASS):
        for class_id in range(len(CLASSES[split])):
            base = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
            ids.append(class_id)
            pixels.append(np.kron(base, np.ones((7, 7, 1), dtype=np.uint8)))
    return ids, pixels


def expected(split: str, data) -> tuple[list[str], np.ndarray]:
    """Sorted class names and the ``(N, 3, 84, 84)`` pixels a reader must produce."""
    ids, pixels = data[split]
    names = [n for n, _ in CLASSES[split]]
    order = sorted(range(len(names)), key=names.__getitem__)
    images = [pixels[i].transpose(2, 0, 1) for c in order for i, k in enumerate(ids) if k == c]
    return [names[c] for c in order], np.stack(images)


def labels_dict(split: str, ids: list[int]) -> dict:
    categories = sorted({c for _, c in CLASSES[split]})
    return {
        b"label_specific": np.asarray(ids, dtype=np.int64),
        b"label_specific_str": [n.encode() for n, _ in CLASSES[split]],
        b"label_general": np.asarray([categories.index(CLASSES[split][k][1]) for k in ids], dtype=np.int64),
        b"label_general_str": [c.encode() for c in categories],
    }


def write_pickles(folder: Path, data: dict[str, tuple], splits=("train", "val", "test")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        ids, pixels = data[split]
        encoded = [np.frombuffer(png(p), dtype=np.uint8).reshape(-1, 1) for p in pixels]
        (folder / f"{split}_images_png.pkl").write_bytes(py2_dumps(encoded))
        (folder / f"{split}_labels.pkl").write_bytes(py2_dumps(labels_dict(split, ids)))
    return folder


def write_hdf5(folder: Path, data: dict[str, tuple], splits=("train", "val", "test")) -> Path:
    """torchmeta's conversion of the pickles, as its download() writes it."""
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        ids, pixels = data[split]
        names = [n for n, _ in CLASSES[split]]
        (folder / f"{split}_labels.json").write_text(json.dumps(names))
        with h5py.File(folder / f"{split}_data.hdf5", "w") as f:
            group = f.create_group("datasets")
            dtype = h5py.special_dtype(vlen=np.uint8)
            for class_id, (name, category) in enumerate(CLASSES[split]):
                indices = [i for i, k in enumerate(ids) if k == class_id]
                dataset = group.create_dataset(name, (len(indices),), dtype=dtype)
                dataset.attrs["label_general"] = category
                dataset.attrs["label_specific"] = name
                for j, k in enumerate(indices):
                    dataset[j] = np.frombuffer(png(pixels[k]), dtype=np.uint8)
    return folder


def make_data() -> dict[str, tuple]:
    return {split: make_split(split) for split in CLASSES}
