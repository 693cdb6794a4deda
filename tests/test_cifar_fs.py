"""CIFAR-FS over the CIFAR-100 python archive: splits, layouts, cache, download and every input error."""

from __future__ import annotations

import hashlib
import pickle
import shutil
import warnings

import numpy as np
import pytest
import torch

from fewshot_metaopt.datasets import CIFARFS, cifar100
from fewshot_metaopt.datasets.download import ChecksumError
from fewshot_metaopt.datasets.safe_pickle import UnsafePickleError
from cifar100_fixtures import (
    PER_CLASS,
    expected_class,
    make_batches,
    member_bytes,
    write_archive,
    write_folder,
)
from py2_pickles import py2_dumps

PER = sum(PER_CLASS.values())


@pytest.fixture(scope="module")
def batches():
    return make_batches()


@pytest.fixture(scope="module")
def archive_root(tmp_path_factory, batches):
    root = tmp_path_factory.mktemp("cifar")
    write_archive(root, batches)
    return root


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


def test_splits_hold_64_16_20_disjoint_classes_of_600_images_in_the_real_layout(archive_root, batches, cache_dir):
    splits = {s: CIFARFS(archive_root, s, cache_dir=cache_dir) for s in ("train", "val", "test", "trainval")}
    assert [splits[s].num_classes for s in ("train", "val", "test", "trainval")] == [64, 16, 20, 80]
    train, val, test = (set(splits[s].class_names) for s in ("train", "val", "test"))
    assert not (train & val or train & test or val & test) and len(train | val | test) == 100
    assert set(splits["trainval"].class_names) == train | val
    ds = splits["test"]
    assert ds.images.dtype == torch.uint8 and ds.image_shape == (3, 32, 32) and ds.samples_per_class == PER
    assert ds.class_names == sorted(ds.class_names) and "whale" in ds.class_names
    assert ds.name == "CIFAR-FS" and ds.split == "test" and ds.source == archive_root / "cifar-100-python.tar.gz"
    # each class: its training images, then its test images, as the archive stores their pixels
    for i, name in enumerate(ds.class_names):
        np.testing.assert_array_equal(ds.images[i * PER:(i + 1) * PER].numpy(), expected_class(batches, name))
    assert ds.superclasses[ds.class_names.index("whale")] == "aquatic_mammals"
    assert [p.name for p in ds.split_files] == ["test.txt"] and ds.split_files[0].parent.name == "cifar_fs"
    episode = ds.sample_episode(5, 2, 3, torch.Generator().manual_seed(0))
    assert episode.support_x.shape == (10, 3, 32, 32) and episode.query_x.dtype == torch.float32
    assert float(episode.support_x.max()) <= 1.0


def test_the_extracted_folder_reads_as_the_archive_does(tmp_path, archive_root, batches, cache_dir):
    folder = CIFARFS(write_folder(tmp_path / "extracted", batches), "val", cache_dir=cache_dir)
    archive = CIFARFS(archive_root, "val", cache_dir=cache_dir)
    assert folder.class_names == archive.class_names and torch.equal(folder.images, archive.images)
    assert folder.source == tmp_path / "extracted" / "cifar-100-python"


def test_the_images_are_cached_once_and_resized_on_request(archive_root, cache_dir, monkeypatch):
    first = CIFARFS(archive_root, "train", cache_dir=cache_dir, mean=[0.5] * 3, std=[0.25] * 3)
    assert first.cache_path.is_file() and first.cache_path.parent == cache_dir
    monkeypatch.setattr(cifar100, "_build", lambda *a: pytest.fail("the cache was not used"))
    again = CIFARFS(archive_root, "train", cache_dir=cache_dir)
    assert torch.equal(first.images, again.images)
    monkeypatch.undo()
    small = CIFARFS(archive_root, "train", cache_dir=cache_dir, image_size=16)
    assert small.image_shape == (3, 16, 16) and small.cache_path != first.cache_path
    episode = first.sample_episode(2, 1, 1, torch.Generator().manual_seed(1))
    assert float(episode.support_x.min()) < 0  # normalised: (x - 0.5) / 0.25


def test_download_fetches_the_archive_md5_checked_and_refuses_a_wrong_file(tmp_path, archive_root, cache_dir,
                                                                            monkeypatch):
    mirror = f"file://{archive_root}/"
    with pytest.raises(ChecksumError, match="expected md5 eb9058c3a382ffc7106e4002c42a8d85"):
        CIFARFS(tmp_path / "fresh", "test", download=True, base_url=mirror, cache_dir=cache_dir)
    assert not (tmp_path / "fresh" / "cifar-100-python.tar.gz").exists()
    md5 = hashlib.md5((archive_root / "cifar-100-python.tar.gz").read_bytes()).hexdigest()
    monkeypatch.setattr(cifar100, "ARCHIVE_MD5", md5)
    ds = CIFARFS(tmp_path / "fresh", "test", download=True, base_url=mirror, cache_dir=cache_dir)
    assert ds.num_classes == 20 and (tmp_path / "fresh" / "cifar-100-python.tar.gz").is_file()
    assert cifar100.download_archive(tmp_path / "fresh") is None  # present: nothing fetched
    html = tmp_path / "html"
    html.mkdir()
    (html / "cifar-100-python.tar.gz").write_text("<!DOCTYPE html><html>sign in</html>")
    with pytest.raises(ValueError, match="returned an HTML page"):
        cifar100.download_archive(tmp_path / "fresh2", base_url=f"file://{html}")


def _corrupt(tmp_path, **members):
    pieces = member_bytes(make_batches())
    pieces.update(members)
    return write_archive(tmp_path / "bad", members=pieces).parent


@pytest.mark.parametrize("member, payload, message", [
    ("train", b"not a pickle at all", "cannot unpickle member 'cifar-100-python/train'"),
    ("test", pickle.dumps([1, 2]), "holds a list, expected a dict"),
    ("train", py2_dumps({b"data": np.zeros((2, 3072), np.uint8)}), "lacks 'fine_labels', 'coarse_labels'"),
    ("train", py2_dumps({b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1], b"coarse_labels": [0, 0]}),
     r"data is uint8 \(2, 100\), expected uint8 \(N, 3072\)"),
    ("train", py2_dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0], b"coarse_labels": [0, 0]}),
     "fine_labels must be 2 integers"),
    ("train", py2_dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100], b"coarse_labels": [0, 0]}),
     r"fine_labels must lie in 0..99"),
    ("train", py2_dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 0], b"coarse_labels": [0, 1]}),
     r"'apple' of .* has images in \d superclasses"),
    ("meta", py2_dumps({b"fine_label_names": [b"apple"]}), "needs fine_label_names with 100 names"),
])
def test_a_damaged_member_is_one_line_naming_the_archive(tmp_path, cache_dir, member, payload, message):
    root = _corrupt(tmp_path, **{member: payload})
    with pytest.raises(ValueError, match=message) as err:
        CIFARFS(root, "train", cache_dir=cache_dir)
    assert "\n" not in str(err.value) and "cifar-100-python.tar.gz" in str(err.value)


def test_a_pickle_that_would_run_code_is_refused_before_it_runs(tmp_path, cache_dir):
    class Exploit:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    root = _corrupt(tmp_path, train=pickle.dumps({"data": Exploit()}))
    with pytest.raises(UnsafePickleError, match="references the global shutil.rmtree"):
        CIFARFS(root, "train", cache_dir=cache_dir)
    assert (tmp_path / "victim").is_dir()


def test_archives_that_are_not_cifar_are_one_line_errors(tmp_path, cache_dir):
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "cifar-100-python.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ValueError, match="is not a readable tar.gz archive .* pass download=True"):
        CIFARFS(garbage, "train", cache_dir=cache_dir)
    lacking = write_archive(tmp_path / "lacking", members={"train": b"", "test": b""}).parent
    with pytest.raises(ValueError, match="has no member 'cifar-100-python/meta'"):
        CIFARFS(lacking, "train", cache_dir=cache_dir)
    escaping = write_archive(tmp_path / "escaping", extra={"../evil": b"x"}).parent
    with pytest.raises(ValueError, match="member '../evil' is an absolute path or contains '..'"):
        CIFARFS(escaping, "train", cache_dir=cache_dir)
    with pytest.raises(FileNotFoundError, match="neither .*cifar-100-python.tar.gz nor the folder .* download=True"):
        CIFARFS(tmp_path / "nowhere", "train", cache_dir=cache_dir)
    half = tmp_path / "half" / "cifar-100-python"
    half.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="train does not exist"):
        CIFARFS(tmp_path / "half", "train", cache_dir=cache_dir)


def test_an_archive_with_other_class_names_is_not_taken_for_cifar(tmp_path, cache_dir):
    renamed = member_bytes(make_batches())
    renamed["meta"] = py2_dumps({b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                                 b"coarse_label_names": [f"s{i}".encode() for i in range(20)]})
    root = write_archive(tmp_path / "renamed", members=renamed).parent
    with pytest.raises(ValueError, match="names 'baby', which is not a CIFAR-100 class"):
        CIFARFS(root, "test", cache_dir=cache_dir)


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "validation"}, "unknown split 'validation'; use one of 'train', 'val', 'test', 'trainval'"),
    ({"image_size": 0}, "image_size must be a positive integer, got 0"),
    ({"mean": [0.5, 0.5]}, r"mean needs one finite number per channel \(3\)"),
    ({"std": [1.0, 0.0, 1.0]}, "std must be non-zero in every channel"),
])
def test_bad_arguments_are_refused_before_reading(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        CIFARFS(tmp_path / "nowhere", **kwargs)


def test_the_cache_entry_of_another_size_is_rebuilt(archive_root, cache_dir):
    ds = CIFARFS(archive_root, "val", cache_dir=cache_dir)
    arrays = dict(np.load(ds.cache_path))
    arrays.pop("sha256")
    arrays["images"] = arrays["images"][:, :, :8, :8].copy()
    from fewshot_metaopt.datasets.cache import write_entry

    write_entry(ds.cache_path, arrays, "test")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = CIFARFS(archive_root, "val", cache_dir=cache_dir)
    assert torch.equal(again.images, ds.images)
    assert any("does not match what it should hold" in str(w.message) for w in caught)
