"""Damaged caches, full disks, killed writers and broken inputs, for every image data set.

Each data set (Glyphs, a generated Omniglot, a generated miniImageNet) goes through the same
faults: its cache entry truncated, bit-flipped, altered but well-formed, or stripped of its
checksum is warned about once and rebuilt to the arrays of a fresh build; a full disk leaves
it without a cache but loaded; temporaries of a killed writer are removed, those of a live one
are not.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import struct
import sys
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import miniimagenet_fixtures as mfx  # noqa: E402
import omniglot_fixtures as ofx  # noqa: E402

from fewshot_metaopt import atomic_files  # noqa: E402
from fewshot_metaopt.atomic_files import atomic_writer  # noqa: E402
from fewshot_metaopt.datasets import cache  # noqa: E402
from fewshot_metaopt.datasets import glyphs as glyphs_module  # noqa: E402
from fewshot_metaopt.datasets import miniimagenet as mi  # noqa: E402
from fewshot_metaopt.datasets import omniglot as om  # noqa: E402
from fewshot_metaopt.datasets.glyphs import Glyphs  # noqa: E402
from fewshot_metaopt.datasets.miniimagenet import MiniImageNet  # noqa: E402
from fewshot_metaopt.datasets.omniglot import Omniglot  # noqa: E402

HOUR = 3600.0


# ----------------------------------------------------------------------------- data sets


@dataclass
class Subject:
    """One data set, loadable into any cache folder; ``entry`` names its one cache file."""

    name: str
    load: Callable[[Path], object]
    entry: Callable[[object], Path]
    # (module, attribute) of the step that builds the arrays, to prove a load read the cache
    builder: tuple[object, str]


@pytest.fixture(scope="module")
def omniglot_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("omniglot")
    ofx.make_omniglot(root, zips=True, folders=False, splits=True)
    return root


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory):
    data = {split: rows[:12] for split, rows in mfx.make_data().items()}
    return mfx.write_ravi(tmp_path_factory.mktemp("mini"), data)


@pytest.fixture(params=["Glyphs", "Omniglot", "MiniImageNet"])
def subject(request, omniglot_root, mini_root) -> Subject:
    if request.param == "Glyphs":
        return Subject(
            "Glyphs",
            lambda c: Glyphs("val", cache_dir=c, num_characters=30, samples_per_class=6),
            lambda ds: ds.cache_path,
            (glyphs_module, "render_characters"),
        )
    if request.param == "Omniglot":
        return Subject(
            "Omniglot",
            lambda c: Omniglot(omniglot_root, "evaluation", cache_dir=c),
            lambda ds: ds.cache_files[0],
            (om, "_read_images"),
        )
    return Subject(
        "MiniImageNet",
        lambda c: MiniImageNet(mini_root, split="val", cache_dir=c),
        lambda ds: ds.cache_paths[0],
        (mi, "_decode_all"),
    )


def load_quietly(subject: Subject, cache_dir: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return subject.load(cache_dir)


def load_recording(subject: Subject, cache_dir: Path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = subject.load(cache_dir)
    return ds, [str(w.message) for w in caught]


def forbid_building(subject: Subject, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError(f"{subject.name} built its arrays instead of reading the cache")

    monkeypatch.setattr(*subject.builder, refuse)


def entry_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


# ----------------------------------------------------------------------------- damage


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_bit_in_images(path: Path) -> None:
    """Flip one bit in the middle of the stored pixels (not in zip or npy headers)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("images.npy")
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    payload = info.header_offset + 30 + name_len + extra_len
    data[payload + info.compress_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def zero_pixels(path: Path) -> None:
    """A well-formed entry whose pixels were altered and re-saved, its checksum left as it was."""
    arrays = entry_arrays(path)
    arrays["images"] = np.zeros_like(arrays["images"])
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def drop_checksum(path: Path) -> None:
    arrays = entry_arrays(path)
    del arrays[cache.CHECKSUM]
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def rewrite_verified(path: Path, change: Callable[[dict[str, np.ndarray]], None]) -> None:
    """An entry with a valid checksum whose arrays do not fit its name."""
    arrays = entry_arrays(path)
    del arrays[cache.CHECKSUM]
    change(arrays)
    assert cache.write_entry(path, arrays, "test")


def fewer_images(arrays: dict[str, np.ndarray]) -> None:
    arrays["images"] = arrays["images"][:-1]


def other_dtype(arrays: dict[str, np.ndarray]) -> None:
    arrays["images"] = arrays["images"].astype(np.int16)


DAMAGE = {
    "truncated": (truncate, "cannot read cache entry"),
    "bit-flipped": (flip_bit_in_images, "cannot read cache entry"),
    "zeroed-pixels": (zero_pixels, "does not match its checksum"),
    "no-checksum": (drop_checksum, r"does not match its checksum \(it stores none\)"),
    "fewer-images": (lambda p: rewrite_verified(p, fewer_images), "does not match what it should hold"),
    "other-dtype": (lambda p: rewrite_verified(p, other_dtype), r"does not match what it should hold \(images are int16"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_cache_is_warned_about_once_and_rebuilt(subject, damage, tmp_path, monkeypatch):
    fresh = load_quietly(subject, tmp_path / "fresh")
    ds = load_quietly(subject, tmp_path / "c")
    entry = subject.entry(ds)
    good = entry_arrays(entry)
    assert cache.CHECKSUM in good and str(good[cache.CHECKSUM]) == cache.arrays_sha256(good)
    spoil, says = DAMAGE[damage]
    spoil(entry)

    again, messages = load_recording(subject, tmp_path / "c")
    assert len(messages) == 1, messages
    (message,) = messages
    assert message.startswith(f"{subject.name}: ") and str(entry) in message
    assert message.endswith("rebuilding it") and "\n" not in message
    assert re.search(says, message), message
    assert torch.equal(again.images, fresh.images) and again.class_names == fresh.class_names

    rebuilt, reference = entry_arrays(entry), entry_arrays(subject.entry(fresh))
    assert rebuilt.keys() == reference.keys()
    assert all(np.array_equal(rebuilt[k], reference[k]) for k in reference)
    forbid_building(subject, monkeypatch)
    third = load_quietly(subject, tmp_path / "c")  # the rebuilt entry verifies
    assert torch.equal(third.images, fresh.images)


def test_miniimagenet_entry_of_other_classes_is_rebuilt(mini_root, tmp_path):
    ds = MiniImageNet(mini_root, split="test", cache_dir=tmp_path)
    (entry,) = ds.cache_paths
    rewrite_verified(entry, lambda a: a.update(class_names=a["class_names"][::-1].copy()))
    with pytest.warns(UserWarning, match=rf"cache entry {re.escape(str(entry))} does not match what it should hold \(its classes are not those of .*test.csv\)"):
        again = MiniImageNet(mini_root, split="test", cache_dir=tmp_path)
    assert again.class_names == ds.class_names and torch.equal(again.images, ds.images)


def test_entry_that_cannot_be_deleted_is_still_rebuilt(subject, tmp_path, monkeypatch):
    entry = subject.entry(load_quietly(subject, tmp_path / "c"))
    truncate(entry)
    real_unlink = Path.unlink

    def busy(self, missing_ok=False):
        if self == entry:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", busy)
    ds, messages = load_recording(subject, tmp_path / "c")
    assert len(messages) == 1 and "rebuilding it" in messages[0]
    monkeypatch.undo()
    assert torch.equal(ds.images, load_quietly(subject, tmp_path / "c").images)


# ----------------------------------------------------------------------------- full disk


def test_full_disk_goes_on_without_the_cache(subject, tmp_path, monkeypatch):
    fresh = load_quietly(subject, tmp_path / "fresh")

    def disk_full(file, **arrays):
        file.write(b"PK\x03\x04 the first bytes")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache.np, "savez", disk_full)
    ds, messages = load_recording(subject, tmp_path / "c")
    entry = subject.entry(ds)
    assert messages == [
        f"{subject.name}: no space left on device writing {entry}; going on without the cache "
        f"(cannot write cache entry, so it is built again next time: free space there, or pass a "
        f"writable cache_dir or set ${cache.CACHE_ENV})"
    ]
    assert torch.equal(ds.images, fresh.images) and ds.class_names == fresh.class_names
    assert not entry.exists() and list(entry.parent.iterdir()) == []  # no temporary left either
    monkeypatch.undo()
    load_quietly(subject, tmp_path / "c")
    assert entry.is_file()


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.EDQUOT])
def test_refused_writes_name_the_reason(subject, tmp_path, monkeypatch, code):
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic_files, "make_temp_file", refuse)
    ds, messages = load_recording(subject, tmp_path / "c")
    reason = os.strerror(code)
    assert messages and messages[0].startswith(
        f"{subject.name}: {reason[0].lower()}{reason[1:]} writing {subject.entry(ds)}; going on without the cache"
    )


def test_cache_folder_that_is_a_file(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    with pytest.warns(UserWarning, match=r"writing .*not-a-folder/glyphs-val-.*going on without the cache"):
        ds = Glyphs("val", cache_dir=blocker, num_characters=30, samples_per_class=6)
    assert ds.num_classes == 6


# ----------------------------------------------------------------------------- killed writers


def _temporary(entry: Path, tag: str, age: float = 0.0) -> Path:
    path = entry.parent / f".{entry.name}.{tag}{cache.TEMP_SUFFIX}"
    path.write_bytes(b"PK\x03\x04 half an entry")
    if age:
        stamp = time.time() - age
        os.utime(path, (stamp, stamp))
    return path


def test_stale_temporaries_are_removed_live_ones_kept(subject, tmp_path, monkeypatch):
    entry = subject.entry(load_quietly(subject, tmp_path / "c"))
    stale = _temporary(entry, "killed", age=HOUR)
    stale_other = _temporary(entry.with_name("other-entry.npz"), "killed", age=HOUR)
    live = _temporary(entry, "writing", age=cache.STALE_AFTER_S / 2)
    not_ours = entry.parent / f".notes.txt.x{cache.TEMP_SUFFIX}"
    not_ours.write_bytes(b"someone else's")
    os.utime(not_ours, (time.time() - HOUR,) * 2)
    forbid_building(subject, monkeypatch)
    ds = load_quietly(subject, tmp_path / "c")
    assert ds.num_classes > 0
    assert not stale.exists() and not stale_other.exists()
    assert live.exists() and not_ours.exists()


def test_a_writer_in_progress_is_left_alone(subject, tmp_path):
    """A second process loading while the first writes the same entry: both end with it whole."""
    fresh = load_quietly(subject, tmp_path / "fresh")
    entry = subject.entry(fresh)
    folder = tmp_path / "c" / entry.relative_to(tmp_path / "fresh").parent
    folder.mkdir(parents=True)
    with pytest.raises(KeyboardInterrupt):
        with atomic_writer(folder / entry.name) as first:
            first.write(b"PK\x03\x04 the first writer's half")
            (temporary,) = folder.glob(f"*{cache.TEMP_SUFFIX}")
            second = load_quietly(subject, tmp_path / "c")  # sees no entry: builds and stores its own
            assert temporary.exists()
            assert torch.equal(second.images, fresh.images)
            raise KeyboardInterrupt  # the first writer is stopped before it renames
    assert not temporary.exists()
    assert torch.equal(load_quietly(subject, tmp_path / "c").images, fresh.images)


# ----------------------------------------------------------------------------- the cache layer


def test_write_failures_that_are_not_the_file_systems_propagate(tmp_path, monkeypatch):
    def bug(file, **arrays):
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(cache.np, "savez", bug)
    with pytest.raises((OSError, RuntimeError), match="a bug in the writer"):
        cache.write_entry(tmp_path / "e.npz", {"x": np.arange(3)}, "T")

    def renamed(path, arrays):
        try:
            raise RuntimeError("a bug behind an errno")
        except RuntimeError:
            raise OSError(errno.EIO, f"cannot write {path}") from None

    monkeypatch.setattr(cache, "atomic_write_npz", renamed)
    with pytest.raises(OSError, match="cannot write"):
        cache.write_entry(tmp_path / "e.npz", {"x": np.arange(3)}, "T")
    monkeypatch.undo()

    def bare(file, **arrays):
        raise OSError("something")

    monkeypatch.setattr(cache.np, "savez", bare)
    with pytest.raises(OSError, match="something"):
        cache.write_entry(tmp_path / "e.npz", {"x": np.arange(3)}, "T")
    assert list(tmp_path.iterdir()) == []


def test_refusals_without_an_errno_are_named_by_their_message(tmp_path, monkeypatch):
    for error, reason in ((PermissionError("read-only here"), "read-only here"), (PermissionError(), "PermissionError")):
        def refuse(path, arrays, error=error):
            raise error

        monkeypatch.setattr(cache, "atomic_write_npz", refuse)
        with pytest.warns(UserWarning, match=f"^T: {reason} writing .*e.npz; going on without the cache"):
            assert cache.write_entry(tmp_path / "e.npz", {"x": np.arange(3)}, "T") is False


def test_checksum_name_is_reserved(tmp_path):
    with pytest.raises(ValueError, match="'sha256' names the checksum of a cache entry"):
        cache.write_entry(tmp_path / "e.npz", {"sha256": np.arange(3)}, "T")


def test_arrays_sha256_covers_names_dtypes_shapes_and_bytes():
    base = {"a": np.arange(6, dtype=np.int64), "s": np.array(["x", "yz"])}
    digest = cache.arrays_sha256(base)
    assert digest == cache.arrays_sha256({**base, cache.CHECKSUM: np.array("anything")})
    assert digest == cache.arrays_sha256({"s": base["s"], "a": base["a"]})
    for changed in (
        {"b": base["a"], "s": base["s"]},
        {**base, "a": base["a"].astype(np.int32)},
        {**base, "a": base["a"].reshape(2, 3)},
        {**base, "a": base["a"] + 1},
        {**base, "s": np.array(["x", "yw"])},
    ):
        assert cache.arrays_sha256(changed) != digest
    assert cache.arrays_sha256({"t": np.arange(6).reshape(2, 3).T}) == cache.arrays_sha256(
        {"t": np.ascontiguousarray(np.arange(6).reshape(2, 3).T)}
    )


def test_read_entry_checks(tmp_path):
    path = tmp_path / "e.npz"
    assert cache.read_entry(path, "T") is None  # absent: nothing to say
    assert cache.write_entry(path, {"x": np.arange(3)}, "T")
    assert cache.read_entry(path, "T", lambda a: None)["x"].tolist() == [0, 1, 2]
    with pytest.warns(UserWarning, match=r"does not match what it should hold \(too short\); rebuilding it"):
        assert cache.read_entry(path, "T", lambda a: "too short") is None
    assert not path.exists()
    cache.write_entry(path, {"x": np.arange(3)}, "T")
    with pytest.warns(UserWarning, match=r"does not match what it should hold \(it lacks the array 'y'\)"):
        assert cache.read_entry(path, "T", lambda a: a["y"]) is None
    cache.write_entry(path, {"x": np.array(["a", "b"])}, "T")
    with pytest.warns(UserWarning, match=r"its arrays are not what the check expects: TypeError: "):
        assert cache.read_entry(path, "T", lambda a: int(a["x"].sum())) is None


def test_entry_replaced_while_judged_is_left_to_its_writer(tmp_path, monkeypatch):
    path = tmp_path / "e.npz"
    path.write_bytes(b"damaged")
    real_load = cache.load_npz

    def another_process_rebuilds_meanwhile(p):
        try:
            return real_load(p)
        finally:
            cache.write_entry(path, {"x": np.arange(3)}, "other process")

    monkeypatch.setattr(cache, "load_npz", another_process_rebuilds_meanwhile)
    with pytest.warns(UserWarning, match="cannot read cache entry"):
        assert cache.read_entry(path, "T") is None
    monkeypatch.undo()
    assert cache.read_entry(path, "T")["x"].tolist() == [0, 1, 2]

    def another_process_removes_it_meanwhile(p):
        try:
            return real_load(p)
        finally:
            path.unlink()

    path.write_bytes(b"damaged")
    monkeypatch.setattr(cache, "load_npz", another_process_removes_it_meanwhile)
    with pytest.warns(UserWarning, match="cannot read cache entry"):
        assert cache.read_entry(path, "T") is None
    assert not path.exists()


def test_remove_stale_temporaries_skips_what_it_cannot_touch(tmp_path, monkeypatch):
    entry = tmp_path / "e.npz"
    stale = [_temporary(entry, tag, age=HOUR) for tag in ("a", "b")]
    assert cache.remove_stale_temporaries(tmp_path / "absent") == []
    real_unlink = Path.unlink

    def guarded(self, missing_ok=False):
        if self == stale[0]:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", guarded)
    assert cache.remove_stale_temporaries(tmp_path) == [stale[1]]
    assert stale[0].exists() and not stale[1].exists()


# ----------------------------------------------------------------------------- inputs


def test_binary_omniglot_split_file_is_named(omniglot_root, tmp_path):
    root = tmp_path / "o"
    shutil.copytree(omniglot_root, root)
    split = root / "splits" / "vinyals" / "train.txt"
    split.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary")
    with pytest.raises(ValueError) as err:
        Omniglot(root, "train", cache_dir=tmp_path / "c")
    message = str(err.value)
    assert message.startswith(f"Omniglot: split file {split} is not UTF-8 text (")
    assert message.endswith("replace it with the Vinyals split file (delete it and pass download=True)")
    assert "\n" not in message


def test_binary_miniimagenet_split_csv_is_named(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary")
    with pytest.raises(ValueError) as err:
        mi.read_split_csv(path)
    message = str(err.value)
    assert message.startswith(f"MiniImageNet: {path} is not a UTF-8 text CSV (")
    assert message.endswith("replace it with the Ravi & Larochelle train.csv") and "\n" not in message


@pytest.mark.parametrize(
    "blob",
    [
        b"not a png at all",
        ofx.png_bytes(np.zeros((105, 105), bool))[:60],
        ofx.encode_png_1bit(np.zeros((105, 105), bool), [9] * 105),
        b"\x89PNG\r\n\x1a\n but then nothing sensible",
    ],
    ids=["garbage", "truncated", "bad-filter", "png-signature-only"],
)
def test_corrupt_png_names_the_member_not_a_buffer(omniglot_root, tmp_path, blob):
    members = ofx.generate()["images_evaluation"]
    bad = sorted(members)[7]
    ofx.write_zip(tmp_path / "r" / "images_evaluation.zip", {**members, bad: blob})
    with pytest.raises(ValueError) as err:
        Omniglot(tmp_path / "r", "evaluation", cache_dir=tmp_path / "c")
    message = str(err.value)
    assert f"corrupt image: member '{bad}' of {tmp_path / 'r' / 'images_evaluation.zip'}" in message
    assert "BytesIO" not in message and "object at 0x" not in message and "\n" not in message
    assert message.endswith("replace the archive (delete it and pass download=True)")


def test_unidentifiable_image_says_it_is_not_a_png():
    with pytest.raises(ValueError, match=r"^Omniglot: corrupt image: member 'x\.png' of /a\.zip could not be decoded \(not a PNG image\)"):
        om._decode_images([b"GIF89a"], ["member 'x.png' of /a.zip"], 28)


def test_missing_character_in_extracted_folders_names_the_folders(omniglot_root, tmp_path):
    root = tmp_path / "f"
    for members in ofx.generate().values():
        ofx.write_folder(root, members)
    splits = ofx.write_splits(tmp_path / "s", {"test": ["Gamma/character03/rot000", "Klingon/character07/rot090"]})
    with pytest.raises(ValueError) as err:
        Omniglot(root, "test", splits_dir=splits, cache_dir=tmp_path / "c")
    message = str(err.value)
    assert message == (
        f"Omniglot: {splits / 'test.txt'} names Klingon/character07/rot090, a character in neither "
        f"the folder images_background/Klingon/character07 nor the folder "
        f"images_evaluation/Klingon/character07 under {root}; check that the split file and the "
        f"image folders belong together"
    )
