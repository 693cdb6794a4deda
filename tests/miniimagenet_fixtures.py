"""Small stand-ins for miniImageNet in both on-disk layouts (real images cannot be shipped).

The fixtures keep the real layout and shapes (84x84 RGB, synset-style class names, Ravi
``filename,label`` CSVs, learn2learn ``mini-imagenet-cache-*.pkl`` dicts) with few classes
and images. CSV rows interleave classes and the pickles store images in a shuffled order,
so that both readers have to regroup by sorted class name to agree.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 84
# split -> class names (synset-like, deliberately not in sorted order)
CLASSES = {
    "train": ["n03000005", "n01000001", "n04000004", "n02000002", "n01500003"],
    "val": ["n07000002", "n06000001", "n07500003"],
    "test": ["n09000001", "n08000002", "n08500003"],
}
PER_CLASS = {"train": 25, "val": 20, "test": 20}


def make_data(seed: int = 0) -> dict[str, list[tuple[str, str, np.ndarray]]]:
    """split -> rows ``(filename, label, pixels HWC uint8)`` in CSV order (classes interleaved)."""
    rng = np.random.default_rng(seed)
    data = {}
    for split, names in CLASSES.items():
        rows = []
        for j in range(PER_CLASS[split]):
            for name in names:
                # Smooth-ish random images: lossy JPEG stays close to them.
                base = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
                big = np.kron(base, np.ones((7, 7, 1), dtype=np.uint8))
                rows.append((f"{name}{j + 1:08d}.png", name, big))
        data[split] = rows
    return data


def expected_split(data, split: str) -> tuple[list[str], np.ndarray]:
    """Sorted class names and the (N, 3, H, W) pixels a reader must produce."""
    parts = ("train", "val") if split == "trainval" else (split,)
    by_class: dict[str, list[np.ndarray]] = {}
    for part in parts:
        for _, label, pixels in data[part]:
            by_class.setdefault(label, []).append(pixels)
    names = sorted(by_class)
    images = np.stack([p.transpose(2, 0, 1) for n in names for p in by_class[n]])
    return names, images


def write_csv(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["filename,label"] + [f"{filename},{label}" for filename, label, *_ in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_ravi(root: Path, data, ext: str = "png", csv_dir: Path | None = None) -> Path:
    """``root/images/*.<ext>`` plus ``<split>.csv`` in ``csv_dir`` (default ``root``)."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    csv_dir = root if csv_dir is None else csv_dir
    for split, rows in data.items():
        renamed = []
        for filename, label, pixels in rows:
            filename = filename.rsplit(".", 1)[0] + "." + ext
            options = {"quality": 95} if ext == "jpg" else {}
            Image.fromarray(pixels).save(images / filename, **options)
            renamed.append((filename, label, pixels))
        write_csv(csv_dir / f"{split}.csv", renamed)
    return root


def pickle_dict(rows, seed: int = 1) -> dict:
    """A learn2learn-style dict: shuffled ``image_data`` and ``class_dict`` of index lists."""
    order = np.random.default_rng(seed).permutation(len(rows))  # storage slot -> row
    slot_of = np.empty_like(order)
    slot_of[order] = np.arange(len(rows))
    image_data = np.stack([rows[i][2] for i in order])
    class_dict: dict[str, list[int]] = {}
    for i, (_, label, _) in enumerate(rows):
        class_dict.setdefault(label, []).append(int(slot_of[i]))
    # learn2learn's dicts are not sorted by name either
    class_dict = dict(reversed(list(class_dict.items())))
    return {"image_data": image_data, "class_dict": class_dict}


def write_pickles(root: Path, data, val_name: str = "val", protocol: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, rows in data.items():
        name = val_name if split == "val" else split
        with open(root / f"mini-imagenet-cache-{name}.pkl", "wb") as f:
            pickle.dump(pickle_dict(rows), f, protocol=protocol)
    return root
