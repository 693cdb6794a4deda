"""tieredImageNet: Ren et al.'s pickles (in root or learn2learn's tiered-imagenet/), torchmeta's hdf5,
the decode cache and every input error."""

from __future__ import annotations

import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch

from fewshot_metaopt.datasets import TieredImageNet, tiered_imagenet
from fewshot_metaopt.datasets.safe_pickle import UnsafePickleError
from py2_pickles import py2_dumps
from tiered_fixtures import CLASSES, PER_CLASS, expected, labels_dict, make_data, write_hdf5, write_pickles


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture(scope="module")
def pickle_root(tmp_path_factory, data):
    return write_pickles(tmp_path_factory.mktemp("tiered"), data)


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


def test_the_pickles_give_sorted_classes_of_uint8_images_with_their_categories(pickle_root, data, cache_dir):
    ds = TieredImageNet(pickle_root, "train", cache_dir=cache_dir)
    names, images = expected("train", data)
    assert ds.format == "pickle" and ds.class_names == names == sorted(names)
    assert ds.images.dtype == torch.uint8 and ds.image_shape == (3, 84, 84)
    assert ds.num_classes == 4 and ds.samples_per_class == PER_CLASS
    np.testing.assert_array_equal(ds.images.numpy(), images)  # PNG is lossless: exactly the pixels
    assert ds.categories == [dict(CLASSES["train"])[n] for n in names]
    assert ds.sources == [pickle_root / "train_images_png.pkl", pickle_root / "train_labels.pkl"]
    assert ds.split_files == [pickle_root / "train_labels.pkl"]
    assert "tieredImageNet(split='train', classes=4" in repr(ds)
    episode = ds.sample_episode(3, 2, 3, torch.Generator().manual_seed(0))
    assert episode.support_x.shape == (6, 3, 84, 84) and episode.query_x.shape == (9, 3, 84, 84)


def test_splits_are_disjoint_and_trainval_joins_train_and_val(pickle_root, cache_dir):
    splits = {s: TieredImageNet(pickle_root, s, cache_dir=cache_dir) for s in ("train", "val", "test", "trainval")}
    train, val, test = (set(splits[s].class_names) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (4, 2, 3) and not (train & val or train & test or val & test)
    trainval = splits["trainval"]
    assert trainval.class_names == sorted(train | val) and trainval.num_classes == 6
    for name in val:
        a, b = trainval.class_names.index(name), splits["val"].class_names.index(name)
        assert torch.equal(trainval.images[a * PER_CLASS:(a + 1) * PER_CLASS],
                           splits["val"].images[b * PER_CLASS:(b + 1) * PER_CLASS])
    assert trainval.categories[trainval.class_names.index("n05000001")] == "plant"


def test_learn2learn_folder_and_torchmeta_hdf5_read_as_the_pickles_do(tmp_path, pickle_root, data, cache_dir):
    l2l = write_pickles(tmp_path / "l2l" / "tiered-imagenet", data, splits=("test",)).parent
    hdf5 = write_hdf5(tmp_path / "tm" / "tieredimagenet", data, splits=("test",)).parent
    reference = TieredImageNet(pickle_root, "test", cache_dir=cache_dir)
    for root, layout in ((l2l, "pickle"), (hdf5, "hdf5")):
        ds = TieredImageNet(root, "test", cache_dir=cache_dir)
        assert ds.format == layout and ds.class_names == reference.class_names
        assert torch.equal(ds.images, reference.images) and ds.categories == reference.categories
    assert TieredImageNet(hdf5, "test", cache_dir=cache_dir).split_files == [hdf5 / "tieredimagenet" / "test_labels.json"]


def test_decoded_splits_are_cached_and_resized_on_request(pickle_root, cache_dir, monkeypatch):
    first = TieredImageNet(pickle_root, "val", cache_dir=cache_dir, mean=[0.5] * 3, std=[0.2] * 3)
    assert [p.parent.name for p in first.cache_paths] == ["tieredimagenet"] and first.cache_paths[0].is_file()
    monkeypatch.setattr(tiered_imagenet, "decode_all", lambda *a: pytest.fail("decoded again"))
    assert torch.equal(TieredImageNet(pickle_root, "val", cache_dir=cache_dir).images, first.images)
    monkeypatch.undo()
    small = TieredImageNet(pickle_root, "val", cache_dir=cache_dir, image_size=42)
    assert small.image_shape == (3, 42, 42) and small.cache_paths != first.cache_paths


def _with(tmp_path, data, images=None, labels=None):
    root = write_pickles(tmp_path / "bad", data, splits=("val",))
    if images is not None:
        (root / "val_images_png.pkl").write_bytes(images)
    if labels is not None:
        (root / "val_labels.pkl").write_bytes(labels)
    return root


def test_a_corrupt_png_is_one_line_naming_the_image_and_file(tmp_path, data, cache_dir):
    ids, pixels = data["val"]
    from tiered_fixtures import png

    encoded = [np.frombuffer(png(p), dtype=np.uint8).reshape(-1, 1) for p in pixels]
    encoded[3] = encoded[3][:40].copy()  # truncated mid-header
    root = _with(tmp_path, data, images=py2_dumps(encoded))
    with pytest.raises(ValueError, match=r"cannot decode image 3 of .*val_images_png.pkl") as err:
        TieredImageNet(root, "val", cache_dir=cache_dir)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("images, labels, message", [
    (py2_dumps({b"not": b"a list"}), None, "holds a dict, expected a list of PNG-encoded images"),
    (py2_dumps([3.5] * 10), None, r"item \d+ is a float, expected PNG bytes"),
    (None, py2_dumps([1, 2]), "val_labels.pkl holds a list, expected a dict"),
    (None, py2_dumps({b"label_specific": np.zeros(10, np.int64)}), "lacks 'label_specific_str'"),
    (None, py2_dumps({b"label_specific": np.zeros(3, np.int64), b"label_specific_str": [b"a"]}),
     r"label_specific must hold one integer per image of val_images_png.pkl \(10\).*do not belong together"),
    (None, py2_dumps({b"label_specific": np.full(10, 7), b"label_specific_str": [b"a", b"b"]}),
     r"has ids outside 0..1"),
    (None, py2_dumps({b"label_specific": np.zeros(10, np.int64), b"label_specific_str": [b"a", b"b"]}),
     "names the class 'b' but no image has it"),
    (b"\x80\x02garbage", None, "cannot unpickle .*val_images_png.pkl"),
])
def test_damaged_pickles_are_one_line_errors_naming_the_file(tmp_path, data, cache_dir, images, labels, message):
    root = _with(tmp_path, data, images=images, labels=labels)
    with pytest.raises(ValueError, match=message) as err:
        TieredImageNet(root, "val", cache_dir=cache_dir)
    assert "\n" not in str(err.value)


def test_bytes_items_and_python3_string_keys_are_read_too(tmp_path, data, cache_dir):
    ids, pixels = data["val"]
    from tiered_fixtures import png

    labels = {k.decode(): v for k, v in labels_dict("val", ids).items()}
    root = _with(tmp_path, data, images=pickle.dumps([png(p) for p in pixels]), labels=pickle.dumps(labels))
    names, images = expected("val", data)
    ds = TieredImageNet(root, "val", cache_dir=cache_dir)
    assert ds.class_names == names and np.array_equal(ds.images.numpy(), images)


def test_a_pickle_that_would_run_code_is_refused(tmp_path, data, cache_dir):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    root = _with(tmp_path, data, labels=pickle.dumps({"label_specific": Exploit()}))
    with pytest.raises(UnsafePickleError, match=r"references the global (posix|os|nt)\.system"):
        TieredImageNet(root, "val", cache_dir=cache_dir)


def test_missing_files_say_where_to_get_them(tmp_path, cache_dir):
    with pytest.raises(FileNotFoundError, match=r"no train_images_png.pkl with train_labels.pkl .* \(the folder does "
                                                r"not exist\); tieredImageNet cannot be downloaded automatically"):
        TieredImageNet(tmp_path / "nowhere", "train", cache_dir=cache_dir)


def test_hdf5_errors_name_the_file(tmp_path, data, cache_dir, monkeypatch):
    import h5py

    root = write_hdf5(tmp_path / "tm", data, splits=("test",))
    (root / "test_labels.json").write_text(json.dumps(["n07000001", "n99999999"]))
    with pytest.raises(ValueError, match="test_data.hdf5 has no dataset for the class 'n99999999'"):
        TieredImageNet(root, "test", cache_dir=cache_dir)
    (root / "test_labels.json").write_text("{not json")
    with pytest.raises(ValueError, match="test_labels.json is not a JSON list of class names"):
        TieredImageNet(root, "test", cache_dir=cache_dir)
    (root / "test_labels.json").write_text(json.dumps(["n07000001", "n07000001"]))
    with pytest.raises(ValueError, match="names the class 'n07000001' twice"):
        TieredImageNet(root, "test", cache_dir=cache_dir)
    (root / "test_labels.json").write_text(json.dumps(["n07000001"]))
    (root / "test_data.hdf5").write_bytes(b"not hdf5 at all")
    with pytest.raises(ValueError, match="test_data.hdf5 is not a readable HDF5 file"):
        TieredImageNet(root, "test", cache_dir=cache_dir)
    with h5py.File(root / "test_data.hdf5", "w") as f:
        f.create_group("other")
    with pytest.raises(ValueError, match="has no group 'datasets'"):
        TieredImageNet(root, "test", cache_dir=cache_dir)
    with h5py.File(root / "test_data.hdf5", "w") as f:
        f.create_group("datasets").create_dataset("n07000001", data=np.zeros((2, 84, 84, 3), np.uint8))
    with pytest.raises(ValueError, match="holds pixel arrays, not PNG bytes.*MiniImageNetHDF5"):
        TieredImageNet(root, "test", cache_dir=cache_dir)
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r"needs h5py; install it with pip install 'fewshot-metaopt\[hdf5\]'"):
        TieredImageNet(root, "test", cache_dir=tmp_path / "other-cache")


def test_a_class_in_both_train_and_val_is_refused_for_trainval(tmp_path, data, cache_dir):
    root = write_pickles(tmp_path / "mixed", data, splits=("train", "val"))
    for name in ("images_png", "labels"):
        (root / f"val_{name}.pkl").write_bytes((root / f"train_{name}.pkl").read_bytes())
    with pytest.raises(ValueError, match="the class 'n01000001' is in both the train and val files"):
        TieredImageNet(root, "trainval", cache_dir=cache_dir)


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "validation"}, "unknown split 'validation'"),
    ({"image_size": 8.5}, "image_size must be a positive integer"),
    ({"std": [0.0, 1.0, 1.0]}, "std must be non-zero"),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        TieredImageNet(tmp_path, **kwargs)


def test_python2_strings_and_object_arrays_of_pngs_are_read(tmp_path, data, cache_dir):
    from tiered_fixtures import png

    ids, pixels = data["val"]
    names, images = expected("val", data)
    for payload in (py2_dumps([png(p) for p in pixels]), pickle.dumps(np.array([png(p) for p in pixels], dtype=object))):
        root = _with(tmp_path, data, images=payload)
        ds = TieredImageNet(root, "val", cache_dir=cache_dir)
        assert ds.class_names == names and np.array_equal(ds.images.numpy(), images)


def test_a_persistent_id_pickle_is_refused(tmp_path, data, cache_dir):
    root = _with(tmp_path, data, labels=b"\x80\x02P1\n.")
    with pytest.raises(UnsafePickleError, match="uses persistent ids"):
        TieredImageNet(root, "val", cache_dir=cache_dir)


@pytest.mark.parametrize("tamper, why", [
    (lambda a: {**a, "images": a["images"][:, :, :8, :8].copy()}, "images are uint8"),
    (lambda a: {**a, "group_sizes": a["group_sizes"] + 1}, "class names and group sizes do not match"),
])
def test_a_cache_entry_that_does_not_fit_is_rebuilt(pickle_root, cache_dir, tamper, why):
    from fewshot_metaopt.datasets.cache import load_npz, write_entry

    first = TieredImageNet(pickle_root, "val", cache_dir=cache_dir)
    arrays = load_npz(first.cache_paths[0])
    arrays.pop("sha256")
    write_entry(first.cache_paths[0], tamper(arrays), "test")
    with pytest.warns(UserWarning, match=why):
        again = TieredImageNet(pickle_root, "val", cache_dir=cache_dir)
    assert torch.equal(again.images, first.images)
