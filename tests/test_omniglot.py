"""Omniglot loader: layout, preprocessing, rotations, cache, downloads and errors.

Everything except the ``real_data`` tests runs on small generated archives
(``omniglot_fixtures``); the ``real_data`` tests use ../shared/data/omniglot when present.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import shutil
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import omniglot_fixtures as fx  # noqa: E402

import fewshot_metaopt.datasets.cache as cache_mod  # noqa: E402
import fewshot_metaopt.datasets.omniglot as om  # noqa: E402
from fewshot_metaopt.datasets.download import (  # noqa: E402
    ChecksumError,
    download_file,
    is_html,
    is_safe_member,
    safe_extract,
)
from fewshot_metaopt.datasets.omniglot import Omniglot  # noqa: E402
from fewshot_metaopt.episodes.sampler import TaskDistributionSampler  # noqa: E402

from conftest import OMNIGLOT as REAL_ROOT  # noqa: E402
STEMS = ("images_background", "images_evaluation")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def source(tmp_path_factory):
    """One generated Omniglot (zips, folders, split files) shared read-only by the tests."""
    root = tmp_path_factory.mktemp("omniglot-source")
    members = fx.make_omniglot(root, zips=True, folders=True, splits=True)
    return root, members


def _copy(source_root: Path, dest: Path, zips=True, folders=False, splits=True) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for stem in STEMS:
        if zips:
            shutil.copy(source_root / f"{stem}.zip", dest / f"{stem}.zip")
        if folders:
            shutil.copytree(source_root / stem, dest / stem)
    if splits:
        shutil.copytree(source_root / "splits", dest / "splits")
    return dest


@pytest.fixture
def root(source, tmp_path):
    """A private copy (zips and split files) that a test may change."""
    return _copy(source[0], tmp_path / "data")


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".part", ".tmp", ".partial")) or ".extract." in p.name)


# ----------------------------------------------------------------------------- shapes & pixels


def test_lake_split_shapes_and_pixels(source, cache):
    root, members = source
    ds = Omniglot(root, split="background", cache_dir=cache)
    names = sorted(members["images_background"])
    assert ds.name == "Omniglot" and ds.split == "background"
    assert ds.num_classes == 6 and ds.class_names[0] == "Alpha/character01"
    assert ds.class_names == ds.characters
    assert ds.images.dtype == torch.uint8 and tuple(ds.images.shape) == (120, 1, 28, 28)
    assert ds.samples_per_class == 20
    for i in (0, 37, 119):  # stored images are Pillow's grayscale -> invert -> LANCZOS
        expected = fx.expected_pixels(members["images_background"][names[i]])
        assert np.array_equal(ds.images[i, 0].numpy(), expected)
    # ink is white (255) on black (0)
    assert ds.images.float().mean() < 60


def test_vinyals_train_classes_and_episode(source, cache):
    root, _ = source
    ds = Omniglot(root, split="train", cache_dir=cache)
    assert ds.class_names == fx.split_lines("train")
    assert ds.num_classes == 24 and len(ds.characters) == 6
    assert ds.images.shape[0] == 6 * 20  # one copy per character, whatever the rotations
    sampler = TaskDistributionSampler(ds, ways=5, shots=2, queries=3, seed=1)
    ep = sampler.sample()
    assert ep.support_x.dtype == torch.float32 and tuple(ep.support_x.shape) == (10, 1, 28, 28)
    assert tuple(ep.query_x.shape) == (15, 1, 28, 28)
    assert 0.0 <= float(ep.support_x.min()) and float(ep.support_x.max()) <= 1.0
    assert float(ep.support_x.max()) == 1.0


@pytest.mark.parametrize("split", ["train", "val", "trainval", "test", "background", "evaluation"])
def test_every_split_loads(source, cache, split):
    ds = Omniglot(source[0], split=split, cache_dir=cache)
    expected = len(fx.split_lines(split)) if split in fx.SPLIT_CHARACTERS else 6
    assert ds.num_classes == expected


def test_rotations_really_rotate(source, cache, tmp_path):
    root, members = source
    splits = fx.write_splits(tmp_path / "splits", {"train": [f"Alpha/character02/{r}" for r in fx.ROTATIONS]})
    ds = Omniglot(root, split="train", splits_dir=splits, cache_dir=cache)
    assert ds.class_names == [f"Alpha/character02/{r}" for r in fx.ROTATIONS]
    assert ds.class_group.tolist() == [0, 0, 0, 0] and ds.class_rotation.tolist() == [0, 1, 2, 3]
    assert ds.images.shape[0] == 20  # the four rotations share one group: no copies
    names = sorted(n for n in members["images_background"] if "/Alpha/character02/" in n)
    upright = torch.from_numpy(np.stack([fx.expected_pixels(members["images_background"][n]) for n in names]))

    def as_set(images: torch.Tensor) -> list[bytes]:
        return sorted(img.numpy().tobytes() for img in images)

    ep = ds.sample_episode(4, 20, 0, torch.Generator().manual_seed(0))
    pixels = (ep.support_x * 255).round().to(torch.uint8)[:, 0]
    for label, cls in enumerate(ep.classes.tolist()):
        got = pixels[ep.support_y == label]
        turns = ds.class_rotation[cls].item()
        assert as_set(got) == as_set(torch.rot90(upright, turns, dims=(-2, -1)))
        if turns:
            assert as_set(got) != as_set(upright)
    # rot090 is a counter-clockwise quarter turn: the top-right corner moves to the top-left
    one = upright[0]
    assert torch.equal(torch.rot90(one, 1)[0, :], one[:, -1])


def test_zip_and_folder_give_identical_pixels(source, tmp_path):
    root = source[0]
    from_zip = Omniglot(_copy(root, tmp_path / "z", zips=True), "trainval", cache_dir=tmp_path / "c1")
    from_dir = Omniglot(_copy(root, tmp_path / "f", zips=False, folders=True), "trainval", cache_dir=tmp_path / "c2")
    assert torch.equal(from_zip.images, from_dir.images)
    assert from_zip.class_names == from_dir.class_names
    assert torch.equal(from_zip.class_group, from_dir.class_group)
    assert len(list((tmp_path / "c1").iterdir())) == len(list((tmp_path / "c2").iterdir())) == 2


def test_archive_preferred_over_folder(source, tmp_path):
    dest = _copy(source[0], tmp_path / "both", zips=True)
    for members in fx.generate(seed=7).values():
        fx.write_folder(dest, members)  # folders with different pixels beside the zips
    ds = Omniglot(dest, "background", cache_dir=tmp_path / "c")
    ref = Omniglot(source[0], "background", cache_dir=tmp_path / "c")
    assert torch.equal(ds.images, ref.images)


def test_zip_without_directory_entries_or_top_folder(source, tmp_path):
    members = source[1]["images_background"]
    flat = {n.split("/", 1)[1]: d for n, d in members.items()}  # no images_background/ prefix
    flat["__MACOSX/._junk.png"] = b"junk"
    flat["Alpha/.hidden.png"] = b"junk"
    flat["Alpha/character01/readme.txt"] = b"not an image"
    fx.write_zip(tmp_path / "r" / "images_background.zip", flat, directories=False,
                 compression=zipfile.ZIP_STORED)
    ds = Omniglot(tmp_path / "r", "background", cache_dir=tmp_path / "c")
    ref = Omniglot(source[0], "background", cache_dir=tmp_path / "c")
    assert torch.equal(ds.images, ref.images) and ds.class_names == ref.class_names


def test_other_zip_compression_goes_through_zipfile(source, tmp_path):
    members = source[1]["images_evaluation"]
    fx.write_zip(tmp_path / "r" / "images_evaluation.zip", members, compression=zipfile.ZIP_BZIP2)
    ds = Omniglot(tmp_path / "r", "evaluation", cache_dir=tmp_path / "c")
    ref = Omniglot(source[0], "evaluation", cache_dir=tmp_path / "c")
    assert torch.equal(ds.images, ref.images)


@pytest.mark.parametrize("image_size", [28, 20, 84, 105, 150])
def test_image_size(source, cache, image_size):
    root, members = source
    ds = Omniglot(root, "evaluation", cache_dir=cache, image_size=image_size)
    assert ds.image_shape == (1, image_size, image_size)
    first = sorted(members["images_evaluation"])[0]
    assert np.array_equal(ds.images[0, 0].numpy(), fx.expected_pixels(members["images_evaluation"][first], image_size))


# ----------------------------------------------------------------------------- decoder


def test_decoder_inverts_and_resizes_any_png_mode():
    from PIL import Image

    rng = np.random.default_rng(4)
    ink = fx.random_ink(rng)
    blobs = [fx.png_bytes(ink)]
    for mode in ("L", "RGB"):
        buf = io.BytesIO()
        Image.fromarray(np.where(ink, 0, 255).astype(np.uint8)).convert(mode).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    for size in (28, 105):
        got = om._decode_images(blobs, ["a", "b", "c"], size)
        expected = np.stack([fx.expected_pixels(b, size) for b in blobs])
        assert np.array_equal(got, expected)
        # strokes are bright: the ink pixels of the full-size picture are 255
        if size == 105:
            assert (got[0][ink] == 255).all() and (got[0][~ink] == 0).all()


@pytest.mark.parametrize(
    "blob",
    [
        b"not a png at all",
        fx.png_bytes(np.zeros((105, 105), bool))[:40],  # truncated
        fx.encode_png_1bit(np.zeros((105, 105), bool), [9] * 105),  # invalid row filter
    ],
    ids=["garbage", "truncated", "bad-filter"],
)
def test_corrupt_png_is_named(blob):
    with pytest.raises(ValueError, match=r"corrupt image: file 'A/character01/1.png' in /x"):
        om._decode_images([blob], ["file 'A/character01/1.png' in /x"], 28)


# ----------------------------------------------------------------------------- cache


def test_cache_written_once_and_reused(root, cache, monkeypatch):
    first = Omniglot(root, "train", cache_dir=cache)
    files = sorted(cache.iterdir())
    assert len(files) == 2 and all(f.suffix == ".npz" for f in files)
    assert sorted(first.cache_files) == files
    stamps = [f.stat().st_mtime_ns for f in files]

    def boom(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(om, "_decode_images", boom)
    monkeypatch.setattr(om, "_read_images", boom)
    again = Omniglot(root, "test", cache_dir=cache)
    again_train = Omniglot(root, "train", cache_dir=cache)
    assert torch.equal(again_train.images, first.images)
    assert again.num_classes == len(fx.split_lines("test"))
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert sum(f.stat().st_size for f in files) < 1_000_000


def test_default_cache_dir_from_environment(source, tmp_path, monkeypatch):
    monkeypatch.setenv(cache_mod.CACHE_ENV, str(tmp_path / "envcache"))
    ds = Omniglot(source[0], "evaluation")
    assert ds.cache_files[0].parent == tmp_path / "envcache"


def test_cache_keyed_by_archive_content(root, cache, source):
    before = Omniglot(root, "background", cache_dir=cache)
    members = dict(source[1]["images_background"])
    name = sorted(members)[0]
    members[name] = fx.png_bytes(np.zeros((105, 105), bool))  # a blank first image
    fx.write_zip(root / "images_background.zip", members)
    after = Omniglot(root, "background", cache_dir=cache)
    assert len(list(cache.iterdir())) == 2
    assert after.cache_files != before.cache_files
    assert int(after.images[0].sum()) == 0 and int(before.images[0].sum()) > 0
    assert torch.equal(after.images[1:], before.images[1:])


def test_cache_keyed_by_folder_content_and_size(source, tmp_path):
    dest = _copy(source[0], tmp_path / "f", zips=False, folders=True)
    cache = tmp_path / "c"
    a = Omniglot(dest, "evaluation", cache_dir=cache)
    b = Omniglot(dest, "evaluation", cache_dir=cache, image_size=20)
    png = sorted((dest / "images_evaluation").rglob("*.png"))[-1]
    png.write_bytes(fx.png_bytes(np.ones((105, 105), bool)))
    c = Omniglot(dest, "evaluation", cache_dir=cache)
    assert len({a.cache_files[0], b.cache_files[0], c.cache_files[0]}) == 3
    assert int(c.images[-1].float().mean()) == 255


def test_failed_build_leaves_no_cache_file(root, cache, monkeypatch):
    def half_written(file, **arrays):
        file.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod.np, "savez", half_written)
    with pytest.raises(OSError, match="disk full"):
        Omniglot(root, "background", cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_corrupt_image_leaves_no_cache_file(root, cache, source):
    members = dict(source[1]["images_evaluation"])
    bad = sorted(members)[5]
    members[bad] = b"\x89PNG\r\n\x1a\n but then nothing sensible"
    fx.write_zip(root / "images_evaluation.zip", members)
    with pytest.raises(ValueError, match=rf"corrupt image: member '{bad}' of .*images_evaluation\.zip"):
        Omniglot(root, "train", cache_dir=cache)
    # the background archive was cached before the failure; nothing of the evaluation one
    assert [p.name.split("-")[1] for p in cache.iterdir()] == ["images_background"]


def test_damaged_zip_member_is_named(root, cache, source):
    members = source[1]["images_background"]
    path = fx.write_zip(root / "images_background.zip", members, compression=zipfile.ZIP_STORED)
    name = sorted(members)[3]
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    data = bytearray(path.read_bytes())
    data[info.header_offset + 30 + len(name) + 60] ^= 0xFF  # flip a byte of the payload
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"corrupt image: member '{name}' of .*cannot be read"):
        Omniglot(root, "background", cache_dir=cache)
    data[info.header_offset] = 0  # now the local header itself is broken
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="Bad magic number for file header"):
        Omniglot(root, "background", cache_dir=cache)


def test_unreadable_or_mismatched_cache_is_rebuilt(root, cache):
    ds = Omniglot(root, "evaluation", cache_dir=cache)
    entry = ds.cache_files[0]
    entry.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable cache file"):
        again = Omniglot(root, "evaluation", cache_dir=cache)
    assert torch.equal(again.images, ds.images)
    cache_mod.atomic_write_npz(entry, {"images": np.zeros((3, 1, 5, 5), np.uint8),
                                       "characters": np.array(["a"]), "group_sizes": np.array([3])})
    with pytest.warns(UserWarning, match="does not match"):
        again = Omniglot(root, "evaluation", cache_dir=cache)
    assert torch.equal(again.images, ds.images)


# ----------------------------------------------------------------------------- errors


def test_unknown_split(root):
    with pytest.raises(ValueError, match=r"unknown split 'training'.*train, val, trainval, test.*background, evaluation"):
        Omniglot(root, split="training")
    with pytest.raises(ValueError, match="unknown split"):
        Omniglot(root, split=["train"])


@pytest.mark.parametrize("size", [0, -3, 2.5, True, "28"])
def test_bad_image_size(root, size):
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        Omniglot(root, "background", image_size=size)


def test_missing_archive(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"images_background\.zip.*pass download=True.*point root"):
        Omniglot(tmp_path / "nothing-here", "background", cache_dir=tmp_path / "c")


def test_missing_split_file(root, cache):
    (root / "splits" / "vinyals" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"val\.txt not found at .*splits/vinyals/val\.txt.*download=True"):
        Omniglot(root, "val", cache_dir=cache)


def test_split_line_naming_unknown_character(root, cache):
    (root / "splits" / "vinyals" / "test.txt").write_text("Gamma/character03/rot000\nKlingon/character07/rot090\n")
    with pytest.raises(ValueError, match=r"names Klingon/character07/rot090.*neither images_background\.zip nor"):
        Omniglot(root, "test", cache_dir=cache)


@pytest.mark.parametrize(
    "text, message",
    [
        ("Alpha/character01/rot045\n", r"line 1 is 'Alpha/character01/rot045'"),
        ("Alpha/character01/rot000\n\nAlpha/char01/rot000\n", r"line 3 is 'Alpha/char01/rot000'"),
        ("Alpha/character01/rot000\nAlpha/character01/rot000\n", r"line 2 repeats the class"),
    ],
)
def test_malformed_split_file(root, cache, text, message):
    (root / "splits" / "vinyals" / "train.txt").write_text(text)
    with pytest.raises(ValueError, match=message):
        Omniglot(root, "train", cache_dir=cache)


def test_character_in_both_archives(root, cache, source):
    members = dict(source[1]["images_evaluation"])
    members.update({n.replace("images_background/Alpha", "images_evaluation/Alpha"): d
                    for n, d in source[1]["images_background"].items() if "/Alpha/" in n})
    fx.write_zip(root / "images_evaluation.zip", members)
    with pytest.raises(ValueError, match=r"'Alpha/character01' is in both images_background and images_evaluation"):
        Omniglot(root, "train", cache_dir=cache)


def test_bad_archives(root, cache, source):
    (root / "images_background.zip").write_bytes(b"this is no zip")
    with pytest.raises(ValueError, match=r"images_background\.zip is not a valid zip archive"):
        Omniglot(root, "background", cache_dir=cache)
    fx.write_zip(root / "images_background.zip", {"images_background/readme.txt": b"hi"})
    with pytest.raises(ValueError, match="no PNG images found"):
        Omniglot(root, "background", cache_dir=cache)
    fx.write_zip(root / "images_background.zip", {"images_background/Alpha/x.png": b"hi"})
    with pytest.raises(ValueError, match=r"unexpected image 'images_background/Alpha/x\.png'.*<Alphabet>/<characterNN>"):
        Omniglot(root, "background", cache_dir=cache)
    for evil in ("../evil.png", "/abs/Alpha/character01/1.png", "images_background/../../x.png"):
        fx.write_zip(root / "images_background.zip", {evil: b"x"}, directories=False)
        with pytest.raises(ValueError, match=r"refusing .*absolute path or contains '\.\.'"):
            Omniglot(root, "background", cache_dir=cache)
    assert not cache.exists() or list(cache.iterdir()) == []


# ----------------------------------------------------------------------------- download helpers


def test_is_html():
    assert is_html(b"<!DOCTYPE html><html>")
    assert is_html(b"  \n\t<!doctype HTML>")
    assert is_html(b"\xef\xbb\xbf <HTML lang=en>")
    assert is_html(b"<html>")
    assert not is_html(b"PK\x03\x04<html>")
    assert not is_html(b"")
    assert not is_html(b"Alpha/character01/rot000\n")


def test_is_safe_member():
    for ok in ("a.png", "images_background/A/c/1.png", "a..b/c", "x/.../y"):
        assert is_safe_member(ok), ok
    for bad in ("", "/etc/passwd", "\\evil", "C:/evil", "c:evil", "../x", "a/../../x", "a\\..\\x", ".."):
        assert not is_safe_member(bad), bad


def test_safe_extract_refuses_traversal(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("good/file.txt", b"fine")
        zf.writestr("../outside.txt", b"escape")
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match=r"member '\.\./outside\.txt' is an absolute path or contains"):
        safe_extract(archive, dest)
    assert not (tmp_path / "outside.txt").exists()
    assert not dest.exists() or list(dest.iterdir()) == []
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("/abs.txt", b"escape")
    with pytest.raises(ValueError, match="'/abs.txt' is an absolute path"):
        safe_extract(archive, dest)


def test_safe_extract_extracts_and_keeps_existing(tmp_path):
    archive = tmp_path / "ok.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("top/a.txt", b"a")
        zf.writestr("keep.txt", b"new")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_bytes(b"old")
    placed = safe_extract(archive, dest)
    assert sorted(p.name for p in placed) == ["keep.txt", "top"]
    assert (dest / "top" / "a.txt").read_bytes() == b"a" and (dest / "keep.txt").read_bytes() == b"old"
    assert sorted(p.name for p in dest.iterdir()) == ["keep.txt", "top"]  # no staging left
    with zipfile.ZipFile(archive) as zf:  # an open ZipFile works too
        safe_extract(zf, tmp_path / "dest2")
    assert (tmp_path / "dest2" / "top" / "a.txt").exists()


def test_download_file_checks(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload" * 1000)
    good = hashlib.md5(src.read_bytes()).hexdigest()
    dest = tmp_path / "out" / "file.bin"
    assert download_file(src.as_uri(), dest, md5=good.upper()) == dest
    assert dest.read_bytes() == src.read_bytes()
    dest.unlink()
    with pytest.raises(ChecksumError, match=rf"file\.bin .*expected md5 {'0' * 32}, got {good}"):
        download_file(src.as_uri(), dest, md5="0" * 32)
    assert list(dest.parent.iterdir()) == []

    def refuse(path: Path) -> None:
        assert path.exists() and path != dest
        raise ValueError("not what I wanted")

    with pytest.raises(ValueError, match="not what I wanted"):
        download_file(src.as_uri(), dest, validate=refuse)
    assert list(dest.parent.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        download_file((tmp_path / "absent").as_uri(), dest)
    assert list(dest.parent.iterdir()) == []
    assert issubclass(ChecksumError, ValueError)


# ----------------------------------------------------------------------------- downloads


@pytest.fixture(scope="session")
def mirror(source, tmp_path_factory):
    """A mirror folder with the layout of root: the two zips and splits/vinyals/*.txt."""
    folder = tmp_path_factory.mktemp("mirror")
    _copy(source[0], folder, zips=True, splits=True)
    (folder / "html").mkdir()
    for stem in STEMS:
        (folder / "html" / f"{stem}.zip").write_bytes(b"\n  <!DOCTYPE html><html><body>Sign in</body></html>")
    (folder / "badsplit" / "splits" / "vinyals").mkdir(parents=True)
    (folder / "badsplit" / "splits" / "vinyals" / "train.txt").write_text("<p>Alpha</p>\n")
    (folder / "shortsplit" / "splits" / "vinyals").mkdir(parents=True)
    (folder / "shortsplit" / "splits" / "vinyals" / "train.txt").write_text("Alpha/character01/rot000\n")
    (folder / "binsplit" / "splits" / "vinyals").mkdir(parents=True)
    (folder / "binsplit" / "splits" / "vinyals" / "train.txt").write_bytes(b"\xff\xfe\x00garbage")
    return folder


@pytest.fixture
def mirror_md5(mirror, monkeypatch):
    md5 = {f"{stem}.zip": _md5(mirror / f"{stem}.zip") for stem in STEMS}
    monkeypatch.setattr(Omniglot, "ARCHIVE_MD5", md5)
    monkeypatch.setattr(Omniglot, "SPLIT_SIZES", {s: len(fx.split_lines(s)) for s in fx.SPLIT_CHARACTERS})
    return md5


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if "error500" in self.path:
            self.send_error(500, "boom")
            return
        super().do_GET()


@pytest.fixture(scope="session")
def http_mirror(mirror):
    handler = functools.partial(_QuietHandler, directory=str(mirror))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("kind", ["file", "http"])
def test_download_from_mirror(kind, mirror, http_mirror, mirror_md5, tmp_path):
    base = mirror.as_uri() + "/" if kind == "file" else http_mirror
    dest = tmp_path / "fresh"
    ds = Omniglot(dest, "val", download=True, base_url=base, cache_dir=tmp_path / "c")
    assert ds.class_names == fx.split_lines("val")
    for stem in STEMS:
        assert _md5(dest / f"{stem}.zip") == mirror_md5[f"{stem}.zip"]
    assert (dest / "splits" / "vinyals" / "val.txt").read_text() == (mirror / "splits/vinyals/val.txt").read_text()
    assert _leftovers(dest) == []
    # all present now: a second call fetches nothing (even from a dead URL)
    assert Omniglot.download(dest, splits=["val"], base_url="http://127.0.0.1:9/") == []


def test_download_lake_split_fetches_only_its_archive(mirror, mirror_md5, tmp_path):
    dest = tmp_path / "lake"
    ds = Omniglot(dest, "evaluation", download=True, base_url=mirror.as_uri(), cache_dir=tmp_path / "c")
    assert ds.num_classes == 6
    assert sorted(p.name for p in dest.iterdir()) == ["images_evaluation.zip"]


def test_download_checksum_mismatch(mirror, http_mirror, mirror_md5, monkeypatch, tmp_path):
    monkeypatch.setattr(Omniglot, "ARCHIVE_MD5", {**mirror_md5, "images_background.zip": "f" * 32})
    dest = tmp_path / "bad"
    with pytest.raises(ChecksumError, match=rf"images_background\.zip .*expected md5 {'f' * 32}, got {mirror_md5['images_background.zip']}"):
        Omniglot(dest, "background", download=True, base_url=http_mirror, cache_dir=tmp_path / "c")
    assert list(dest.iterdir()) == []


def test_download_refuses_html(mirror, http_mirror, mirror_md5, tmp_path):
    dest = tmp_path / "html"
    with pytest.raises(ValueError, match=r"returned an HTML page, not images_background\.zip"):
        Omniglot(dest, "background", download=True, base_url=http_mirror + "html/", cache_dir=tmp_path / "c")
    assert list(dest.iterdir()) == []


def test_download_http_errors(http_mirror, tmp_path):
    with pytest.raises(FileNotFoundError, match="404"):
        Omniglot.download(tmp_path / "d", archives=["images_background"], splits=[], base_url=http_mirror + "nowhere/")
    with pytest.raises(ConnectionError, match="HTTP 500"):
        Omniglot.download(tmp_path / "d", archives=["images_background"], splits=[], base_url=http_mirror + "error500/")
    with pytest.raises(ConnectionError, match="check the network"):
        Omniglot.download(tmp_path / "d", archives=["images_background"], splits=[], base_url="http://127.0.0.1:9/")
    assert list((tmp_path / "d").iterdir()) == []


@pytest.mark.parametrize(
    "where, message",
    [("badsplit", r"line 1 is '<p>Alpha</p>'"), ("shortsplit", r"has 1 classes, expected 24"), ("binsplit", "not text")],
)
def test_download_validates_split_files(mirror, mirror_md5, tmp_path, where, message):
    dest = _copy(mirror, tmp_path / "d", zips=True, splits=False)
    with pytest.raises(ValueError, match=message):
        Omniglot(dest, "train", download=True, base_url=(mirror / where).as_uri(), cache_dir=tmp_path / "c")
    assert not (dest / "splits" / "vinyals").exists() or list((dest / "splits" / "vinyals").iterdir()) == []


def test_download_keeps_present_archives_unchecked(root, cache):
    # the archives in root do not have the official md5 sums: they are accepted as they are
    ds = Omniglot(root, "train", download=True, base_url="http://127.0.0.1:9/", cache_dir=cache)
    assert ds.num_classes == 24


def test_download_with_extract(mirror, mirror_md5, tmp_path):
    dest = tmp_path / "x"
    fetched = Omniglot.download(dest, base_url=mirror.as_uri(), splits_url=(mirror / "splits" / "vinyals").as_uri(),
                                extract=True)
    assert sorted(p.name for p in fetched) == sorted([f"{s}.zip" for s in STEMS] + [f"{s}.txt" for s in fx.SPLIT_CHARACTERS])
    assert (dest / "images_background" / "Alpha" / "character01").is_dir()
    assert sorted(p.name for p in dest.iterdir()) == sorted([*STEMS, *(f"{s}.zip" for s in STEMS), "splits"])
    (dest / "images_background.zip").unlink()
    (dest / "images_evaluation.zip").unlink()
    assert Omniglot.download(dest, base_url="http://127.0.0.1:9/", splits=[]) == []  # folders count as present
    ds = Omniglot(dest, "train", cache_dir=tmp_path / "c")
    assert ds.num_classes == 24


def test_download_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown archive 'images_extra'"):
        Omniglot.download(tmp_path, archives=["images_extra"])
    with pytest.raises(ValueError, match="split files exist for train, val, trainval, test only, got 'background'"):
        Omniglot.download(tmp_path, archives=[], splits=["background"])


# ----------------------------------------------------------------------------- real data

from conftest import REAL_SIZES, needs_real  # noqa: E402


def _characters(ds) -> set[str]:
    return {name.rsplit("/", 1)[0] for name in ds.class_names}


@pytest.mark.real_data
@needs_real
def test_real_class_counts_and_cache(real):
    for split, n in REAL_SIZES.items():
        ds = real["splits"][split]
        assert ds.num_classes == n, split
        assert ds.samples_per_class == 20
    assert len(real["splits"]["train"].characters) == 1028
    assert len(real["splits"]["test"].characters) == 423
    assert len(real["splits"]["background"].characters) + len(real["splits"]["evaluation"].characters) == 1623
    files = list(real["cache"].iterdir())
    assert len(files) == 2 and sum(f.stat().st_size for f in files) <= 30 * 2**20
    assert torch.equal(real["first"].images, real["splits"]["train"].images)


@pytest.mark.real_data
@needs_real
def test_real_splits_disjoint_and_rotations_together(real):
    s = real["splits"]
    train, val, test, trainval = (_characters(s[k]) for k in ("train", "val", "test", "trainval"))
    assert not test & train and not test & val and not val & train
    assert trainval == train | val
    background, evaluation = set(s["background"].class_names), set(s["evaluation"].class_names)
    assert (train | val | test) == background | evaluation
    assert train & evaluation  # the Vinyals splits take characters from both archives
    for split in ("train", "val", "trainval", "test"):
        names = set(s[split].class_names)
        for character in _characters(s[split]):
            assert {f"{character}/{r}" for r in fx.ROTATIONS} <= names


@pytest.mark.real_data
@needs_real
def test_real_pixels_match_pillow(real):
    ds = real["splits"]["evaluation"]
    with zipfile.ZipFile(REAL_ROOT / "images_evaluation.zip") as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png"))
        for i in range(0, len(names), 997):
            assert np.array_equal(ds.images[i, 0].numpy(), fx.expected_pixels(zf.read(names[i]))), names[i]


@pytest.mark.real_data
@needs_real
def test_real_sampler_determinism(real):
    ds = real["splits"]["train"]
    a = TaskDistributionSampler(ds, ways=20, shots=5, queries=15, seed=11)
    b = TaskDistributionSampler(Omniglot(REAL_ROOT, "train", cache_dir=real["cache"]), ways=20, shots=5, queries=15, seed=11)
    for _ in range(3):
        x, y = a.sample(), b.sample()
        assert torch.equal(x.classes, y.classes) and torch.equal(x.support_x, y.support_x)
        assert torch.equal(x.query_x, y.query_x)
    assert tuple(x.support_x.shape) == (100, 1, 28, 28) and tuple(x.query_x.shape) == (300, 1, 28, 28)
    fixed_a, fixed_b = a.fixed(4), b.fixed(4)
    assert all(torch.equal(fixed_a[i].support_x, fixed_b[i].support_x) for i in range(4))
    c = TaskDistributionSampler(ds, ways=20, shots=5, queries=15, seed=12)
    assert not torch.equal(c.sample().classes, TaskDistributionSampler(ds, ways=20, shots=5, queries=15, seed=11).sample().classes)


@pytest.mark.real_data
@needs_real
def test_real_split_file_download_validation(tmp_path):
    # the real split files pass the structural checks a download applies (line format and count)
    url = (REAL_ROOT / "splits" / "vinyals").as_uri()
    fetched = Omniglot.download(tmp_path, archives=[], splits=["train", "val", "trainval", "test"], splits_url=url)
    assert len(fetched) == 4
    for f in fetched:
        assert f.read_bytes() == (REAL_ROOT / "splits" / "vinyals" / f.name).read_bytes()
