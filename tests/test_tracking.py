"""Tracking: the [logging] table's TensorBoard, W&B (offline) and MLflow (local files) callbacks,
what they record, how a resumed run goes on in the same tracker run, and the missing-extra
errors. Also the progress bar's time left under a minutes budget."""

import glob
import json
import struct
import time

import pytest
import torch

from fewshot_metaopt.cli import main
from fewshot_metaopt.learners import GradientMetaLearner
from fewshot_metaopt.runs import RunError, load_task, resume, train
from fewshot_metaopt.runs.callbacks import Callback
from fewshot_metaopt.runs.extras import require
from fewshot_metaopt.runs.progress_bar import TrainingBar, projected_total
from fewshot_metaopt.runs.settings import LoggingSettings
from fewshot_metaopt.runs.tracker_ids import remember_id, tracker_id
from fewshot_metaopt.runs.trackers import TRACKERS, Tracker, build_trackers
from test_cli import write_task


def tiny(tmp_path, *overrides):
    return load_task(write_task(tmp_path), list(overrides))


def interrupted_after(steps, monkeypatch):
    """meta_train_step raises KeyboardInterrupt in call ``steps + 1`` (a crash-like stop)."""
    real, calls = GradientMetaLearner.meta_train_step, []

    def step(self, episodes):
        calls.append(1)
        if len(calls) > steps:
            raise KeyboardInterrupt
        return real(self, episodes)

    monkeypatch.setattr(GradientMetaLearner, "meta_train_step", step)


# ---------------------------------------------------------------------------- TensorBoard


def events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_logs_scalars_histograms_and_the_curves(tmp_path):
    pytest.importorskip("tensorboard")
    run = train(tiny(tmp_path, "logging.tensorboard=true"), tmp_path / "run")
    logged = events(run.path / "tensorboard")
    assert [e.step for e in logged.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    lines = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in logged.Scalars("train/loss")] == pytest.approx([line["loss"] for line in lines])
    assert [e.step for e in logged.Scalars("validation/accuracy")] == [3, 6]
    assert logged.Scalars("validation/accuracy")[-1].value == pytest.approx(lines[-1]["val_mean"])
    histograms = logged.Tags()["histograms"]
    assert "learned_lr/0.0.weight" in histograms and len(histograms) == 18
    assert [e.step for e in logged.Histograms("learned_lr/0.0.weight")] == [3, 6]
    assert logged.Scalars("test/accuracy")[0].value == pytest.approx(run.result.mean)
    (image,) = logged.Images("plots/learning_curves")
    assert image.width > 300 and image.height > 300


def test_a_resumed_run_logs_each_iteration_once_and_may_switch_tensorboard_on(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    task = write_task(tmp_path)
    interrupted_after(5, monkeypatch)
    assert main(["train", str(task), "--out", str(tmp_path / "run"), "--set", "logging.tensorboard=true"]) == 130
    monkeypatch.undo()
    assert [e.step for e in events(tmp_path / "run/tensorboard").Scalars("train/loss")] == [1, 2, 3, 4, 5]
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0  # from the checkpoint at 4
    assert [e.step for e in events(tmp_path / "run/tensorboard").Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]

    # Logging is no part of the task's identity: switched on in config.toml before a resume.
    interrupted_after(3, monkeypatch)
    assert main(["train", str(task), "--out", str(tmp_path / "later")]) == 130
    monkeypatch.undo()
    config = tmp_path / "later/config.toml"
    config.write_text(config.read_text().replace("tensorboard = false", "tensorboard = true"))
    assert main(["train", "--resume", str(tmp_path / "later")]) == 0
    assert [e.step for e in events(tmp_path / "later/tensorboard").Scalars("train/loss")] == [4, 5, 6]


# ---------------------------------------------------------------------------- W&B, offline


def wandb_records(folder):
    """The records of every offline W&B run under ``folder``: W&B's log format is LevelDB's
    (32 KiB blocks of checksummed chunks) holding ``Record`` protobufs."""
    from wandb.proto import wandb_internal_pb2

    records = []
    for path in sorted(glob.glob(str(folder / "wandb/offline-run-*/run-*.wandb"))):
        data, position, payload = open(path, "rb").read(), 7, b""  # after the 7-byte file header
        while position + 7 <= len(data):
            room = 32768 - position % 32768
            if room < 7:
                position += room
                continue
            _, length, kind = struct.unpack("<IHB", data[position:position + 7])
            payload += data[position + 7:position + 7 + length]
            position += 7 + length
            if kind in (1, 4):  # a whole record, or the last chunk of one
                record = wandb_internal_pb2.Record()
                record.ParseFromString(payload)
                records.append(record)
                payload = b""
    return records


def wandb_history(records):
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def test_wandb_offline_logs_the_run_and_a_resume_goes_on_in_the_same_wandb_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for variable in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(variable, raising=False)
    task = write_task(tmp_path)
    options = ["--set", "logging.wandb=true", "--set", "logging.wandb_mode=offline", "--set", "logging.wandb_project=p"]
    interrupted_after(5, monkeypatch)
    assert main(["train", str(task), "--out", str(tmp_path / "run"), *options]) == 130
    monkeypatch.undo()
    run_id = tracker_id(tmp_path / "run", "wandb")
    assert run_id
    # W&B names an offline run's folder by the second it starts and the run id: a resume in the
    # same second would write into the first process's folder.
    second = int(time.time())
    while int(time.time()) == second:
        time.sleep(0.05)
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0
    assert tracker_id(tmp_path / "run", "wandb") == run_id

    # W&B's service process may still be writing the last records when finish() returns.
    deadline = time.monotonic() + 30
    while [r.WhichOneof("record_type") for r in wandb_records(tmp_path / "run")].count("exit") < 2:
        assert time.monotonic() < deadline, "W&B never finished writing its offline runs"
        time.sleep(0.1)
    records = wandb_records(tmp_path / "run")
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert {r.run_id for r in runs} == {run_id} and len(runs) == 2 and runs[0].project == "p"
    config = {item.key: json.loads(item.value_json) for item in runs[0].config.update}
    assert config["name"] == "tiny" and config["learner"]["inner_lr"] == 0.3
    history = wandb_history(records)
    losses = [(row["_step"], row["train/loss"]) for row in history if "train/loss" in row]
    lines = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    # The first process logged 1-5; the resumed one 5 again (identical: W&B keeps one) and 6.
    assert dict(losses) == pytest.approx({line["iteration"]: line["loss"] for line in lines})
    assert [row["_step"] for row in history if "validation/accuracy" in row] == [3, 6]
    # Histograms and images are stored as nested values (their type, bins or file, ...).
    assert [row["_step"] for row in history if row.get("learned_lr/0.0.weight/_type") == "histogram"] == [3, 6]
    assert [row["_step"] for row in history if row.get("plots/learning_curves/_type") == "image-file"] == [6]
    summary = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            summary.update({item.key or "/".join(item.nested_key): item.value_json for item in record.summary.update})
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert json.loads(summary["test/accuracy"]) == pytest.approx(results["mean"])
    assert json.loads(summary["status"]) == "finished"


# ---------------------------------------------------------------------------- MLflow, local files


def test_mlflow_logs_params_metrics_and_artifacts_into_a_local_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for this to use plain files
    store = (tmp_path / "mlruns").as_uri()
    task = write_task(tmp_path)
    options = ["--set", "logging.mlflow=true", "--set", f"logging.mlflow_tracking_uri={json.dumps(store)}",
               "--set", "logging.mlflow_experiment=tiny-experiments"]
    interrupted_after(5, monkeypatch)
    assert main(["train", str(task), "--out", str(tmp_path / "run"), *options]) == 130
    monkeypatch.undo()
    client = MlflowClient(store)
    run_id = tracker_id(tmp_path / "run", "mlflow")
    assert client.get_run(run_id).info.status == "KILLED"
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0

    found = client.get_run(run_id)
    assert found.info.status == "FINISHED" and found.data.tags["fewshot_metaopt.status"] == "finished"
    assert client.get_experiment(found.info.experiment_id).name == "tiny-experiments"
    assert found.data.params["learner.inner_lr"] == "0.3" and found.data.params["name"] == "tiny"
    steps = sorted({m.step for m in client.get_metric_history(run_id, "train/loss")})
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [m.step for m in client.get_metric_history(run_id, "validation/accuracy")] == [3, 6]
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert client.get_metric_history(run_id, "test/accuracy")[0].value == pytest.approx(results["mean"])
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["learning_curves.png", "results.json"]


# ---------------------------------------------------------------------------- settings and extras


def test_a_missing_extra_is_one_line_before_any_run_directory(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert main(["train", str(write_task(tmp_path)), "--out", str(tmp_path / "run"), "--set", "logging.wandb=true"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fewshot-metaopt: error: logging.wandb needs the 'wandb' package, which is not installed: "
                   "pip install 'fewshot-metaopt[wandb]' (or set it to false)"]
    assert not (tmp_path / "run").exists()
    monkeypatch.setitem(__import__("sys").modules, "mlflow", None)  # an import that fails
    with pytest.raises(RunError, match=r"logging.mlflow needs the 'mlflow' package.*fewshot-metaopt\[mlflow\]"):
        require("mlflow", "mlflow", "logging.mlflow")


def test_the_logging_table_is_checked_like_every_table(tmp_path):
    with pytest.raises(RunError, match="logging.wandb_project .* is read only when its tracker is on"):
        tiny(tmp_path, "logging.wandb_project=p")
    with pytest.raises(RunError, match="logging.wandb_mode"):
        tiny(tmp_path, "logging.wandb=true", "logging.wandb_mode=sometimes")
    task = tiny(tmp_path, "logging.mlflow=true", "logging.mlflow_experiment=e")
    assert task.logging.enabled() == ["mlflow"] and task.to_dict()["logging"]["mlflow_experiment"] == "e"
    # One switch per tracker in the registry.
    assert TRACKERS.names() == tuple(LoggingSettings.ONLY) == ("tensorboard", "wandb", "mlflow")


def test_tracker_ids_and_a_tracker_that_cannot_start(tmp_path):
    assert tracker_id(tmp_path, "wandb") is None
    remember_id(tmp_path, "wandb", "abc")
    remember_id(tmp_path, "mlflow", "def")
    assert (tracker_id(tmp_path, "wandb"), tracker_id(tmp_path, "mlflow")) == ("abc", "def")
    (tmp_path / "trackers.json").write_text("[1]")
    with pytest.raises(RunError, match="must hold a JSON object"):
        tracker_id(tmp_path, "wandb")
    (tmp_path / "trackers.json").write_text("{")
    with pytest.raises(RunError, match="trackers.json is not valid JSON"):
        tracker_id(tmp_path, "wandb")

    closed = []

    class Started(Callback):
        def on_finish(self, record):
            closed.append(record.status)

    def broken(task, run, resumed_at):
        raise RunError("no tracking server")

    TRACKERS.register("started_for_test", Tracker("json", lambda task, run, resumed_at: Started()))
    TRACKERS.register("broken_for_test", Tracker("json", broken))
    try:
        class Two:
            def enabled(self):
                return ["started_for_test", "broken_for_test"]

        class Task:
            logging = Two()

        class Run:
            path = tmp_path

        with pytest.raises(RunError, match="no tracking server"):
            build_trackers(Task(), Run(), 0)
        assert closed == ["failed"]
    finally:
        for name in ("started_for_test", "broken_for_test"):
            TRACKERS._entries.pop(name)


def test_python_runs_take_trackers_from_the_task_and_callbacks_from_the_caller(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    seen = []

    class Count(Callback):
        def on_iteration_end(self, record):
            seen.append(record.iteration)

    interrupted_after(5, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path, "logging.tensorboard=true"), tmp_path / "run", callbacks=[Count()], command=["t"])
    monkeypatch.undo()
    again = resume(tmp_path / "run", callbacks=[Count()], command=["t", "again"])
    assert again.status == "finished" and seen == [1, 2, 3, 4, 5, 5, 6]  # resumed from the checkpoint at 4
    assert json.loads((tmp_path / "run/run.json").read_text())["resumed"][0]["command"] == ["t", "again"]
    assert (tmp_path / "run/tensorboard").is_dir()


# ---------------------------------------------------------------------------- the progress bar


def test_the_time_left_follows_the_budget_that_binds():
    # 60,000 iterations in 20 minutes at 5 it/s: the minutes bind, at 6,000 iterations.
    assert projected_total(60000, 20.0, 100, 20.0, 100, 20.0) == 100 + 5 * (1200 - 20)
    # The iterations bind: the total stays theirs.
    assert projected_total(300, 20.0, 100, 20.0, 100, 20.0) == 300
    assert projected_total(300, None, 100, 20.0, 100, 20.0) == 300
    assert projected_total(None, None, 100, 20.0, 100, 20.0) is None
    # A minutes-only budget gets a total too; a resumed run counts its earlier minutes.
    assert projected_total(None, 1.0, 100, 50.0, 10, 10.0) == 110
    assert projected_total(None, 1.0, 100, 70.0, 10, 10.0) == 100
    assert projected_total(None, 1.0, 0, 0.0, 0, 0.0) is None  # nothing measured yet


def test_the_bar_total_moves_with_the_projection(monkeypatch):
    import fewshot_metaopt.runs.progress_bar as progress_bar

    clock = [1000.0]
    monkeypatch.setattr(progress_bar.time, "monotonic", lambda: clock[0])
    bar = TrainingBar(60000, 20.0, 0, enabled=True)
    clock[0] += 2.0
    bar.advance(10, 2.0, {"loss": "1.0"})  # 5 it/s, 1198 s left
    assert bar.bar.total == 10 + 5 * 1198 and bar.bar.n == 10
    clock[0] += 1200.0
    bar.advance(11, 1202.0, {})  # past the budget: never below what is done
    assert bar.bar.total == 11
    bar.close()
    plain = TrainingBar(300, None, 5, enabled=True)
    plain.advance(6, 1.0, {})
    assert (plain.bar.total, plain.bar.n) == (300, 6)
    plain.close()
    assert torch.get_num_threads() >= 1
