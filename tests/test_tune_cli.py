"""fewshot-metaopt tune end to end on tiny sinusoid studies: a study with pruning and its
outputs, a study of two worker processes killed and resumed with no finished trial lost, a
study shared through a database, and the command's one-line errors."""

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest

from fewshot_metaopt.cli import main
from fewshot_metaopt.runs import load_task
from fewshot_metaopt.runs.errors import RunError
from fewshot_metaopt.tuning import trial_objective
from test_cli import error_line, png_size
from test_tune import SEARCH, SINUSOID, task_file

CLI = [sys.executable, "-m", "fewshot_metaopt.cli"]


def trials_of(folder, name="sin"):
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder / 'study.db'}")
    return {t.number: t for t in optuna.load_study(study_name=name, storage=storage).get_trials()}


def test_a_tiny_study_prunes_and_reports(tmp_path, capsys):
    path = task_file(tmp_path)
    study = tmp_path / "study"
    assert main(["tune", str(path), "--trials", "4", "--out", str(study), "--prune-after", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("study 'sin' in ") and "validation mse, minimized; sampler tpe, pruner median" in out
    assert "  learner.inner_lr: log_uniform [0.001, 0.1]\n" in out
    trials = trials_of(study)
    states = [t.state.name for t in trials.values()]
    assert len(trials) == 4 and "PRUNED" in states and "COMPLETE" in states
    for t in trials.values():  # each trial is a normal run directory, with its values
        run = study / t.user_attrs["run_dir"]
        assert f"trial {t.number} {'complete' if t.state.name == 'COMPLETE' else 'pruned at iteration'}" in out
        results = json.loads((run / "results.json").read_text())
        assert results["status"] == ("finished" if t.state.name == "COMPLETE" else "stopped")
        config = load_task(run / "config.toml")
        assert config.learner.inner_lr == t.params["learner.inner_lr"]
        assert config.learner.algorithm == t.params["learner.algorithm"]
    pruned = next(t for t in trials.values() if t.state.name == "PRUNED")
    assert pruned.user_attrs["iterations"] < 6  # stopped at a validation point before the budget
    best = min((t for t in trials.values() if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert f"best: trial {best.number}, validation mse {best.value:.4f}" in out
    # The best task file is a task file with the best values, ready to train.
    chosen = load_task(study / "best.toml")
    assert chosen.learner.inner_lr == best.params["learner.inner_lr"] and chosen.search is None
    assert chosen.model.hidden_layers == json.loads(best.params["model.hidden_layers"])
    rows = list(csv.DictReader((study / "trials.csv").open()))
    assert [r["state"] for r in rows] == [t.state.name.lower() for t in trials.values()]
    assert rows[best.number]["mse"] == repr(best.value)
    assert png_size(study / "plots" / "study.png")[0] > 600
    # The study's own task file reads back as the task with its space.
    searched = load_task(study / "task.toml")
    assert searched.search == load_task(path).search
    # Resuming a study that has its trials runs nothing and reports again.
    assert main(["tune", "--resume", str(study)]) == 0
    assert "the study has 4 trials of the 4 asked for; nothing to run" in capsys.readouterr().out


def test_a_killed_study_of_two_workers_resumes_with_every_finished_trial(tmp_path):
    # Trials long enough to be killed mid-run, checkpointed every 5 iterations.
    base = (SINUSOID.replace("iterations = 6", "iterations = 60").replace("checkpoint_every = 3", "checkpoint_every = 5")
            .replace("every = 2", "every = 20"))
    path = task_file(tmp_path, SEARCH, base)
    study = tmp_path / "study"
    process = subprocess.Popen([*CLI, "tune", str(path), "--trials", "4", "--out", str(study), "--workers", "2",
                                "--pruner", "none"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               start_new_session=True, text=True)
    deadline = time.monotonic() + 240

    def ready() -> bool:
        """A trial is complete in the study and another, running, has a checkpoint."""
        if not (study / "study.db").is_file():
            return False
        with sqlite3.connect(study / "study.db", timeout=60) as db:
            states = dict(db.execute("SELECT number, state FROM trials"))
        return "COMPLETE" in states.values() and any(
            state == "RUNNING" and (study / f"trials/trial-{n:04d}/checkpoints/last.pt").is_file()
            for n, state in states.items())

    # Kill the whole process group then: the main process and both workers.
    while not ready():
        assert process.poll() is None and time.monotonic() < deadline, "the study ended before it could be killed"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert sorted(p.name for p in (study / "logs").iterdir()) == ["worker-0.log", "worker-1.log"]
    before = trials_of(study)
    finished = {n: t.value for n, t in before.items() if t.state.name == "COMPLETE"}
    running = {n: t.user_attrs.get("run_dir") for n, t in before.items() if t.state.name == "RUNNING"}
    assert finished and running

    assert main(["tune", "--resume", str(study), "--threads", "1"]) == 0
    after = trials_of(study)
    assert {n: after[n].value for n in finished} == finished  # no finished trial lost
    retries = {t.system_attrs["failed_trial"]: t for t in after.values() if "failed_trial" in t.system_attrs}
    assert set(retries) == set(running)
    for number, run_dir in running.items():
        assert after[number].state.name == "FAIL"
        retry = retries[number]
        assert retry.state.name == "COMPLETE" and retry.params == before[number].params
        if run_dir is not None and (study / run_dir).is_dir():  # the retry continued the dead trial's run
            assert retry.user_attrs["run_dir"] == run_dir
            info = json.loads((study / run_dir / "run.json").read_text())
            assert info["resumed"][0]["command"][:3] == ["fewshot-metaopt", "tune", "--resume"]
    counted = [t for n, t in after.items() if n not in running]
    assert len(counted) == 4 and all(t.state.name == "COMPLETE" for t in counted)


def test_machines_share_a_study_through_a_database(tmp_path, capsys):
    path = task_file(tmp_path)
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    # Machine a runs the study's first two trials with two worker processes; machine b joins
    # the study and runs the third.
    for machine, trials, workers in (("a", "2", "2"), ("b", "3", "1")):
        assert main(["tune", str(path), "--trials", trials, "--out", str(tmp_path / machine), "--storage", database,
                     "--pruner", "none", "--workers", workers, "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "2 workers, 1 torch thread each" in out
    assert "trial 2 complete" in out and "trial 3" not in out
    assert sorted(p.name for p in (tmp_path / "a" / "trials").iterdir()) == ["trial-0000", "trial-0001"]
    assert [p.name for p in (tmp_path / "b" / "trials").iterdir()] == ["trial-0002"]
    assert not (tmp_path / "b" / "study.db").exists()
    settings = json.loads((tmp_path / "b" / "study.json").read_text())
    assert settings["storage"] == database and settings["trials"] == 3
    (tmp_path / "other").mkdir()
    other = task_file(tmp_path / "other", SEARCH.replace("0.1]", "0.2]"))
    assert main(["tune", str(other), "--trials", "2", "--out", str(tmp_path / "c"), "--storage", database]) == 1
    assert "searches another task or space; join it with the same task file, or name a new study with --study-name" \
        in error_line(capsys)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("args, message", [
    (["--trials", "2"], "tune needs a TASKFILE (or --resume STUDY_DIR)"),
    (["TASK"], "tune needs --trials N: the number of trials the study runs"),
    (["TASK", "--resume", "x", "--set", "seed=2"],
     "--resume continues STUDY_DIR with the task and settings it started with; drop TASKFILE, --set"),
    (["--resume", "nowhere"], "nowhere is not a study folder (it does not exist)"),
    (["TASK", "--trials", "1", "--set", "validation.every=0"], "validation.every is 0; set validation.every"),
    (["TASK", "--trials", "1", "--storage", "nosuchdb://x"], "cannot open the study storage nosuchdb://x"),
])
def test_tune_errors_are_one_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    path = task_file(tmp_path)
    assert main(["tune", *[str(path) if a == "TASK" else a for a in args]]) == 1
    assert message in error_line(capsys)


def test_an_existing_folder_a_password_and_a_study_with_no_complete_trial(tmp_path, capsys, monkeypatch):
    path = task_file(tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("")
    assert main(["tune", str(path), "--trials", "1", "--out", str(tmp_path / "taken")]) == 1
    assert "already exists; continue that study with fewshot-metaopt tune --resume" in error_line(capsys)

    errors = [FloatingPointError("meta-gradient norm is nan"), RunError("data.root is gone")]

    def broken(*args, **kwargs):
        raise errors.pop(0)

    monkeypatch.setattr(trial_objective, "train", broken)
    assert main(["tune", str(path), "--trials", "2", "--out", str(tmp_path / "s"), "--pruner", "none"]) == 1
    captured = capsys.readouterr()
    # A diverged trial is pruned (the sampler learns from it); a trial whose run cannot start fails.
    assert "trial 0 pruned: diverged: meta-gradient norm is nan |" in captured.out
    assert "trial 1 failed: data.root is gone |" in captured.out
    assert "no trial of the study completed; trial 0 (pruned): diverged: meta-gradient norm is nan; the trials: " \
        in captured.err
    settings = json.loads((tmp_path / "s" / "study.json").read_text())
    settings["storage"] = "postgresql://tuner:***@db.example/studies"
    (tmp_path / "s" / "study.json").write_text(json.dumps(settings))
    assert main(["tune", "--resume", str(tmp_path / "s")]) == 1
    assert "without its password; give it again with --storage" in error_line(capsys)
