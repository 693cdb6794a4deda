"""Resumption is bit-exact: a run killed with SIGKILL and resumed ends where an uninterrupted
run ends, weight for weight and metrics line for metrics line. Also the console entry point."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fewshot_metaopt.cli import main
from fewshot_metaopt.learners import GradientMetaLearner
from fewshot_metaopt.runs.run_dir import RunDir
from test_cli import TINY_TASK, write_task

# Long enough to be killed mid-run: checkpoints at 4, 8, ... and at 10 (a better validation
# score), and a cosine schedule whose state must resume too.
KILL_TASK = (TINY_TASK.replace("iterations = 6", "iterations = 20").replace("checkpoint_every = 2", "checkpoint_every = 4")
             .replace("every = 3", "every = 10") + '\n[meta_schedule]\nname = "cosine"\n')
CLI = [sys.executable, "-m", "fewshot_metaopt.cli"]


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, **kwargs)


def metrics_without_time(run: Path) -> list[dict]:
    """Every metrics line minus its wall-clock stamp, the one field a rerun cannot repeat."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        del line["wall_s"]
    return lines


def assert_same_run(a: Path, b: Path) -> None:
    for name in ("last.pt", "best.pt"):
        x = torch.load(a / "checkpoints" / name, weights_only=True)
        y = torch.load(b / "checkpoints" / name, weights_only=True)
        assert x["iteration"] == y["iteration"]
        for part in ("model", "rule"):
            assert x["learner"][part].keys() == y["learner"][part].keys()
            for key, tensor in x["learner"][part].items():
                assert torch.equal(tensor, y["learner"][part][key]), (name, part, key)
        assert x["meta_schedule"] == y["meta_schedule"]
        assert torch.equal(x["rng"]["torch"], y["rng"]["torch"])
        assert torch.equal(x["samplers"]["train"]["generator"], y["samplers"]["train"]["generator"])
    assert metrics_without_time(a) == metrics_without_time(b)
    ra, rb = (json.loads((run / "results.json").read_text()) for run in (a, b))
    assert (ra["mean"], ra["ci95"], ra["checkpoint_iteration"]) == (rb["mean"], rb["ci95"], rb["checkpoint_iteration"])


def train_whole_and_interrupted_then_resumed(task: Path, tmp_path: Path, monkeypatch) -> None:
    """Train ``task`` into ``whole``; train it into ``cut`` with a Ctrl-C in the 6th iteration
    (past the checkpoint at iteration 4 and the validation at 3), then resume ``cut``."""
    assert main(["train", str(task), "--out", str(tmp_path / "whole")]) == 0

    real, calls = GradientMetaLearner.meta_train_step, []

    def interrupted(self, episodes):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(self, episodes)

    monkeypatch.setattr(GradientMetaLearner, "meta_train_step", interrupted)
    assert main(["train", str(task), "--out", str(tmp_path / "cut")]) == 130
    monkeypatch.setattr(GradientMetaLearner, "meta_train_step", real)
    assert torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)["iteration"] == 4
    assert main(["train", "--resume", str(tmp_path / "cut")]) == 0


def test_sigkill_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    task = write_task(tmp_path, KILL_TASK)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    # The reference runs in this process (one torch thread, as the suite sets), the rest in
    # processes of their own.
    assert main(["train", str(task), "--out", str(whole), "--threads", "1"]) == 0

    process = subprocess.Popen([*CLI, "train", str(task), "--out", str(killed), "--threads", "1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics, checkpoint = killed / "metrics.jsonl", killed / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    # Kill between checkpoints: after the one at iteration 4, once line 5 has been logged.
    while not (checkpoint.is_file() and metrics.is_file() and metrics.read_text().count("\n") >= 5):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (killed / "results.json").exists()
    logged = metrics.read_text().count("\n")
    assert logged > torch.load(checkpoint, weights_only=True)["iteration"]

    resumed = cli("train", "--resume", str(killed), "--threads", "1")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at iteration " in resumed.stdout
    assert_same_run(whole, killed)
    info = json.loads((killed / "run.json").read_text())
    assert [r["command"] for r in info["resumed"]] == [["fewshot-metaopt", "train", "--resume", str(killed), "--threads", "1"]]


def test_an_interrupted_run_resumes_in_process_to_the_same_end(tmp_path, capsys, monkeypatch):
    task = write_task(tmp_path, TINY_TASK.replace("iterations = 6", "iterations = 9") + '[meta_schedule]\nname = "cosine"\n')
    train_whole_and_interrupted_then_resumed(task, tmp_path, monkeypatch)
    assert_same_run(tmp_path / "whole", tmp_path / "cut")
    results = json.loads((tmp_path / "cut/results.json").read_text())
    assert results["resumed"] == [f"fewshot-metaopt train --resume {tmp_path / 'cut'}"]


def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path, capsys, monkeypatch):
    task = write_task(tmp_path)
    assert main(["train", str(task), "--out", str(tmp_path / "whole")]) == 0
    monkeypatch.setattr(GradientMetaLearner, "meta_train_step", _stop_after(0))
    assert main(["train", str(task), "--out", str(tmp_path / "cut")]) == 130
    monkeypatch.undo()
    cut = tmp_path / "cut"
    (cut / "metrics.jsonl").write_text('{"iteration": 1, "loss": 9.0}\n{"iteration": 2, "lo')
    (cut / "checkpoints" / ".last.pt.abc.partial").write_bytes(b"half a checkpoint")
    (cut / ".run.json.abc.partial").write_bytes(b"half a file")
    assert main(["train", "--resume", str(cut)]) == 0
    assert_same_run(tmp_path / "whole", cut)
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert not list(cut.glob(".*.partial"))


def test_resuming_a_finished_run_changes_nothing(tmp_path, capsys):
    assert main(["train", str(write_task(tmp_path)), "--out", str(tmp_path / "run")]) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0
    assert "has finished already: test accuracy" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


def test_a_run_whose_config_was_edited_does_not_resume(tmp_path, capsys, monkeypatch):
    task = write_task(tmp_path)
    monkeypatch.setattr(GradientMetaLearner, "meta_train_step", _stop_after(3))
    assert main(["train", str(task), "--out", str(tmp_path / "run")]) == 130
    monkeypatch.undo()
    config = RunDir(tmp_path / "run").config
    config.write_text(config.read_text().replace("inner_lr = 0.3", "inner_lr = 0.2"))
    assert main(["train", "--resume", str(tmp_path / "run")]) == 1
    assert "no longer matches the run's checkpoint" in capsys.readouterr().err


def test_a_damaged_metrics_log_stops_the_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(GradientMetaLearner, "meta_train_step", _stop_after(3))
    assert main(["train", str(write_task(tmp_path)), "--out", str(tmp_path / "run")]) == 130
    monkeypatch.undo()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    assert main(["train", "--resume", str(tmp_path / "run")]) == 1
    assert "is shorter (0 bytes) than its checkpoint says" in capsys.readouterr().err


def _stop_after(steps: int):
    real, calls = GradientMetaLearner.meta_train_step, []

    def step(self, episodes):
        calls.append(1)
        if len(calls) > steps:
            raise KeyboardInterrupt
        return real(self, episodes)

    return step


def test_the_console_script_reports_errors_by_exit_status(tmp_path):
    script = Path(sys.executable).with_name("fewshot-metaopt")
    assert script.is_file(), "pip install -e . creates the console script"
    missing = subprocess.run([str(script), "evaluate", str(tmp_path / "nothing")], capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == [f"fewshot-metaopt: error: checkpoint {tmp_path / 'nothing'} does not exist"]


@pytest.mark.parametrize("text", [b"", b"not a checkpoint at all", b"PK\x03\x04 truncated zip"])
def test_evaluate_refuses_damaged_checkpoints_in_one_line(tmp_path, capsys, text):
    path = tmp_path / "bad.pt"
    path.write_bytes(text)
    assert main(["evaluate", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"{path} is truncated or corrupt" in err[0]
