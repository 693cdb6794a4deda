"""Episode manifest files: fixed episodes written as JSON and rebuilt into the same tensors, and a
manifest that does not fit the data set refused in one line naming what does not fit."""

import json

import pytest
import torch

from fewshot_metaopt import TaskDistributionSampler
from fewshot_metaopt.datasets import ClassImageDataset, Glyphs, Sinusoid, load_manifest, save_manifest
from fewshot_metaopt.datasets.episode_manifest import FORMAT, pixels_digest
from fewshot_metaopt.episodes import AugmentedFamily, ClassRotation

FIELDS = ("support_x", "support_y", "query_x", "query_y", "classes")


def dataset(seed=0, sizes=(8, 8, 9, 8, 10, 8), size=6, mean=None, std=None):
    pixels = torch.randint(0, 256, (sum(sizes), 3, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed))
    return ClassImageDataset(pixels, list(sizes), [f"n{i:04d}" for i in range(len(sizes))], name="Pictures",
                             split="test", mean=mean, std=std)


def same(a, b):
    return all(torch.equal(getattr(a, name), getattr(b, name)) for name in FIELDS)


def written(tmp_path, augment=None, n=6, source=None, **sampler):
    sampler = {"ways": 3, "shots": 2, "queries": 3, "seed": 5, **sampler}
    episodes = TaskDistributionSampler(source or dataset(), augment=augment, **sampler).fixed(n)
    return episodes, save_manifest(episodes, tmp_path / "episodes.json")


def edited(path, change):
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("augment", [None, "crop_flip_jitter", "class_rotation"])
def test_round_trip_rebuilds_the_same_tensors(tmp_path, augment):
    episodes, path = written(tmp_path, augment)
    loaded = load_manifest(path, dataset())  # another copy of the same data
    assert len(loaded) == 6 and (loaded.ways, loaded.shots, loaded.queries) == (3, 2, 3)
    assert all(same(a, b) for a, b in zip(episodes, loaded))
    assert all(same(a, b) for a, b in zip(episodes[2:4], loaded[2:4])) and loaded[2:4].seeds == episodes.seeds[2:4]
    assert [p.name for p in tmp_path.iterdir()] == ["episodes.json"]  # written whole, nothing left beside it


def test_round_trip_on_glyphs_with_standardised_pixels(tmp_path):
    glyphs = Glyphs("test", num_characters=40, samples_per_class=12)
    episodes, path = written(tmp_path, source=glyphs, ways=5, shots=1, queries=5, n=4)
    assert all(same(a, b) for a, b in zip(episodes, load_manifest(path, Glyphs("test", num_characters=40,
                                                                                 samples_per_class=12))))
    standardised = dataset(mean=[0.5] * 3, std=[0.2] * 3)
    episodes, path = written(tmp_path, source=standardised)
    assert all(same(a, b) for a, b in zip(episodes, load_manifest(path, standardised)))


def test_the_file_names_classes_images_and_the_sampler(tmp_path):
    episodes, path = written(tmp_path)
    doc = json.loads(path.read_text())
    assert doc["format"] == FORMAT and doc["version"] == 1
    assert (doc["dataset"], doc["split"], doc["image_shape"]) == ("Pictures", "test", [3, 6, 6])
    assert doc["sampler"] == {"ways": 3, "shots": 2, "queries": 3, "seed": 5} and doc["augmentation"] is None
    data = dataset()
    for record, episode, seed in zip(doc["episodes"], episodes, episodes.seeds):
        assert record["seed"] == seed and "augment_seed" not in record
        assert record["classes"] == [data.class_names[c] for c in episode.classes]
        assert len(record["support"]) == 3 and all(len(ids) == 2 for ids in record["support"])
        assert all(len(ids) == 3 for ids in record["query"])
        # The ids are positions within each class, in storage order: the rows of the episode.
        first_class = data.class_names.index(record["classes"][0])
        row = sum(data.class_sizes[:first_class].tolist()) + record["support"][0][0]
        assert torch.equal(episode.support_x[0], data.normalise(data.images[row:row + 1])[0])
        assert record["pixels_sha256"] == pixels_digest(data.pixels(data.draw(3, 2, 3, torch.Generator().manual_seed(seed))))
    assert path.read_text().count("\n") == len(doc) + 3 + 6  # a key per line, an episode per line


def test_augmented_manifest_records_the_augmentation_and_seeds(tmp_path):
    _, path = written(tmp_path, ClassRotation(quarter_turns=(1, 3)))
    doc = json.loads(path.read_text())
    assert doc["augmentation"] == {"name": "class_rotation", "settings": {"quarter_turns": [1, 3]}}
    assert all(isinstance(record["augment_seed"], int) for record in doc["episodes"])
    assert load_manifest(path, dataset()).source.augmentation == ClassRotation(quarter_turns=(1, 3))


@pytest.mark.parametrize("change, message", [
    (lambda d: d["episodes"][2]["classes"].__setitem__(1, "n9999"),
     "episode 2 names class 'n9999', which Pictures split 'test' lacks"),
    (lambda d: d["episodes"][1]["query"][0].__setitem__(0, 10),
     r"episode 1 names image 10 of class '.*', which has \d+ images \(ids 0 to \d\) in Pictures split 'test'"),
    (lambda d: d["episodes"][0]["classes"].__setitem__(1, d["episodes"][0]["classes"][0]),
     "episode 0 names class '.*' twice"),
    (lambda d: d["episodes"][0]["query"][0].__setitem__(0, d["episodes"][0]["support"][0][0]),
     "episode 0 names an image of class '.*' twice"),
    (lambda d: d["episodes"][0]["support"].pop(), r"episode 0's 'support' must list 3 classes of 2 image ids each"),
    (lambda d: d["episodes"][0]["query"][0].__setitem__(0, -1), "episode 0's 'query' holds -1, which is not an image id"),
    (lambda d: d["episodes"][0]["query"][0].__setitem__(0, True), "holds True, which is not an image id"),
    (lambda d: d["episodes"][0]["classes"].pop(), "episode 0's 'classes' must name 3 classes"),
    (lambda d: d["episodes"][3].pop("pixels_sha256"), "episode 3 lacks 'pixels_sha256'"),
    (lambda d: d["episodes"].__setitem__(0, []), "episode 0 must be a JSON object"),
    (lambda d: d["sampler"].__setitem__("shots", 0), "the sampler's 'shots' must be at least 1, got 0"),
    (lambda d: d["sampler"].__setitem__("ways", "3"), "the sampler's 'ways' must be int, got '3'"),
    (lambda d: d.__setitem__("image_shape", [3, 8, 8]),
     r"the manifest's images are \(3, 8, 8\), those of Pictures split 'test' are \(3, 6, 6\); load the data set "
     "with the image size"),
    (lambda d: d.__setitem__("version", 2), "manifest version 2 is newer than this fewshot-metaopt reads"),
    (lambda d: d.__setitem__("format", "something else"), "not an episode manifest"),
    (lambda d: d.pop("episodes"), "the manifest lacks 'episodes'"),
    (lambda d: d.__setitem__("augmentation", {"name": "mixup", "settings": {}}),
     "unknown augmentation 'mixup'; this fewshot-metaopt has crop_flip_jitter"),
    (lambda d: d.__setitem__("augmentation", {"name": "class_rotation", "settings": {"turns": [1]}}),
     "its augmentation 'class_rotation' cannot be rebuilt"),
    (lambda d: d.__setitem__("augmentation", "class_rotation"), "'augmentation' must be null or a JSON object"),
    (lambda d: d.__setitem__("augmentation", {"name": "class_rotation", "settings": {}}), "episode 0 lacks 'augment_seed'"),
])
def test_a_manifest_that_does_not_fit_is_one_line_naming_what(tmp_path, change, message):
    _, path = written(tmp_path)
    with pytest.raises(ValueError, match=message) as error:
        load_manifest(edited(path, change), dataset())
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


def test_other_pixels_under_the_same_names_are_refused_when_read(tmp_path):
    _, path = written(tmp_path)
    loaded = load_manifest(path, dataset(seed=1))
    with pytest.raises(ValueError, match="the images of episode 4 differ from those the manifest was written from"):
        loaded[-2]


def test_what_is_not_a_manifest_or_not_an_image_data_set_is_refused(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not an episode manifest: not valid JSON"):
        load_manifest(tmp_path / "broken.json", dataset())
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not an episode manifest"):
        load_manifest(tmp_path / "list.json", dataset())
    with pytest.raises(FileNotFoundError, match="episode manifest .*absent.json does not exist"):
        load_manifest(tmp_path / "absent.json", dataset())
    with pytest.raises(TypeError, match="save_manifest needs an image data set .* which Sinusoid episodes do not have"):
        save_manifest(TaskDistributionSampler(Sinusoid()).fixed(2), tmp_path / "x.json")
    sampler = TaskDistributionSampler(dataset(), ways=3, queries=2)
    with pytest.raises(TypeError, match="save_manifest needs fixed episodes .*got list"):
        save_manifest(list(sampler.fixed(2)), tmp_path / "x.json")
    _, path = written(tmp_path)
    with pytest.raises(ValueError, match="load_manifest needs the data set itself"):
        load_manifest(path, AugmentedFamily(dataset(), ClassRotation()))
    with pytest.raises(TypeError, match="load_manifest needs an image data set"):
        load_manifest(path, Sinusoid())


# ---------------------------------------------------------------------------- the command line

TASK = """
name = "tiny"
seed = 3
[data]
dataset = "glyphs"
num_characters = 40
samples_per_class = 10
image_size = 16
augment = "class_rotation"
[episodes]
ways = 3
shots = 1
queries = 2
eval_queries = 3
[train]
iterations = 2
[validation]
episodes = 2
[evaluation]
episodes = 4
"""


def test_export_writes_the_episodes_a_run_is_tested_on(tmp_path, capsys):
    from fewshot_metaopt.cli import main
    from fewshot_metaopt.runs.components import manifest
    from fewshot_metaopt.runs.data_sources import open_split
    from fewshot_metaopt.runs.run_dir import RunDir
    from fewshot_metaopt.runs.task_config import load_task

    (tmp_path / "tiny.toml").write_text(TASK)
    task = load_task(tmp_path / "tiny.toml")
    run = RunDir.create(tmp_path / "run", task, ["fewshot-metaopt", "train"])
    run.release()
    assert main(["episodes", "export", str(run.path), "--out", str(tmp_path / "run.json")]) == 0
    assert "tiny: 4 test episodes (Glyphs split 'test', 3-way 1-shot, 3 queries per class) written to" in \
        capsys.readouterr().out
    test = manifest(task, open_split(task.data, "test"), "test", 4)
    loaded = load_manifest(tmp_path / "run.json", open_split(task.data, "test"))
    assert loaded.source is not test.source and all(same(a, b) for a, b in zip(test, loaded))
    assert json.loads((tmp_path / "run.json").read_text())["augmentation"] is None  # training episodes only

    assert main(["episodes", "export", str(tmp_path / "tiny.toml"), "--out", str(tmp_path / "task.json")]) == 0
    assert (tmp_path / "task.json").read_text() == (tmp_path / "run.json").read_text()
    assert main(["episodes", "export", str(tmp_path / "tiny.toml"), "--out", str(tmp_path / "val.json"),
                 "--split", "val", "--set", "episodes.eval_queries=2"]) == 0
    doc = json.loads((tmp_path / "val.json").read_text())
    assert len(doc["episodes"]) == 2 and doc["split"] == "val" and doc["sampler"]["queries"] == 2
    assert main(["episodes", "export", str(tmp_path / "tiny.toml"), "--out", str(tmp_path / "train.json"),
                 "--split", "train", "--episodes", "3"]) == 0
    assert json.loads((tmp_path / "train.json").read_text())["augmentation"]["name"] == "class_rotation"


def test_export_refusals_are_one_line(tmp_path, capsys):
    from fewshot_metaopt.cli import main

    (tmp_path / "tiny.toml").write_text(TASK)
    assert main(["episodes", "export", "sinusoid-5shot", "--out", str(tmp_path / "m.json")]) == 1
    assert "regression family: its episodes have no classes or images" in capsys.readouterr().err
    run = tmp_path / "not-a-run"
    run.mkdir()
    assert main(["episodes", "export", str(run), "--out", str(tmp_path / "m.json"), "--set", "seed=1"]) == 1
    assert "--set changes a task file, not a run" in capsys.readouterr().err
    assert main(["episodes", "export", str(tmp_path / "tiny.toml"), "--out", str(tmp_path / "no" / "m.json")]) == 1
    assert f"cannot write {tmp_path / 'no' / 'm.json'}" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()
