"""A small stand-in for ``cifar-100-python.tar.gz`` in its real layout (the archive is 161 MB).

The archive holds ``cifar-100-python/{train,test,meta}``, Python 2 pickles of dicts with
``data`` (uint8 ``N x 3072``, the R, G and B planes), ``fine_labels``, ``coarse_labels`` and
the label names, with CIFAR-100's real 100 classes and 20 superclasses; only the number of
images per class is small. Images of different classes are interleaved, as in the real
batches, so a reader has to regroup them.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

from py2_pickles import py2_dumps

SUPERCLASSES = {
    "aquatic_mammals": "beaver dolphin otter seal whale",
    "fish": "aquarium_fish flatfish ray shark trout",
    "flowers": "orchid poppy rose sunflower tulip",
    "food_containers": "bottle bowl can cup plate",
    "fruit_and_vegetables": "apple mushroom orange pear sweet_pepper",
    "household_electrical_devices": "clock keyboard lamp telephone television",
    "household_furniture": "bed chair couch table wardrobe",
    "insects": "bee beetle butterfly caterpillar cockroach",
    "large_carnivores": "bear leopard lion tiger wolf",
    "large_man-made_outdoor_things": "bridge castle house road skyscraper",
    "large_natural_outdoor_scenes": "cloud forest mountain plain sea",
    "large_omnivores_and_herbivores": "camel cattle chimpanzee elephant kangaroo",
    "medium_mammals": "fox porcupine possum raccoon skunk",
    "non-insect_invertebrates": "crab lobster snail spider worm",
    "people": "baby boy girl man woman",
    "reptiles": "crocodile dinosaur lizard snake turtle",
    "small_mammals": "hamster mouse rabbit shrew squirrel",
    "trees": "maple_tree oak_tree palm_tree pine_tree willow_tree",
    "vehicles_1": "bicycle bus motorcycle pickup_truck train",
    "vehicles_2": "lawn_mower rocket streetcar tank tractor",
}
COARSE_NAMES = sorted(SUPERCLASSES)
FINE_NAMES = sorted(f for fines in SUPERCLASSES.values() for f in fines.split())
COARSE_OF = {f: COARSE_NAMES.index(c) for c, fines in SUPERCLASSES.items() for f in fines.split()}
PER_CLASS = {"train": 4, "test": 2}


def make_batches(seed: int = 0) -> dict[str, dict]:
    """``train`` and ``test`` as ``{data, fine_labels, coarse_labels}``, classes interleaved."""
    rng = np.random.default_rng(seed)
    batches = {}
    for part, count in PER_CLASS.items():
        fine = np.tile(np.arange(len(FINE_NAMES)), count)
        rng.shuffle(fine)
        data = rng.integers(0, 256, size=(len(fine), 3072), dtype=np.uint8)
        coarse = [COARSE_OF[FINE_NAMES[f]] for f in fine]
        batches[part] = {"data": data, "fine_labels": [int(f) for f in fine], "coarse_labels": coarse}
    return batches


def member_bytes(batches: dict[str, dict]) -> dict[str, bytes]:
    out = {}
    for part, batch in batches.items():
        out[part] = py2_dumps({
            b"batch_label": f"{part}ing batch 1 of 1".encode(),
            b"filenames": [f"img_{i}.png".encode() for i in range(len(batch["fine_labels"]))],
            b"data": batch["data"],
            b"fine_labels": batch["fine_labels"],
            b"coarse_labels": batch["coarse_labels"],
        })
    out["meta"] = py2_dumps({
        b"fine_label_names": [n.encode() for n in FINE_NAMES],
        b"coarse_label_names": [n.encode() for n in COARSE_NAMES],
    })
    return out


def write_archive(root: Path, batches: dict[str, dict] | None = None, members: dict[str, bytes] | None = None,
                  extra: dict[str, bytes] | None = None) -> Path:
    """``root/cifar-100-python.tar.gz``; ``members`` replaces what is written, ``extra`` adds
    members by their full name."""
    root.mkdir(parents=True, exist_ok=True)
    members = members if members is not None else member_bytes(batches or make_batches())
    path = root / "cifar-100-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo("cifar-100-python")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        named = {f"cifar-100-python/{k}": v for k, v in members.items()}
        for name, payload in {**named, **(extra or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def write_folder(root: Path, batches: dict[str, dict] | None = None) -> Path:
    """The archive's extracted form, ``root/cifar-100-python/{train,test,meta}``."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, payload in member_bytes(batches or make_batches()).items():
        (folder / name).write_bytes(payload)
    return root


def expected_class(batches: dict[str, dict], name: str) -> np.ndarray:
    """The ``(n, 3, 32, 32)`` images of class ``name``: its train images, then its test images."""
    label = FINE_NAMES.index(name)
    parts = [batches[p]["data"][np.asarray(batches[p]["fine_labels"]) == label] for p in ("train", "test")]
    return np.concatenate(parts).reshape(-1, 3, 32, 32)
