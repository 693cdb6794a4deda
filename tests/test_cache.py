from pathlib import Path

import numpy as np

from fewshot_metaopt.datasets import cache


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FEWSHOT_METAOPT_CACHE", str(tmp_path / "a"))
    assert cache.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("FEWSHOT_METAOPT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_cache_dir() == tmp_path / "xdg" / "fewshot_metaopt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.default_cache_dir() == Path.home() / ".cache" / "fewshot_metaopt"
    assert cache.resolve_cache_dir(tmp_path) == tmp_path


def test_digests_and_keys(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_bytes(b"abc")
    assert cache.file_digest(tmp_path / "d" / "x.txt") == "900150983cd24fb0d6963f7d28e17f72"
    before = cache.tree_digest(tmp_path / "d")
    (tmp_path / "d" / "x.txt").write_bytes(b"abd")
    assert cache.tree_digest(tmp_path / "d") != before
    assert cache.key_of(["a", "b"]) != cache.key_of(["ab"])
    assert len(cache.key_of(["a"])) == 16


def test_npz_round_trip_without_pickles(tmp_path):
    path = cache.atomic_write_npz(tmp_path / "sub" / "e.npz", {"x": np.arange(3), "n": np.array(["a", "bc"])})
    back = cache.load_npz(path)
    assert back["x"].tolist() == [0, 1, 2] and back["n"].tolist() == ["a", "bc"]


def test_entries_carry_the_sha256_of_their_arrays(tmp_path):
    path = tmp_path / "e.npz"
    arrays = {"x": np.arange(4, dtype=np.uint8), "n": np.array(["a", "bc"])}
    assert cache.write_entry(path, arrays, "T")
    stored = cache.load_npz(path)
    assert str(stored.pop(cache.CHECKSUM)) == cache.arrays_sha256(arrays)
    back = cache.read_entry(path, "T")
    assert back.keys() == arrays.keys() and all(np.array_equal(back[k], arrays[k]) for k in arrays)
    built = []
    again = cache.cached(path, lambda: built.append(1) or arrays, "T")
    assert built == [] and again["x"].tolist() == [0, 1, 2, 3]
