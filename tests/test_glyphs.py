import numpy as np
import pytest
import torch

from fewshot_metaopt import TaskDistributionSampler
from fewshot_metaopt.datasets import glyphs as glyphs_module
from fewshot_metaopt.datasets.glyphs import Glyphs, render_characters, split_characters

SMALL = dict(num_characters=30, samples_per_class=6)


def test_splits_are_disjoint_and_cover_every_character():
    parts = split_characters(100, seed=0)
    train, val, test = (set(parts[k]) for k in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (60, 20, 20)
    assert not train & val and not train & test and not val & test
    assert train | val | test == set(range(100))
    assert set(parts["trainval"]) == train | val
    assert split_characters(100, seed=1)["test"] != parts["test"]


def test_shapes_dtype_and_names(tmp_path):
    ds = Glyphs("val", cache_dir=tmp_path, **SMALL)
    assert ds.num_classes == 6 and ds.samples_per_class == 6
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (36, 1, 28, 28)
    assert all(name.startswith("glyph") for name in ds.class_names)
    ep = TaskDistributionSampler(ds, ways=5, shots=1, queries=5, seed=0).sample()
    assert ep.support_x.shape == (5, 1, 28, 28) and ep.query_x.shape == (25, 1, 28, 28)
    assert 0.0 <= float(ep.support_x.min()) and float(ep.support_x.max()) <= 1.0


def test_every_image_has_ink_and_drawers_differ():
    pixels = render_characters([0, 1, 2], seed=0, samples_per_class=4, image_size=28)
    assert (pixels.reshape(12, -1).max(axis=1) > 200).all()
    assert not np.array_equal(pixels[0, 0], pixels[0, 1])


def test_drawers_of_a_character_resemble_each_other_more_than_other_characters():
    pixels = render_characters(list(range(10)), seed=0, samples_per_class=6, image_size=28)
    flat = pixels.reshape(10, 6, -1).astype(np.float64) / 255
    mean = flat.mean(axis=1)
    within = np.mean([np.abs(flat[c] - mean[c]).mean() for c in range(10)])
    between = np.mean([np.abs(flat[c] - mean[(c + 1) % 10]).mean() for c in range(10)])
    assert within < 0.8 * between


def test_deterministic_from_seed_and_character_index():
    a = render_characters([5, 7], seed=3, samples_per_class=3, image_size=20)
    b = render_characters([7], seed=3, samples_per_class=3, image_size=20)
    assert np.array_equal(a[1], b[0])
    assert not np.array_equal(a, render_characters([5, 7], seed=4, samples_per_class=3, image_size=20))


def test_cache_is_written_once_and_reused(tmp_path, monkeypatch):
    first = Glyphs("test", cache_dir=tmp_path, **SMALL)
    assert first.cache_path.exists() and first.cache_path.parent == tmp_path
    assert not list(tmp_path.glob("*.partial"))

    def no_rendering(*args, **kwargs):
        raise AssertionError("rendered again instead of reading the cache")

    monkeypatch.setattr(glyphs_module, "render_characters", no_rendering)
    second = Glyphs("test", cache_dir=tmp_path, **SMALL)
    assert torch.equal(first.images, second.images)
    with pytest.raises(AssertionError, match="rendered again"):
        Glyphs("test", cache_dir=tmp_path, seed=1, **SMALL)


def test_failed_build_leaves_no_cache(tmp_path, monkeypatch):
    def broken_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        Glyphs("val", cache_dir=tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_default_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_METAOPT_CACHE", str(tmp_path / "env-cache"))
    ds = Glyphs("val", **SMALL)
    assert ds.cache_path.parent == tmp_path / "env-cache"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"split": "validation"}, "unknown Glyphs split 'validation'; choose one of train, val, test"),
        ({"num_characters": 3}, "num_characters >= 5"),
        ({"samples_per_class": 0}, "samples_per_class >= 1"),
        ({"image_size": 4}, "image_size >= 8"),
    ],
)
def test_bad_arguments(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        Glyphs(**({"cache_dir": tmp_path} | kwargs))
