"""miniImageNet from torchmeta's hdf5 files: the same classes and pixels as the pickles they come from."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fewshot_metaopt.datasets import MiniImageNet, MiniImageNetHDF5
from miniimagenet_fixtures import CLASSES, PER_CLASS, make_data, pickle_dict, write_pickles


def write_torchmeta(folder: Path, data) -> Path:
    """What torchmeta's MiniImagenetClassDataset.download() writes from the pickles."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in data.items():
        pickled = pickle_dict(rows)
        images, classes = pickled["image_data"], pickled["class_dict"]
        with h5py.File(folder / f"{split}_data.hdf5", "w") as f:
            group = f.create_group("datasets")
            for name, indices in classes.items():
                group.create_dataset(name, data=images[indices])
        (folder / f"{split}_labels.json").write_text(json.dumps(sorted(classes)))
    return folder


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture(scope="module")
def roots(tmp_path_factory, data):
    base = tmp_path_factory.mktemp("mini")
    return write_torchmeta(base / "torchmeta" / "miniimagenet", data).parent, write_pickles(base / "pickles", data)


@pytest.mark.parametrize("split", ["train", "val", "test", "trainval"])
def test_the_hdf5_files_give_the_classes_and_pixels_of_the_pickles(roots, split):
    hdf5, pickles = roots
    ds, reference = MiniImageNetHDF5(hdf5, split), MiniImageNet(pickles, split)
    assert ds.class_names == reference.class_names and torch.equal(ds.images, reference.images)
    parts = ("train", "val") if split == "trainval" else (split,)
    assert ds.images.dtype == torch.uint8 and ds.image_shape == (3, 84, 84)
    assert ds.samples_per_class == min(PER_CLASS[p] for p in parts)
    assert ds.name == "MiniImageNetHDF5" and all(p.parent.name == "miniimagenet" for p in ds.sources)
    assert [p.suffix for p in ds.split_files] == [".json"] * (2 if split == "trainval" else 1)


def test_files_directly_in_root_are_found_and_episodes_normalised(roots):
    hdf5, _ = roots
    ds = MiniImageNetHDF5(hdf5 / "miniimagenet", "val", mean=[0.5] * 3, std=[0.5] * 3)
    assert ds.num_classes == len(CLASSES["val"])
    episode = ds.sample_episode(3, 1, 2, torch.Generator().manual_seed(0))
    assert episode.support_x.shape == (3, 3, 84, 84) and float(episode.support_x.min()) < 0


def test_wrong_files_and_arguments_are_one_line_errors(tmp_path, roots):
    with pytest.raises(FileNotFoundError, match=r"no train_data.hdf5 with train_labels.json .* \(the folder does not "
                                                r"exist\); torchmeta writes them"):
        MiniImageNetHDF5(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="the hdf5 files hold 84x84 images, got image_size=32"):
        MiniImageNetHDF5(roots[0], image_size=32)
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        MiniImageNetHDF5(roots[0], "validation")
    encoded = tmp_path / "encoded"
    encoded.mkdir()
    (encoded / "test_labels.json").write_text(json.dumps(["n1"]))
    with h5py.File(encoded / "test_data.hdf5", "w") as f:
        rows = f.create_group("datasets").create_dataset("n1", (1,), dtype=h5py.special_dtype(vlen=np.uint8))
        rows[0] = np.frombuffer(b"\x89PNG", dtype=np.uint8)
    with pytest.raises(ValueError, match="holds encoded images, not uint8 84x84x3 pixels.*TieredImageNet"):
        MiniImageNetHDF5(encoded, "test")
    with h5py.File(encoded / "test_data.hdf5", "w") as f:
        group = f.create_group("datasets")
        group.create_dataset("n1", data=np.zeros((2, 84, 84, 3), np.float32))
    with pytest.raises(ValueError, match="class 'n1' is float32 .* must be uint8 \\(n, H, W, C\\) pixels"):
        MiniImageNetHDF5(encoded, "test")
    with h5py.File(encoded / "test_data.hdf5", "w") as f:
        f.create_group("datasets").create_dataset("n1", data=np.zeros((0, 84, 84, 3), np.uint8))
    with pytest.raises(ValueError, match="holds no image of the class 'n1'"):
        MiniImageNetHDF5(encoded, "test")


def test_a_class_in_train_and_val_is_refused_for_trainval(tmp_path, data):
    root = write_torchmeta(tmp_path / "mixed", {"train": data["train"], "val": data["train"]})
    with pytest.raises(ValueError, match="is in both the train and val files"):
        MiniImageNetHDF5(root, "trainval")
