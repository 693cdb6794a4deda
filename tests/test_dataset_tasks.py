"""Task files over tieredImageNet, CIFAR-FS, FC100, CUB, torchmeta's miniImageNet and image folders
(generated look-alikes in the real layouts), and the benchmark task files that name them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewshot_metaopt.cli import main
from fewshot_metaopt.runs.data_sources import image_shape, sha256_of
from fewshot_metaopt.runs.task_config import load_task
from cifar100_fixtures import make_batches, write_archive
from cub_fixtures import make_images, write_folder
from test_cli import error_line, write_task
from test_miniimagenet_hdf5 import write_torchmeta
from miniimagenet_fixtures import make_data as make_mini
from tiered_fixtures import make_data as make_tiered, write_pickles as write_tiered

TASKS = Path(__file__).resolve().parents[1] / "tasks"
TASK = """
name = "{name}"
[data]
dataset = "{dataset}"
{data}
[episodes]
ways = 2
shots = 1
queries = 1
[model]
channels = 2
[learner]
algorithm = "fomaml"
inner_lr = 0.3
[train]
iterations = 1
meta_batch = 1
log_every = 1
[validation]
every = 1
episodes = 1
[evaluation]
episodes = 2
"""


def tiered(root: Path) -> Path:
    return write_tiered(root, make_tiered())


def cifar(root: Path) -> Path:
    return write_archive(root, make_batches()).parent


def cub(root: Path) -> Path:
    return write_folder(root, make_images())


def mini_hdf5(root: Path) -> Path:
    return write_torchmeta(root, make_mini())


def image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c in range(6):
        (root / f"kind_{c}").mkdir(parents=True)
        for j in range(2):
            Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(root / f"kind_{c}" / f"{j}.png")
    return root


ROLES = ("train", "val", "test")
CACHE = 'cache_dir = "cache"'
# dataset -> (writer, extra [data] lines, the split files results.json checksums: role -> file names)
CASES = {
    "tieredimagenet": (tiered, f"image_size = 16\n{CACHE}", {r: [f"{r}_labels.pkl"] for r in ROLES}),
    "cifar_fs": (cifar, CACHE, {r: [f"{r}.txt"] for r in ROLES}),
    "fc100": (cifar, f"image_size = 16\n{CACHE}", {r: [f"{r}.txt"] for r in ROLES}),
    "cub": (cub, f"image_size = 16\n{CACHE}", {r: [f"{r}.txt"] for r in ROLES}),
    "miniimagenet_hdf5": (mini_hdf5, "", {r: [f"{r}_labels.json"] for r in ROLES}),
    "image_folder": (image_folder, f"image_size = 16\nchannels = 1\nseed = 2\nsplit_fractions = [2, 2, 2]\n{CACHE}",
                     {r: [] for r in ROLES}),
}


@pytest.mark.parametrize("dataset", list(CASES))
def test_each_data_set_trains_from_a_task_file_and_checksums_its_split_files(tmp_path, dataset):
    writer, extra, names = CASES[dataset]
    root = writer(tmp_path / "data")
    task = write_task(tmp_path, TASK.format(name="t", dataset=dataset, data=extra))
    assert main(["train", str(task), "--data-root", str(root), "--out", str(tmp_path / "run")]) == 0
    found = json.loads((tmp_path / "run" / "results.json").read_text())["split_files"]
    for role, files in names.items():
        assert [Path(p).name for p in found[role]] == files
        for path, digest in found[role].items():
            assert digest == sha256_of(Path(path))


def test_image_folder_class_list_files_are_checksummed_and_must_not_share_a_class(tmp_path, capsys):
    root = image_folder(tmp_path / "data")
    splits = tmp_path / "splits"
    splits.mkdir()
    for role, classes in (("train", "kind_0\nkind_1\nkind_2"), ("val", "kind_3\nkind_4"), ("test", "kind_5\nkind_2")):
        (splits / f"{role}.txt").write_text(classes + "\n")
    text = TASK.format(name="mine", dataset="image_folder",
                       data=f'splits_dir = "{splits}"\nimage_size = 16\ncache_dir = "cache"')
    task = load_task(write_task(tmp_path, text), data_root=str(root))
    assert image_shape(task.data) == (3, 16, 16)
    assert main(["train", str(write_task(tmp_path, text)), "--data-root", str(root), "--out",
                 str(tmp_path / "run")]) == 1
    assert "the class 'kind_2' is listed in both" in error_line(capsys)
    (splits / "test.txt").write_text("kind_5\nkind_1\n".replace("kind_1", "kind_4").replace("kind_4\n", "kind_0\n"))
    (splits / "train.txt").write_text("kind_1\nkind_2\n")
    assert main(["train", str(write_task(tmp_path, text)), "--data-root", str(root), "--out",
                 str(tmp_path / "run")]) == 0
    found = json.loads((tmp_path / "run" / "results.json").read_text())["split_files"]
    assert found["test"] == {str(splits / "test.txt"): sha256_of(splits / "test.txt")}


@pytest.mark.parametrize("data, message", [
    ('channels = 1', "data.channels"),
    ('splits_dir = "x"', "data.splits_dir"),
])
def test_keys_a_data_set_does_not_read_are_refused(tmp_path, capsys, data, message):
    task = write_task(tmp_path, TASK.format(name="t", dataset="cifar_fs", data=data))
    assert main(["train", str(task), "--data-root", str(tmp_path)]) == 1
    line = error_line(capsys)
    assert f"{message} in {task}" in line and "does not apply to data.dataset 'cifar_fs'" in line


@pytest.mark.parametrize("data, message", [
    ("channels = 2", "data.channels must be 1 (grayscale) or 3 (RGB), got 2"),
    ("split_fractions = [0.5, 0.5]", "data.split_fractions must be three non-negative numbers"),
])
def test_bad_image_folder_values_are_one_line(tmp_path, capsys, data, message):
    task = write_task(tmp_path, TASK.format(name="t", dataset="image_folder", data=data))
    assert main(["train", str(task), "--data-root", str(tmp_path)]) == 1
    assert message in error_line(capsys)


def test_missing_data_says_where_to_get_it(tmp_path, capsys):
    task = write_task(tmp_path, TASK.format(name="t", dataset="tieredimagenet", data=""))
    assert main(["train", str(task), "--data-root", str(tmp_path)]) == 1
    line = error_line(capsys)
    assert "data.train_split 'train' of tieredimagenet: tieredImageNet: no train_images_png.pkl" in line
    assert "cannot be downloaded automatically" in line
    task = write_task(tmp_path, TASK.format(name="t", dataset="cub", data=""))
    assert main(["train", str(task)]) == 1
    assert "data.dataset 'cub' needs its folder: pass --data-root DIR" in error_line(capsys)


@pytest.mark.parametrize("name, dataset, shots, size, channels, batch, eval_steps", [
    ("tieredimagenet-5w1s", "tieredimagenet", 1, 84, 32, 4, 10),
    ("tieredimagenet-5w5s", "tieredimagenet", 5, 84, 32, 2, 10),
    ("cifar_fs-5w1s", "cifar_fs", 1, 32, 32, 4, 10),
    ("cifar_fs-5w5s", "cifar_fs", 5, 32, 32, 2, 10),
    ("fc100-5w1s", "fc100", 1, 32, 32, 4, 10),
    ("fc100-5w5s", "fc100", 5, 32, 32, 2, 10),
    ("cub-5w1s", "cub", 1, 84, 64, 4, 5),
    ("cub-5w5s", "cub", 5, 84, 64, 4, 5),
])
def test_benchmark_task_files_carry_their_papers_settings(name, dataset, shots, size, channels, batch, eval_steps):
    task = load_task(TASKS / f"{name}.toml")
    assert task.name == name and task.data.dataset == dataset and task.data.root is None
    assert (task.ways, task.episodes.shots, task.episodes.queries, task.evaluation.episodes) == (5, shots, 15, 600)
    assert (task.model.name, task.model.channels, task.data.image_size) == ("conv4", channels, size)
    assert (task.learner.algorithm, task.learner.inner_lr, task.learner.inner_steps) == ("maml", 0.01, 5)
    assert (task.learner.eval_steps, task.train.meta_batch, task.learner.meta_lr) == (eval_steps, batch, 0.001)
    header = " ".join((TASKS / f"{name}.toml").read_text().split("\nname = ")[0].replace("#", " ").split())
    assert "not re-checked here" in header and "--data-root DIR" in header
