"""What a run stores: checkpoints (weights only), atomic files, RNG states, the metrics log, run directories."""

import json
import os
import random
import subprocess

import numpy as np
import pytest
import torch

from fewshot_metaopt.runs import provenance, rng_state
from fewshot_metaopt.atomic_files import atomic_write_text, atomic_writer, remove_leftovers
from fewshot_metaopt.runs.checkpoint import FORMAT, REQUIRED, VERSION, load_checkpoint, save_checkpoint
from fewshot_metaopt.runs.errors import RunError
from fewshot_metaopt.runs.metrics_log import MetricsLog, read_metrics
from fewshot_metaopt.runs.run_dir import RunDir
from fewshot_metaopt.runs.task_config import load_task

# The smallest payload of the checkpoint's structure (runs.checkpoint.SCHEMA).
PAYLOAD = {key: {} for key in REQUIRED} | {
    "iteration": 7,
    "task": {"data": {}},
    "learner": {"w": torch.arange(3.0), "model": {}, "rule": {}, "meta_optimizer": {}, "iteration": 7},
    "samplers": {"train": {}},
    "progress": {"iteration": 7, "elapsed_s": 1.5, "best_value": None, "best_iteration": None,
                 "metrics_bytes": 0, "window": {}},
}


class RunsCode:
    """Pickling this would call os.system when the file is loaded without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_round_trips(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, PAYLOAD)
    loaded = load_checkpoint(path)
    assert loaded["format"] == FORMAT and loaded["version"] == VERSION and loaded["iteration"] == 7
    assert torch.equal(loaded["learner"]["w"], torch.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({**PAYLOAD, "format": FORMAT, "version": VERSION, "task": RunsCode(marker)}, path)
    with pytest.raises(RunError, match=r"holds objects other than tensors .* could run code \(.*GLOBAL .*system"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("cut", [0, 10, 200, -40])
def test_a_truncated_checkpoint_is_a_clear_error(tmp_path, cut):
    whole = tmp_path / "whole.pt"
    save_checkpoint(whole, PAYLOAD)
    data = whole.read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data[:cut])
    with pytest.raises(RunError, match=r"broken\.pt is truncated or corrupt and cannot be read \(\w+"):
        load_checkpoint(broken)


def test_foreign_and_incomplete_files_are_named(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(RunError, match="foreign.pt is not a fewshot-metaopt checkpoint"):
        load_checkpoint(foreign)
    torch.save([1, 2, 3], foreign)
    with pytest.raises(RunError, match="is not a fewshot-metaopt checkpoint"):
        load_checkpoint(foreign)
    future = tmp_path / "future.pt"
    torch.save({"format": FORMAT, "version": VERSION + 1}, future)
    with pytest.raises(RunError, match=f"is a version {VERSION + 1} checkpoint; this fewshot-metaopt reads version {VERSION}"):
        load_checkpoint(future)
    partial = tmp_path / "partial.pt"
    torch.save({"format": FORMAT, "version": VERSION, "iteration": 1}, partial)
    with pytest.raises(RunError, match="incomplete checkpoint: it lacks task, learner"):
        load_checkpoint(partial)
    with pytest.raises(RunError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(RunError, match="is not a file"):
        load_checkpoint(tmp_path)


def test_an_atomic_write_that_fails_leaves_the_old_file(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_writer(path) as f:
            f.write(b"half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_leftover_temporaries_are_removed(tmp_path):
    (tmp_path / ".last.pt.x1.partial").write_bytes(b"")
    (tmp_path / "last.pt").write_bytes(b"keep")
    assert [p.name for p in remove_leftovers(tmp_path)] == [".last.pt.x1.partial"]
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    rng_state.seed_everything(11)
    random.random(), np.random.rand(), np.random.randn(), torch.rand(2)
    save_checkpoint(tmp_path / "c.pt", {**PAYLOAD, "rng": rng_state.capture()})
    expected = (random.random(), np.random.rand(), np.random.randn(), torch.rand(2))
    rng_state.seed_everything(12)
    rng_state.restore(load_checkpoint(tmp_path / "c.pt")["rng"])
    again = (random.random(), np.random.rand(), np.random.randn(), torch.rand(2))
    assert expected[:3] == again[:3] and torch.equal(expected[3], again[3])


def test_the_metrics_log_is_cut_back_to_what_a_checkpoint_saw(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    log.append({"iteration": 1, "loss": 1.5})
    seen = log.sync()
    log.append({"iteration": 2, "loss": 1.25})
    log.close()
    with open(path, "a") as f:
        f.write('{"iteration": 3, "lo')  # a line a crash cut short
    assert read_metrics(path) == [{"iteration": 1, "loss": 1.5}, {"iteration": 2, "loss": 1.25}]
    MetricsLog.cut_back(path, seen)
    assert read_metrics(path) == [{"iteration": 1, "loss": 1.5}]
    with pytest.raises(RunError, match=r"is shorter \(\d+ bytes\) than its checkpoint says it was \(999\)"):
        MetricsLog.cut_back(path, 999)
    path.write_text("not json\n")
    with pytest.raises(RunError, match="metrics.jsonl line 1 is not JSON"):
        read_metrics(path)


def test_a_run_directory_appears_whole(tmp_path):
    task = load_task(None)
    run = RunDir.create(tmp_path / "runs" / "a", task, ["fewshot-metaopt", "train"])
    assert sorted(p.name for p in run.path.iterdir()) == ["checkpoints", "config.toml", "plots", "run.json"]
    assert [p.name for p in run.path.parent.iterdir()] == ["a"]  # no staging folder left behind
    assert run.task().to_dict() == task.to_dict()
    run.record_resume(["fewshot-metaopt", "train", "--resume", "a"])
    info = json.loads(run.info.read_text())
    assert info["command"] == ["fewshot-metaopt", "train"] and info["resumed"][0]["command"][-1] == "a"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert RunDir.create(empty, task, []).config.is_file()
    with pytest.raises(RunError, match="already exists"):
        RunDir.create(run.path, task, [])


def test_a_failure_while_assembling_leaves_no_directory(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("fewshot_metaopt.runs.run_dir.write_json", broken)
    with pytest.raises(OSError, match="disk full"):
        RunDir.create(tmp_path / "a", load_task(None), [])
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_run_json_is_named(tmp_path):
    run = RunDir.create(tmp_path / "a", load_task(None), [])
    run.info.write_text("{")
    with pytest.raises(RunError, match="run.json is not valid JSON"):
        RunDir.open(run.path).read_info()


def test_provenance_names_the_commit_of_a_checkout_and_nothing_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "SOURCE", tmp_path)
    assert provenance.git_commit() is None
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert provenance.git_commit() is None  # a repository without a commit yet
    (tmp_path / "f").write_text("1")
    env = {**os.environ, "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a",
           "GIT_COMMITTER_EMAIL": "a@b"}
    subprocess.run(["git", "-C", str(tmp_path), "add", "f"], check=True, env=env)
    subprocess.run(["git", "-C", str(tmp_path), "commit", "-q", "-m", "x"], check=True, env=env)
    found = provenance.git_commit()
    assert len(found["commit"]) == 40 and found["modified"] is False
    (tmp_path / "f").write_text("2")
    assert provenance.git_commit()["modified"] is True
    monkeypatch.setenv("PATH", "")
    assert provenance.git_commit() is None
