"""miniImageNet: both on-disk layouts, the decode cache, safe pickles and every input error."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot_metaopt.datasets import miniimagenet as mi
from fewshot_metaopt.datasets import safe_pickle
from fewshot_metaopt.datasets.miniimagenet import MiniImageNet
from fewshot_metaopt.episodes.sampler import TaskDistributionSampler
from miniimagenet_fixtures import (
    CLASSES,
    PER_CLASS,
    expected_split,
    make_data,
    pickle_dict,
    write_csv,
    write_pickles,
    write_ravi,
)

REPO = Path(__file__).resolve().parents[1]
REAL_SPLITS = REPO / ".." / "shared" / "data" / "miniimagenet" / "splits" / "ravi"
SPLIT_NAMES = ("train", "val", "test", "trainval")


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture(scope="module")
def ravi_root(tmp_path_factory, data):
    return write_ravi(tmp_path_factory.mktemp("ravi"), data)


@pytest.fixture(scope="module")
def pickle_root(tmp_path_factory, data):
    return write_pickles(tmp_path_factory.mktemp("pkl"), data)


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- loading


def test_ravi_shapes_dtypes_and_episode(ravi_root, cache_dir):
    ds = MiniImageNet(ravi_root, split="train", cache_dir=cache_dir)
    assert ds.format == "ravi" and ds.name == "MiniImageNet" and ds.split == "train"
    assert ds.images.dtype == torch.uint8
    assert tuple(ds.images.shape) == (5 * 25, 3, 84, 84)
    assert ds.image_shape == (3, 84, 84)
    assert ds.class_names == sorted(CLASSES["train"])
    assert ds.num_classes == len(ds) == 5 and ds.samples_per_class == 25
    assert "MiniImageNet(split='train', classes=5" in repr(ds)
    ep = ds.sample_episode(5, 2, 3, gen())
    assert ep.support_x.dtype == torch.float32
    assert tuple(ep.support_x.shape) == (5 * 2, 3, 84, 84)
    assert tuple(ep.query_x.shape) == (5 * 3, 3, 84, 84)
    assert ep.support_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert 0.0 <= float(ep.support_x.min()) and float(ep.support_x.max()) <= 1.0


@pytest.mark.parametrize("split", SPLIT_NAMES)
def test_ravi_pixels_and_order_match_source(data, ravi_root, cache_dir, split):
    ds = MiniImageNet(ravi_root, split=split, cache_dir=cache_dir)
    names, images = expected_split(data, split)
    assert ds.class_names == names
    assert torch.equal(ds.images, torch.from_numpy(images))


@pytest.mark.parametrize("split", SPLIT_NAMES)
def test_pickle_and_ravi_png_are_identical(ravi_root, pickle_root, cache_dir, split):
    a = MiniImageNet(ravi_root, split=split, cache_dir=cache_dir)
    b = MiniImageNet(pickle_root, split=split, cache_dir=cache_dir)
    assert b.format == "pickle" and b.cache_paths == []
    assert a.class_names == b.class_names
    assert torch.equal(a.images, b.images)
    assert b.images.dtype == torch.uint8 and b.images.is_contiguous()
    ea, eb = a.sample_episode(3, 1, 2, gen(7)), b.sample_episode(3, 1, 2, gen(7))
    assert torch.equal(ea.support_x, eb.support_x) and torch.equal(ea.classes, eb.classes)


def test_split_sizes_and_trainval(ravi_root, pickle_root, cache_dir):
    for root in (ravi_root, pickle_root):
        sizes = {s: MiniImageNet(root, split=s, cache_dir=cache_dir).num_classes for s in SPLIT_NAMES}
        assert sizes == {"train": 5, "val": 3, "test": 3, "trainval": 8}
    tv = MiniImageNet(ravi_root, split="trainval", cache_dir=cache_dir)
    assert tv.class_names == sorted(CLASSES["train"] + CLASSES["val"])
    assert [p.name for p in tv.sources] == ["train.csv", "val.csv"]
    assert len(tv.cache_paths) == 2
    assert tv.samples_per_class == 20  # val classes have fewer images


def test_validation_pickle_name(tmp_path, data, cache_dir):
    root = write_pickles(tmp_path / "l2l", data, val_name="validation")
    assert not (root / "mini-imagenet-cache-val.pkl").exists()
    val = MiniImageNet(root, split="val", cache_dir=cache_dir)
    assert val.sources == [root / "mini-imagenet-cache-validation.pkl"]
    names, images = expected_split(data, "val")
    assert val.class_names == names and torch.equal(val.images, torch.from_numpy(images))
    tv = MiniImageNet(root, split="trainval")
    assert tv.num_classes == 8


def test_jpeg_images(tmp_path, data, cache_dir):
    small = {s: rows[:15] for s, rows in data.items()}
    root = write_ravi(tmp_path / "jpg", small, ext="jpg")
    ds = MiniImageNet(root, split="train", cache_dir=cache_dir)
    names, images = expected_split(small, "train")
    assert ds.class_names == names and tuple(ds.images.shape) == (15, 3, 84, 84)
    diff = (ds.images.float() - torch.from_numpy(images).float()).abs().mean()
    assert float(diff) < 25.0  # lossy, but the same pictures (unrelated ones differ by ~85)
    first = root / "images" / small["train"][0][0].replace(".png", ".jpg")
    row = names.index(small["train"][0][1]) * 3
    want = np.asarray(Image.open(first).convert("RGB")).transpose(2, 0, 1)
    assert torch.equal(ds.images[row], torch.from_numpy(want.copy()))


def test_resized_and_converted_to_rgb(tmp_path, cache_dir):
    root = tmp_path / "odd"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(3)
    sources = {
        "a1.png": Image.fromarray(rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)),
        "a2.png": Image.fromarray(rng.integers(0, 256, (90, 90, 4), dtype=np.uint8), "RGBA"),
        "b1.png": Image.fromarray(rng.integers(0, 256, (84, 84), dtype=np.uint8), "L"),
        "b2.png": Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)),
    }
    for name, im in sources.items():
        im.save(root / "images" / name)
    write_csv(root / "train.csv", [("b1.png", "nB"), ("a1.png", "nA"), ("a2.png", "nA"), ("b2.png", "nB")])
    for size in (84, 32):
        ds = MiniImageNet(root, split="train", cache_dir=cache_dir, image_size=size)
        assert ds.class_names == ["nA", "nB"] and tuple(ds.images.shape) == (4, 3, size, size)
        for row, name in enumerate(["a1.png", "a2.png", "b1.png", "b2.png"]):
            im = sources[name].convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), resample=Image.Resampling.LANCZOS)
            want = torch.from_numpy(np.asarray(im).transpose(2, 0, 1).copy())
            assert torch.equal(ds.images[row], want), name
    # grey input stays grey: three equal channels
    assert torch.equal(ds.images[2, 0], ds.images[2, 1])


def test_mean_std_normalisation(ravi_root, cache_dir):
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    raw = MiniImageNet(ravi_root, split="val", cache_dir=cache_dir)
    norm = MiniImageNet(ravi_root, split="val", cache_dir=cache_dir, mean=mean, std=std)
    a, b = raw.sample_episode(3, 2, 4, gen(1)), norm.sample_episode(3, 2, 4, gen(1))
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(b.support_x, (a.support_x - m) / s, atol=1e-6)
    assert torch.allclose(b.query_x, (a.query_x - m) / s, atol=1e-6)
    assert float(b.query_x.min()) < 0  # actually shifted


def test_sampler_integration(pickle_root):
    ds = MiniImageNet(pickle_root, split="test")
    sampler = TaskDistributionSampler(ds, ways=3, shots=1, queries=5, seed=0)
    ep = sampler.sample()
    assert tuple(ep.support_x.shape) == (3, 3, 84, 84) and tuple(ep.query_x.shape) == (15, 3, 84, 84)
    assert torch.equal(sampler.fixed(2)[1].query_x, sampler.fixed(2)[1].query_x)
    with pytest.raises(ValueError, match="ways=5 exceeds the 3 classes of MiniImageNet split 'test'"):
        TaskDistributionSampler(ds, ways=5, shots=1, queries=5)


# --------------------------------------------------------------------------- layout detection


def test_csv_locations(tmp_path, data, cache_dir):
    small = {s: rows[:10] for s, rows in data.items()}
    nested = write_ravi(tmp_path / "nested", small, csv_dir=tmp_path / "nested" / "splits" / "ravi")
    ds = MiniImageNet(nested, split="test", cache_dir=cache_dir)
    assert ds.sources == [nested / "splits" / "ravi" / "test.csv"]
    elsewhere = tmp_path / "csvs"
    root = write_ravi(tmp_path / "flat", small, csv_dir=elsewhere)
    ds = MiniImageNet(str(root), split="val", cache_dir=str(cache_dir), splits_dir=str(elsewhere))
    assert ds.sources == [elsewhere / "val.csv"] and ds.num_classes == 3


def test_both_layouts_prefers_images_and_falls_back_to_pickles(tmp_path, data, cache_dir):
    root = write_pickles(write_ravi(tmp_path / "both", data), data)
    assert MiniImageNet(root, split="train", cache_dir=cache_dir).format == "ravi"
    (root / "train.csv").unlink()
    assert MiniImageNet(root, split="train", cache_dir=cache_dir).format == "pickle"


# --------------------------------------------------------------------------- cache


def test_cache_reused_on_second_load(ravi_root, cache_dir, monkeypatch):
    first = MiniImageNet(ravi_root, split="train", cache_dir=cache_dir)
    (entry,) = first.cache_paths
    assert entry.is_file() and entry.parent == cache_dir / "miniimagenet"
    assert entry.name.startswith("train-84px-")
    assert not list(entry.parent.glob("*.partial"))

    def boom(paths, size):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(mi, "_decode_all", boom)
    second = MiniImageNet(ravi_root, split="train", cache_dir=cache_dir)
    assert torch.equal(first.images, second.images) and first.class_names == second.class_names
    assert second.cache_paths == [entry]


def test_cache_dir_from_environment(ravi_root, tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_METAOPT_CACHE", str(tmp_path / "envcache"))
    ds = MiniImageNet(ravi_root, split="test")
    assert ds.cache_paths[0].parent == tmp_path / "envcache" / "miniimagenet"


def test_cache_key_follows_images_and_size(tmp_path, data, cache_dir):
    root = write_ravi(tmp_path / "r", {"test": data["test"]})
    a = MiniImageNet(root, split="test", cache_dir=cache_dir)
    b = MiniImageNet(root, split="test", cache_dir=cache_dir, image_size=42)
    assert a.cache_paths != b.cache_paths and b.image_shape == (3, 42, 42)
    filename = data["test"][0][0]
    Image.fromarray(np.zeros((84, 84, 3), np.uint8)).save(root / "images" / filename)
    c = MiniImageNet(root, split="test", cache_dir=cache_dir)
    assert c.cache_paths != a.cache_paths
    row = c.class_names.index(data["test"][0][1]) * PER_CLASS["test"]
    assert int(c.images[row].max()) == 0 and int(a.images[row].max()) > 0


def test_unreadable_or_stale_cache_is_rebuilt(ravi_root, cache_dir):
    ds = MiniImageNet(ravi_root, split="val", cache_dir=cache_dir)
    (entry,) = ds.cache_paths
    entry.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="cannot read cache entry"):
        again = MiniImageNet(ravi_root, split="val", cache_dir=cache_dir)
    assert torch.equal(again.images, ds.images)
    np.savez(entry, images=np.zeros((1, 3, 84, 84), np.uint8), class_names=np.array(["x"]), group_sizes=np.array([1]))
    with pytest.warns(UserWarning, match="does not match"):
        again = MiniImageNet(ravi_root, split="val", cache_dir=cache_dir)
    assert torch.equal(again.images, ds.images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MiniImageNet(ravi_root, split="val", cache_dir=cache_dir)  # rebuilt entry is good


def test_unwritable_cache_warns_and_still_loads(ravi_root, cache_dir, monkeypatch):
    def refuse(path, arrays):
        raise PermissionError(f"read-only: {path}")

    monkeypatch.setattr(mi.cache, "atomic_write_npz", refuse)
    with pytest.warns(UserWarning, match="cannot write cache entry"):
        ds = MiniImageNet(ravi_root, split="test", cache_dir=cache_dir)
    assert ds.num_classes == 3 and not ds.cache_paths[0].exists()


def test_failed_decode_leaves_no_cache(tmp_path, data, cache_dir):
    root = write_ravi(tmp_path / "r", {"val": data["val"]})
    bad = data["val"][37][0]
    (root / "images" / bad).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=f"cannot decode image .*{bad}"):
        MiniImageNet(root, split="val", cache_dir=cache_dir)
    assert not cache_dir.exists() or not any(cache_dir.rglob("*"))  # no entry, no temp file


# --------------------------------------------------------------------------- argument errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"split": "validation"}, r"unknown split 'validation'; use one of 'train', 'val', 'test', 'trainval'"),
        ({"image_size": 0}, "image_size must be a positive integer, got 0"),
        ({"image_size": True}, "image_size must be a positive integer"),
        ({"mean": (0.5, 0.5)}, r"mean needs one value per RGB channel \(3\), got \[0.5, 0.5\]"),
        ({"std": (1.0, 0.0, 1.0)}, "std must be non-zero in every channel"),
    ],
)
def test_bad_arguments(pickle_root, kwargs, match):
    with pytest.raises(ValueError, match=match):
        MiniImageNet(pickle_root, **kwargs)


def test_nothing_found_names_what_was_looked_for(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        MiniImageNet(tmp_path / "empty", split="val")
    msg = str(err.value)
    assert "split 'val'" in msg and "images/ with val.csv" in msg
    assert "mini-imagenet-cache-val.pkl or mini-imagenet-cache-validation.pkl" in msg
    assert "does not exist" not in msg
    with pytest.raises(FileNotFoundError, match=r"\(the folder does not exist\).*train.csv \+ val.csv"):
        MiniImageNet(tmp_path / "missing", split="trainval")


def test_partial_pickles_are_not_enough(tmp_path, data):
    root = write_pickles(tmp_path / "p", {"train": data["train"]})
    with pytest.raises(FileNotFoundError, match="mini-imagenet-cache-test.pkl"):
        MiniImageNet(root, split="test")


def test_splits_dir_without_images(tmp_path, ravi_root):
    with pytest.raises(FileNotFoundError, match=r"image folder .*images does not exist"):
        MiniImageNet(tmp_path, split="train", splits_dir=ravi_root)


def test_images_without_csv(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no test.csv in .* or .*splits/ravi; put the Ravi"):
        MiniImageNet(tmp_path, split="test")


# --------------------------------------------------------------------------- CSV errors


@pytest.mark.parametrize(
    "text, match",
    [
        ("file,class\na.png,n1\n", r"line 1 is 'file,class', expected the header 'filename,label'"),
        ("filename,label\na.png,n1\nb.png\n", r"line 3 is 'b.png', expected '<filename>,<label>'"),
        ("filename,label\na.png,n1,extra\n", r"line 2 is 'a.png,n1,extra'"),
        ("filename,label\na.png,\n", r"line 2 is 'a.png,'"),
        ("filename,label\na.png,n1\n\nb.png,n1\na.png,n2\n", r"line 5 repeats 'a.png' \(first on line 2\)"),
        ("filename,label\n../secret.png,n1\n", r"line 2 names '../secret.png', which is outside"),
        ("filename,label\n/etc/passwd,n1\n", r"line 2 names '/etc/passwd', which is outside"),
        ("filename,label\n\n", "has no image rows after its header"),
        ("", "has no image rows after its header"),
    ],
)
def test_malformed_csv(tmp_path, text, match):
    (tmp_path / "images").mkdir()
    (tmp_path / "train.csv").write_text(text)
    with pytest.raises(ValueError, match=match):
        MiniImageNet(tmp_path, split="train", cache_dir=tmp_path / "c")


def test_non_utf8_csv(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"filename,label\n\xff\xfe.png,n1\n")
    with pytest.raises(ValueError, match="is not a UTF-8 text CSV"):
        mi.read_split_csv(path)


def test_read_split_csv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"split file .*nope.csv does not exist"):
        mi.read_split_csv(tmp_path / "nope.csv")


def test_read_split_csv_tolerates_bom_spaces_and_subfolders(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes("\ufefffilename, label\r\nsub/a.jpg , n1\r\n".encode())
    assert mi.read_split_csv(path) == [("sub/a.jpg", "n1")]


def test_missing_image_is_named(tmp_path, data, cache_dir):
    root = write_ravi(tmp_path / "r", {"test": data["test"][:9]})
    gone = data["test"][4][0]
    (root / "images" / gone).unlink()
    (root / "images" / data["test"][6][0]).unlink()
    with pytest.raises(FileNotFoundError, match=rf"image .*{gone} listed on line 6 of .*test.csv does not exist \(nor do 1 more\)"):
        MiniImageNet(root, split="test", cache_dir=cache_dir)


def test_corrupt_image_is_named(tmp_path, data, cache_dir):
    root = write_ravi(tmp_path / "r", {"test": data["test"][:6]})
    bad = data["test"][2][0]
    path = root / "images" / bad
    path.write_bytes(path.read_bytes()[:200])  # truncated PNG
    with pytest.raises(ValueError, match=rf"MiniImageNet: cannot decode image .*{bad} \("):
        MiniImageNet(root, split="test", cache_dir=cache_dir)


def test_trainval_class_in_both_csvs_is_merged(tmp_path, cache_dir):
    root = tmp_path / "overlap"
    (root / "images").mkdir(parents=True)
    pixels = {}
    for i, name in enumerate(["t1.png", "t2.png", "v1.png", "v2.png"]):
        pixels[name] = np.full((84, 84, 3), 10 * (i + 1), np.uint8)
        Image.fromarray(pixels[name]).save(root / "images" / name)
    write_csv(root / "train.csv", [("t1.png", "nX"), ("t2.png", "nA")])
    write_csv(root / "val.csv", [("v1.png", "nX"), ("v2.png", "nB")])
    ds = MiniImageNet(root, split="trainval", cache_dir=cache_dir)
    assert ds.class_names == ["nA", "nB", "nX"]
    assert [int(ds.images[i, 0, 0, 0]) for i in range(4)] == [20, 40, 10, 30]


# --------------------------------------------------------------------------- pickle errors and safety


def dump(path: Path, obj, protocol=4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def pickle_root_with(tmp_path: Path, obj) -> Path:
    root = tmp_path / "bad"
    dump(root / "mini-imagenet-cache-train.pkl", obj)
    return root


def good_dict(data):
    return pickle_dict(data["train"][:10])


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: [d], "holds a list, expected a dict with 'image_data' and 'class_dict'"),
        (lambda d: {"image_data": d["image_data"]}, r"lacks 'class_dict' \(has \['image_data'\]\)"),
        (lambda d: {}, "lacks 'image_data' and 'class_dict'"),
        (lambda d: {**d, "image_data": d["image_data"].astype(np.float32)}, r"image_data is float32 \(10, 84, 84, 3\), expected uint8"),
        (lambda d: {**d, "image_data": d["image_data"].transpose(0, 3, 1, 2)}, r"image_data is uint8 \(10, 3, 84, 84\)"),
        (lambda d: {**d, "image_data": d["image_data"][..., 0]}, r"image_data is uint8 \(10, 84, 84\)"),
        (lambda d: {**d, "image_data": d["image_data"].tolist()}, "image_data is list, expected uint8"),
        (lambda d: {**d, "class_dict": {}}, "class_dict must be a non-empty dict"),
        (lambda d: {**d, "class_dict": [1, 2]}, "class_dict must be a non-empty dict"),
        (lambda d: {**d, "class_dict": {"n1": []}}, r"class_dict\['n1'\] must be a non-empty list of integer indices"),
        (lambda d: {**d, "class_dict": {"n1": [0.5]}}, r"class_dict\['n1'\] must be a non-empty list"),
        (lambda d: {**d, "class_dict": {"n1": [0, 10]}}, r"class_dict\['n1'\] has indices outside image_data's 10 images"),
        (lambda d: {**d, "class_dict": {"n1": [-1]}}, "has indices outside"),
    ],
)
def test_bad_pickle_contents(tmp_path, data, mutate, match):
    root = pickle_root_with(tmp_path, mutate(good_dict(data)))
    with pytest.raises(ValueError, match=match):
        MiniImageNet(root, split="train")


def test_pickle_needs_image_size_84(pickle_root):
    with pytest.raises(ValueError, match="pickles hold 84x84 images, so use image_size=84"):
        MiniImageNet(pickle_root, split="test", image_size=32)


class _RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Evals:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_pickle_is_refused_without_running(tmp_path, data, protocol):
    marker = tmp_path / "pwned"
    evil = {"image_data": _RunsShell(marker), "class_dict": {"n1": [0]}}
    root = tmp_path / "evil"
    dump(root / "mini-imagenet-cache-train.pkl", evil, protocol=protocol)
    with pytest.raises(mi.UnsafePickleError, match=r"references the global (posix|nt|os)\.system.*refusing to load it"):
        MiniImageNet(root, split="train")
    assert not marker.exists()
    # hidden inside an otherwise valid file, after the arrays
    d = good_dict(data)
    d["class_dict"]["n9"] = _Evals()
    dump(root / "mini-imagenet-cache-train.pkl", d, protocol=protocol)
    with pytest.raises(ValueError, match=r"(builtins|__builtin__)\.eval"):
        MiniImageNet(root, split="train")


def test_other_pickle_tricks_are_refused(tmp_path):
    # a numpy function that is not needed to rebuild arrays
    with pytest.raises(ValueError, match=r"numpy\.load"):
        mi.load_pickle(dump(tmp_path / "a.pkl", np.load))
    # persistent ids
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=2)
    pickler.persistent_id = lambda obj: "pid" if obj == "x" else None
    pickler.dump({"image_data": "x"})
    (tmp_path / "b.pkl").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="uses persistent ids"):
        mi.load_pickle(tmp_path / "b.pkl")


def test_truncated_or_foreign_pickle(tmp_path, data):
    root = tmp_path / "t"
    blob = pickle.dumps(good_dict(data), protocol=4)
    dump(root / "mini-imagenet-cache-train.pkl", None)
    (root / "mini-imagenet-cache-train.pkl").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"cannot unpickle .*mini-imagenet-cache-train.pkl \(.*re-download it"):
        MiniImageNet(root, split="train")
    (root / "mini-imagenet-cache-train.pkl").write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(ValueError, match="cannot unpickle"):
        MiniImageNet(root, split="train")


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_safe_unpickler_reads_every_protocol(tmp_path, data, protocol):
    d = good_dict(data)
    # numpy scalars as indices and bytes keys, as Python 2 era pickles may hold
    d["class_dict"] = {
        (k.encode() if i == 0 else k): [np.int64(j) for j in v] for i, (k, v) in enumerate(d["class_dict"].items())
    }
    out = mi.load_pickle(dump(tmp_path / "p.pkl", d, protocol=protocol))
    assert np.array_equal(out["image_data"], d["image_data"])
    root = pickle_root_with(tmp_path, d)
    ds = MiniImageNet(root, split="train")
    names = sorted(k.decode() if isinstance(k, bytes) else k for k in d["class_dict"])
    assert ds.class_names == names and ds.images.shape[0] == 10


def test_safe_unpickler_reads_numpy1_module_names(tmp_path, data):
    blob = pickle.dumps(good_dict(data), protocol=2)
    assert b"numpy._core.multiarray\n_reconstruct" in blob  # numpy 2 writes the new name
    old = blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    (tmp_path / "old.pkl").write_bytes(old)
    out = mi.load_pickle(tmp_path / "old.pkl")
    assert np.array_equal(out["image_data"], good_dict(data)["image_data"])


def test_unresolvable_numpy_global():
    with pytest.raises(pickle.UnpicklingError, match="numpy has no nothing"):
        safe_pickle._numpy_global(("no.such.module", "numpy"), "nothing")()


# --------------------------------------------------------------------------- the real Ravi split CSVs


@pytest.mark.real_data
@pytest.mark.skipif(not REAL_SPLITS.is_dir(), reason="../shared/data/miniimagenet/splits/ravi is absent")
def test_real_ravi_csvs(tmp_path):
    expected = {"train": 64, "val": 16, "test": 20}
    classes = {}
    for split, count in expected.items():
        rows = mi.read_split_csv(REAL_SPLITS / f"{split}.csv")
        assert len(rows) == count * 600
        per_class: dict[str, int] = {}
        for filename, label in rows:
            assert filename.startswith(label) and filename.endswith(".jpg")
            per_class[label] = per_class.get(label, 0) + 1
        assert len(per_class) == count and set(per_class.values()) == {600}
        classes[split] = set(per_class)
    assert not classes["train"] & classes["val"]
    assert not classes["train"] & classes["test"]
    assert not classes["val"] & classes["test"]
    # With the real CSVs but no images, the loader names the first missing image.
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match=r"n0193011200000001\.jpg listed on line 2 .*nor do 11999 more"):
        MiniImageNet(tmp_path, split="test", splits_dir=REAL_SPLITS)
