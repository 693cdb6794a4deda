"""ImageFolder (root/<class>/<image>) and from_labelled_dataset: users' own data as few-shot data sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

from fewshot_metaopt.datasets import ImageFolder, from_labelled_dataset, image_folder
from fewshot_metaopt.datasets.class_splits import seeded_split

SIDE = 20
CLASSES = [f"class_{c:02d}" for c in range(10)]


def make_images(seed: int = 0) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {c: [rng.integers(0, 256, size=(SIDE, SIDE, 3), dtype=np.uint8) for _ in range(3 + i % 2)]
            for i, c in enumerate(CLASSES)}


def write_folder(root, images) -> None:
    for name, pictures in images.items():
        for j, pixels in enumerate(pictures):
            # one image per class sits in a subfolder: everything below a class folder counts
            folder = root / name / ("nested" if j == len(pictures) - 1 else "")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{j}.png")
        (root / name / "notes.txt").write_text("not an image")
        (root / name / ".hidden.png").write_bytes(b"not even a png")


@pytest.fixture(scope="module")
def images():
    return make_images()


@pytest.fixture(scope="module")
def root(tmp_path_factory, images):
    folder = tmp_path_factory.mktemp("mine") / "birds"
    write_folder(folder, images)
    return folder


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


def expected(images, classes):
    # the nested (last) image sorts after the top-level ones by path: nested/3.png > 2.png
    return np.stack([p.transpose(2, 0, 1) for c in classes for p in images[c]])


def test_every_class_folder_is_a_class_with_its_images_in_path_order(root, images, cache_dir):
    ds = ImageFolder(root, cache_dir=cache_dir, image_size=SIDE)
    assert ds.class_names == CLASSES and ds.split == "all" and ds.name == "ImageFolder"
    assert ds.images.dtype == torch.uint8 and ds.image_shape == (3, SIDE, SIDE) and ds.samples_per_class == 3
    np.testing.assert_array_equal(ds.images.numpy(), expected(images, CLASSES))
    assert ds.cache_path.parent.name == "image_folder" and ds.cache_path.name.startswith("birds-all-20px-RGB-")
    episode = ds.sample_episode(4, 1, 2, torch.Generator().manual_seed(0))
    assert episode.support_x.shape == (4, 3, SIDE, SIDE) and episode.query_x.shape == (8, 3, SIDE, SIDE)


def test_grayscale_and_other_sizes(root, cache_dir):
    grey = ImageFolder(root, cache_dir=cache_dir, image_size=8, channels=1, mean=[0.5], std=[0.5])
    assert grey.image_shape == (1, 8, 8)
    assert float(grey.sample_episode(2, 1, 1, torch.Generator().manual_seed(0)).support_x.min()) < 0


def test_the_seeded_split_is_disjoint_complete_and_a_function_of_the_seed(root, cache_dir):
    splits = {s: ImageFolder(root, s, seed=3, cache_dir=cache_dir, image_size=SIDE) for s in
              ("train", "val", "test", "trainval")}
    train, val, test = (set(splits[s].class_names) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (6, 2, 2)
    assert not (train & val or train & test or val & test) and train | val | test == set(CLASSES)
    assert set(splits["trainval"].class_names) == train | val
    assert splits["test"].class_names == seeded_split(CLASSES, "test", (0.6, 0.2, 0.2), 3, "x")
    # pinned: the same names and seed give the same split on every machine (NumPy's PCG64)
    assert seeded_split(CLASSES, "test", (0.6, 0.2, 0.2), 3, "x") == ["class_03", "class_08"]
    other = ImageFolder(root, "test", seed=4, cache_dir=cache_dir, image_size=SIDE)
    assert other.class_names != splits["test"].class_names
    halves = ImageFolder(root, "val", split_fractions=[1, 1, 0], cache_dir=cache_dir, image_size=SIDE)
    assert halves.num_classes == 5
    with pytest.raises(ValueError, match=r"split 'test' gets none of the 10 classes with split_fractions \[1, 1, 0\]"):
        ImageFolder(root, "test", split_fractions=[1, 1, 0], cache_dir=cache_dir, image_size=SIDE)


def test_class_list_files_choose_the_split_and_must_agree(tmp_path, images, cache_dir):
    root = tmp_path / "data"
    write_folder(root, images)
    splits = root / "splits"  # inside root: not taken for a class
    splits.mkdir()
    (splits / "train.txt").write_text("# my split\nclass_03\nclass_01\n\nclass_02\n")
    (splits / "val.txt").write_text("class_04\n")
    (splits / "test.txt").write_text("class_09\nclass_08\n")
    ds = ImageFolder(root, "train", splits_dir=splits, cache_dir=cache_dir, image_size=SIDE)
    assert ds.class_names == ["class_01", "class_02", "class_03"] and ds.split_files == [splits / "train.txt"]
    trainval = ImageFolder(root, "trainval", splits_dir=splits, cache_dir=cache_dir, image_size=SIDE)
    assert trainval.num_classes == 4 and trainval.split_files == [splits / "train.txt", splits / "val.txt"]
    assert ImageFolder(root, splits_dir=splits, cache_dir=cache_dir, image_size=SIDE).num_classes == 10
    (splits / "val.txt").write_text("class_04\nclass_09\n")
    with pytest.raises(ValueError, match="'class_09' is listed in both .*val.txt and .*test.txt; a class belongs to one"):
        ImageFolder(root, "train", splits_dir=splits, cache_dir=cache_dir, image_size=SIDE)
    (splits / "val.txt").write_text("class_04\nowl\n")
    with pytest.raises(ValueError, match="val.txt lists the class 'owl', which has no folder in"):
        ImageFolder(root, "val", splits_dir=splits, cache_dir=cache_dir, image_size=SIDE)
    (splits / "val.txt").write_text("class_04\nclass_04\n")
    with pytest.raises(ValueError, match="val.txt line 2 repeats the class 'class_04'"):
        ImageFolder(root, "val", splits_dir=splits, cache_dir=cache_dir, image_size=SIDE)
    (splits / "val.txt").unlink()
    assert ImageFolder(root, "test", splits_dir=splits, cache_dir=cache_dir, image_size=SIDE).num_classes == 2
    with pytest.raises(FileNotFoundError, match="class-list file .*val.txt does not exist"):
        ImageFolder(root, "val", splits_dir=splits, cache_dir=cache_dir, image_size=SIDE)


def test_the_cache_is_used_and_a_changed_image_builds_a_new_entry(tmp_path, images, cache_dir, monkeypatch):
    root = tmp_path / "data"
    write_folder(root, images)
    first = ImageFolder(root, cache_dir=cache_dir, image_size=SIDE)
    monkeypatch.setattr(image_folder, "decode_files", lambda *a: pytest.fail("decoded again"))
    assert ImageFolder(root, cache_dir=cache_dir, image_size=SIDE).cache_path == first.cache_path
    monkeypatch.undo()
    Image.fromarray(np.zeros((SIDE, SIDE, 3), np.uint8)).save(root / "class_00" / "0.png")
    changed = ImageFolder(root, cache_dir=cache_dir, image_size=SIDE)
    assert changed.cache_path != first.cache_path and int(changed.images[0].sum()) == 0


def test_bad_folders_and_arguments_are_one_line_errors(tmp_path, images, cache_dir):
    with pytest.raises(FileNotFoundError, match="is not a folder; point root at the folder holding one subfolder"):
        ImageFolder(tmp_path / "nowhere", cache_dir=cache_dir)
    (tmp_path / "flat").mkdir()
    Image.fromarray(images["class_00"][0]).save(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match="has no class folders; expected root/<class>/<image>"):
        ImageFolder(tmp_path / "flat", cache_dir=cache_dir)
    (tmp_path / "flat" / "empty").mkdir()
    with pytest.raises(ValueError, match="the class folder .*empty holds no image"):
        ImageFolder(tmp_path / "flat", cache_dir=cache_dir)
    (tmp_path / "flat" / "empty" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ValueError, match=r"cannot decode image .*broken.jpg .*replace or remove that file") as err:
        ImageFolder(tmp_path / "flat", cache_dir=cache_dir)
    assert "\n" not in str(err.value)
    for kwargs, message in [
        ({"channels": 2}, "channels must be 1 \\(grayscale\\) or 3 \\(RGB\\), got 2"),
        ({"split": "novel"}, "unknown split 'novel'; use one of 'train', 'val', 'test', 'trainval', 'all'"),
        ({"split_fractions": [0.5, -0.1, 0.6]}, "split_fractions must be three non-negative numbers"),
        ({"split_fractions": [0, 0, 0]}, "with a positive sum"),
        ({"split": "train", "seed": 1.5}, "the class-split seed must be an integer"),
        ({"channels": 1, "mean": [0.5, 0.5, 0.5]}, "mean needs one finite number per channel \\(1\\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            ImageFolder(tmp_path / "flat" if "seed" in kwargs else tmp_path, cache_dir=cache_dir, **kwargs)


# ----------------------------------------------------------------------------- any labelled dataset


class PILDataset(Dataset):
    """A torchvision-style dataset: PIL images, integer targets and a ``classes`` list."""

    def __init__(self, images):
        self.classes = list(images)
        self.items = [(Image.fromarray(p), c) for c, name in enumerate(images) for p in images[name]]
        order = np.random.default_rng(0).permutation(len(self.items))  # labels interleaved
        self.items = [self.items[i] for i in order]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def test_a_labelled_dataset_gives_the_image_folders_classes_and_pixels(root, images, cache_dir):
    from_pil = from_labelled_dataset(PILDataset(images), name="Birds")
    folder = ImageFolder(root, cache_dir=cache_dir, image_size=SIDE)
    assert from_pil.class_names == folder.class_names and from_pil.name == "Birds"
    assert sorted(map(bytes, from_pil.images.numpy())) == sorted(map(bytes, folder.images.numpy()))
    for split in ("train", "test"):
        ours = from_labelled_dataset(PILDataset(images), split=split, seed=3)
        assert ours.class_names == ImageFolder(root, split, seed=3, cache_dir=cache_dir, image_size=SIDE).class_names


def test_tensors_and_arrays_in_their_own_conventions(images):
    pixels = np.stack([p for c in CLASSES[:3] for p in images[c][:3]])  # (9, H, W, 3) uint8
    labels = torch.arange(3).repeat_interleave(3)
    floats = TensorDataset(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255, labels)
    ds = from_labelled_dataset(floats, class_names=["a", "b", "c"])
    assert ds.class_names == ["a", "b", "c"] and torch.equal(ds.images, torch.from_numpy(pixels).permute(0, 3, 1, 2))
    arrays = [(pixels[i], int(labels[i])) for i in range(9)]
    assert torch.equal(from_labelled_dataset(arrays).images, ds.images)
    greys = [(pixels[i, :, :, 0], np.int64(labels[i])) for i in range(9)]
    grey = from_labelled_dataset(greys, mean=[0.5], std=[0.5])
    assert grey.image_shape == (1, SIDE, SIDE) and grey.class_names == ["0", "1", "2"]
    assert grey.sample_episode(3, 2, 1, torch.Generator().manual_seed(0)).support_x.shape == (6, 1, SIDE, SIDE)


@pytest.mark.parametrize("items, message", [
    ([(torch.rand(3, 4, 4) * 2 - 1, 0)], r"values outside \[0, 1\] .*not normalised ones"),
    ([(torch.zeros(3, 4, 4, dtype=torch.uint8), 0), (torch.zeros(3, 5, 5, dtype=torch.uint8), 1)],
     r"item 1's image is \(5, 5\) with 3 channel\(s\), item 0's \(4, 4\) with 3; resize them"),
    ([(torch.zeros(3, 4, 4, dtype=torch.uint8), 0.5)], "item 0's label is 0.5; expected an integer class id"),
    ([("a picture", 0)], "item 0's image is a str; expected a PIL image"),
    ([torch.zeros(3)], "item 0 is a Tensor, expected an \\(image, label\\) pair"),
    ([(np.zeros((2, 2, 2, 2), np.uint8), 0)], r"array of shape \(2, 2, 2, 2\), expected \(H, W\[, C\]\)"),
    ([(torch.zeros(1, 2, 2, 2), 0)], r"tensor of shape \(1, 2, 2, 2\), expected \(C, H, W\)"),
    ([(np.zeros((2, 2), np.int32), 0)], "has dtype int32; expected uint8 or floats in \\[0, 1\\]"),
    ([], "the dataset is empty"),
])
def test_items_that_are_not_labelled_images_are_one_line_errors(items, message):
    with pytest.raises((TypeError, ValueError), match=message):
        from_labelled_dataset(items)


def test_bad_names_and_datasets_without_length_are_refused():
    item = (torch.zeros(1, 2, 2, dtype=torch.uint8), 3)
    with pytest.raises(ValueError, match=r"label 3 has no name in class_names \(2 names\)"):
        from_labelled_dataset([item], class_names=["a", "b"])
    with pytest.raises(ValueError, match="class_names gives two labels the same name"):
        from_labelled_dataset([item, (item[0], 0)], class_names=["x", "y", "z", "x"])
    with pytest.raises(TypeError, match="the dataset has no len\\(\\); pass a map-style dataset"):
        from_labelled_dataset(iter([item]))
    with pytest.raises(ValueError, match="unknown split 'novel'"):
        from_labelled_dataset([item], split="novel")


def test_a_cache_entry_of_another_shape_is_rebuilt_and_odd_class_lists_refused(tmp_path, root, cache_dir):
    from fewshot_metaopt.datasets.cache import load_npz, write_entry

    first = ImageFolder(root, cache_dir=cache_dir, image_size=SIDE)
    arrays = load_npz(first.cache_path)
    write_entry(first.cache_path, {"images": arrays["images"][:5].copy()}, "test")
    with pytest.warns(UserWarning, match="the split needs uint8"):
        assert torch.equal(ImageFolder(root, cache_dir=cache_dir, image_size=SIDE).images, first.images)
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train.txt").write_text("# nothing but a comment\n")
    with pytest.raises(ValueError, match="train.txt names no class; expected one class name a line"):
        ImageFolder(root, "train", splits_dir=splits, cache_dir=cache_dir)
    (splits / "train.txt").write_bytes(b"\xff\xfe\x00 not utf-8")
    with pytest.raises(ValueError, match="train.txt is not UTF-8 text"):
        ImageFolder(root, "train", splits_dir=splits, cache_dir=cache_dir)
