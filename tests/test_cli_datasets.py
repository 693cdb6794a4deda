"""Task files over Omniglot and miniImageNet folders (generated look-alikes in the real layouts)."""

import json
import runpy
import sys

import pytest

from fewshot_metaopt.cli import main
from fewshot_metaopt.runs.data_sources import sha256_of, split_files
from fewshot_metaopt.datasets import Sinusoid
from miniimagenet_fixtures import make_data, write_pickles, write_ravi
from omniglot_fixtures import make_omniglot
from test_cli import error_line, write_task

IMAGE_TASK = """
name = "{name}"
[data]
dataset = "{dataset}"
{data}
[episodes]
ways = 3
shots = 1
queries = 2
[model]
channels = 4
[learner]
algorithm = "fomaml"
inner_lr = 0.3
[train]
iterations = 2
meta_batch = 2
log_every = 1
[validation]
every = 2
episodes = 2
[evaluation]
episodes = 3
"""


def results(run):
    return json.loads((run / "results.json").read_text())


def test_omniglot_vinyals_splits_train_and_checksum_their_split_files(tmp_path, capsys):
    root = tmp_path / "omniglot"
    make_omniglot(root)
    task = write_task(tmp_path, IMAGE_TASK.format(name="omni", dataset="omniglot", data=""))
    assert main(["train", str(task), "--data-root", str(root), "--out", str(tmp_path / "run")]) == 0
    found = results(tmp_path / "run")["split_files"]
    for role, split in (("train", "train"), ("val", "val"), ("test", "test")):
        path = root / "splits" / "vinyals" / f"{split}.txt"
        assert found[role] == {str(path): sha256_of(path)}
    capsys.readouterr()
    # The run remembers where its data was; --data-root moves it.
    moved = tmp_path / "moved"
    root.rename(moved)
    assert main(["evaluate", str(tmp_path / "run"), "--episodes", "2"]) == 1
    assert "does not exist" in error_line(capsys)
    assert main(["evaluate", str(tmp_path / "run"), "--episodes", "2", "--data-root", str(moved)]) == 0


def test_omniglot_lake_splits_have_no_split_file(tmp_path, capsys):
    root = tmp_path / "omniglot"
    make_omniglot(root, splits=False)
    # With everything present, download=true fetches nothing.
    splits = 'train_split = "background"\nval_split = "evaluation"\ntest_split = "evaluation"\ndownload = true'
    task = write_task(tmp_path, IMAGE_TASK.format(name="lake", dataset="omniglot", data=splits))
    assert main(["train", str(task), "--data-root", str(root), "--out", str(tmp_path / "run")]) == 0
    assert results(tmp_path / "run")["split_files"] == {"train": {}, "val": {}, "test": {}}


def test_a_split_the_data_set_does_not_have_is_one_line(tmp_path, capsys):
    root = tmp_path / "omniglot"
    make_omniglot(root)
    task = write_task(tmp_path, IMAGE_TASK.format(name="omni", dataset="omniglot", data='val_split = "validation"'))
    assert main(["train", str(task), "--data-root", str(root)]) == 1
    assert "data.val_split 'validation' of omniglot: Omniglot: unknown split 'validation'" in error_line(capsys)


@pytest.mark.parametrize("layout", ["ravi", "pickle"])
def test_miniimagenet_trains_from_either_layout(tmp_path, capsys, layout):
    root = tmp_path / "mini"
    (write_ravi if layout == "ravi" else write_pickles)(root, make_data())
    task = write_task(tmp_path, IMAGE_TASK.format(name="mini", dataset="miniimagenet", data=""))
    assert main(["train", str(task), "--data-root", str(root), "--out", str(tmp_path / "run")]) == 0
    found = results(tmp_path / "run")["split_files"]
    names = {"ravi": "{}.csv", "pickle": "mini-imagenet-cache-{}.pkl"}[layout]
    for role in ("train", "val", "test"):
        path = root / names.format(role)
        assert found[role] == {str(path): sha256_of(path)}


def test_a_regression_family_has_no_split_files():
    assert split_files(Sinusoid()) == []


def test_python_dash_m_runs_the_command_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["fewshot-metaopt", "--version"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_module("fewshot_metaopt.cli", run_name="__main__")
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("fewshot-metaopt ")
