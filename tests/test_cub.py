"""CUB-200-2011: Chen et al.'s 100/50/50 split over the image folder or the official archive."""

from __future__ import annotations

import pytest
import torch

from fewshot_metaopt.datasets import CUB, cub
from cub_fixtures import CLASSES, make_images, write_archive, write_folder


@pytest.fixture(scope="module")
def files():
    return make_images()


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory, files):
    return write_folder(tmp_path_factory.mktemp("cub"), files)


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


def test_the_split_is_chen_et_al_100_50_50_by_class_number(folder_root, cache_dir):
    splits = {s: CUB(folder_root, s, cache_dir=cache_dir, image_size=16) for s in ("train", "val", "test", "trainval")}
    assert [splits[s].num_classes for s in ("train", "val", "test", "trainval")] == [100, 50, 50, 150]
    expected = {"train": [c for i, c in enumerate(CLASSES) if i % 2 == 0],
                "val": [c for i, c in enumerate(CLASSES) if i % 4 == 1],
                "test": [c for i, c in enumerate(CLASSES) if i % 4 == 3]}
    for split, names in expected.items():
        assert splits[split].class_names == names
    assert splits["trainval"].class_names == sorted(expected["train"] + expected["val"])
    assert splits["test"].class_names[0] == "004.Groove_billed_Ani"
    assert splits["val"].split_files[0].name == "val.txt" and splits["val"].split_files[0].parent.name == "cub"


def test_images_are_rgb_uint8_resized_and_classes_keep_all_their_images(folder_root, cache_dir):
    ds = CUB(folder_root, "val", cache_dir=cache_dir, image_size=16)
    assert ds.images.dtype == torch.uint8 and ds.image_shape == (3, 16, 16)
    assert ds.source == folder_root / "CUB_200_2011" / "images"
    # classes hold 2 or 3 images here (41 to 60 in the real set): the fewest bounds shots + queries
    assert ds.samples_per_class == 2 and ds.images.shape[0] == sum(2 + (CLASSES.index(c) % 3 == 0) for c in ds.class_names)
    grey = ds.images[1]  # each class's second image is grayscale: its three channels are equal
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    episode = ds.sample_episode(5, 1, 1, torch.Generator().manual_seed(0))
    assert episode.support_x.shape == (5, 3, 16, 16)
    with pytest.raises(ValueError, match="shots \\+ queries = 3 exceeds the 2 samples per class"):
        ds.validate(5, 2, 1)


def test_the_archive_reads_as_its_extracted_folder_and_both_are_cached(tmp_path, files, folder_root, cache_dir,
                                                                       monkeypatch):
    root = write_archive(tmp_path / "archive", files)
    from_archive = CUB(root, "test", cache_dir=cache_dir, image_size=16)
    from_folder = CUB(folder_root, "test", cache_dir=cache_dir, image_size=16)
    assert from_archive.source == root / "CUB_200_2011.tgz"
    assert from_archive.class_names == from_folder.class_names and torch.equal(from_archive.images, from_folder.images)
    assert from_archive.cache_path != from_folder.cache_path and from_archive.cache_path.is_file()
    monkeypatch.setattr(cub, "decode_all", lambda *a, **k: pytest.fail("decoded again"))
    assert torch.equal(CUB(root, "test", cache_dir=cache_dir, image_size=16).images, from_archive.images)
    # root may be the CUB_200_2011 folder itself
    inner = CUB(folder_root / "CUB_200_2011", "test", cache_dir=cache_dir, image_size=16)
    assert inner.cache_path == from_folder.cache_path


def test_missing_and_damaged_data_are_one_line_errors(tmp_path, files, cache_dir):
    with pytest.raises(FileNotFoundError, match="neither .*CUB_200_2011.tgz nor .* exists \\(the folder does not "
                                                "exist\\); CUB is not downloaded automatically"):
        CUB(tmp_path / "nowhere", cache_dir=cache_dir)
    partial = write_folder(tmp_path / "partial", {k: v for k, v in files.items() if not k.startswith("001.")})
    with pytest.raises(FileNotFoundError, match="has no folder '001.Black_footed_Albatross'; extract the whole"):
        CUB(partial, "train", cache_dir=cache_dir, image_size=16)
    (partial / "CUB_200_2011" / "images" / "001.Black_footed_Albatross").mkdir()
    with pytest.raises(ValueError, match="001.Black_footed_Albatross holds no image"):
        CUB(partial, "train", cache_dir=cache_dir, image_size=16)
    broken = dict(files)
    first_test = next(k for k in files if k.startswith("004."))
    broken[first_test] = b"\xff\xd8 not a jpeg"
    damaged = write_folder(tmp_path / "damaged", broken)
    with pytest.raises(ValueError, match=f"cannot decode image .*{first_test.split('/')[1]}") as err:
        CUB(damaged, "test", cache_dir=cache_dir, image_size=16)
    assert "\n" not in str(err.value)
    archive = write_archive(tmp_path / "damaged-archive", broken)
    with pytest.raises(ValueError, match=f"cannot decode member 'CUB_200_2011/images/{first_test}'"):
        CUB(archive, "test", cache_dir=cache_dir, image_size=16)


def test_archives_that_are_not_cub_are_refused(tmp_path, files, cache_dir):
    evil = write_archive(tmp_path / "evil", files, extra={"../escape.jpg": b"x"})
    with pytest.raises(ValueError, match="member '../escape.jpg' is an absolute path or contains '..'"):
        CUB(evil, "test", cache_dir=cache_dir, image_size=16)
    lacking = write_archive(tmp_path / "lacking", {k: v for k, v in files.items() if not k.startswith("004.")})
    with pytest.raises(ValueError, match="has no image of the class '004.Groove_billed_Ani'"):
        CUB(lacking, "test", cache_dir=cache_dir, image_size=16)
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "CUB_200_2011.tgz").write_bytes(b"\x1f\x8b\x08 truncated")
    with pytest.raises(ValueError, match="is not a readable tar.gz archive"):
        CUB(garbage, "test", cache_dir=cache_dir, image_size=16)


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "novel"}, "unknown split 'novel'"),
    ({"image_size": -1}, "image_size must be a positive integer"),
    ({"mean": [0.1]}, "mean needs one finite number per channel"),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        CUB(tmp_path, **kwargs)


@pytest.mark.parametrize("tamper, why", [
    (lambda a: {**a, "images": a["images"][:, :, :8, :8].copy()}, "images are uint8"),
    (lambda a: {**a, "class_names": a["class_names"][::-1].copy()}, "its classes are not those of the val split"),
])
def test_a_cache_entry_that_does_not_fit_is_rebuilt(folder_root, cache_dir, tamper, why):
    from fewshot_metaopt.datasets.cache import load_npz, write_entry

    first = CUB(folder_root, "val", cache_dir=cache_dir, image_size=16)
    arrays = load_npz(first.cache_path)
    arrays.pop("sha256")
    write_entry(first.cache_path, tamper(arrays), "test")
    with pytest.warns(UserWarning, match=why):
        again = CUB(folder_root, "val", cache_dir=cache_dir, image_size=16)
    assert torch.equal(again.images, first.images)
