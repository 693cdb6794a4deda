"""FC100: CIFAR-100 split by superclass (12/4/4 superclasses, 60/20/20 classes), read from the python archive."""

from __future__ import annotations

import pytest
import torch

from fewshot_metaopt.datasets import CIFARFS, FC100
from cifar100_fixtures import FINE_NAMES, SUPERCLASSES, make_batches, member_bytes, write_archive
from py2_pickles import py2_dumps


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_archive(tmp_path_factory.mktemp("cifar"), make_batches()).parent


def test_splits_are_superclass_disjoint_with_60_20_20_classes(root, tmp_path):
    splits = {s: FC100(root, s, cache_dir=tmp_path) for s in ("train", "val", "test", "trainval")}
    assert [splits[s].num_classes for s in ("train", "val", "test", "trainval")] == [60, 20, 20, 80]
    supers = {s: set(splits[s].superclasses) for s in ("train", "val", "test")}
    assert [len(supers[s]) for s in ("train", "val", "test")] == [12, 4, 4]
    assert not (supers["train"] & supers["val"] or supers["train"] & supers["test"] or supers["val"] & supers["test"])
    assert supers["test"] == {"aquatic_mammals", "insects", "medium_mammals", "people"}
    assert supers["val"] == {"large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates",
                             "small_mammals"}
    for split, ds in splits.items():
        # a superclass brings all five of its classes, each with its superclass recorded
        for name, superclass in zip(ds.class_names, ds.superclasses):
            assert name in SUPERCLASSES[superclass].split()
        assert ds.name == "FC100" and ds.class_names == sorted(ds.class_names)
    assert splits["test"].split_files[0].parent.name == "fc100"
    assert set(splits["trainval"].class_names) == set(splits["train"].class_names) | set(splits["val"].class_names)


def test_fc100_and_cifar_fs_share_one_cache_entry_and_pixels(root, tmp_path):
    fc = FC100(root, "test", cache_dir=tmp_path)
    fs = CIFARFS(root, "test", cache_dir=tmp_path)
    assert fc.cache_path == fs.cache_path and list(tmp_path.glob("*.npz")) == [fc.cache_path]
    shared = sorted(set(fc.class_names) & set(fs.class_names))  # e.g. whale, baby, man, woman
    assert shared
    per = fc.samples_per_class
    for name in shared:
        a, b = fc.class_names.index(name), fs.class_names.index(name)
        assert torch.equal(fc.images[a * per:(a + 1) * per], fs.images[b * per:(b + 1) * per])


def test_an_archive_without_the_superclass_names_is_refused(tmp_path):
    members = member_bytes(make_batches())
    members["meta"] = py2_dumps({b"fine_label_names": [n.encode() for n in FINE_NAMES],
                                 b"coarse_label_names": [f"s{i}".encode() for i in range(20)]})
    bad = write_archive(tmp_path / "bad", members=members).parent
    with pytest.raises(ValueError, match="names 'aquatic_mammals', which is not a CIFAR-100 superclass"):
        FC100(bad, "test", cache_dir=tmp_path)
