"""Callbacks on the training loop: what they see, and how one of them ends a run cleanly."""

import json

import pytest
import torch

from fewshot_metaopt.runs import (
    Callback, CheckpointWritten, IterationEnd, RunEnd, Stop, TrainedRun, Validation, load_task, resume, train,
)
from fewshot_metaopt.runs.callbacks import CallbackList
from test_cli import TINY_TASK, write_task


class Recorder(Callback):
    """Every event it is shown, in order; ``stop_on`` maps an (event, iteration) to a reason."""

    def __init__(self, stop_on=None):
        self.events, self.stop_on = [], dict(stop_on or {})

    def _seen(self, name, record):
        self.events.append((name, record))
        reason = self.stop_on.get((name, getattr(record, "iteration", None)))
        return Stop(reason) if reason else None

    def on_iteration_end(self, record):
        return self._seen("iteration", record)

    def on_validation(self, record):
        return self._seen("validation", record)

    def on_checkpoint(self, record):
        return self._seen("checkpoint", record)

    def on_finish(self, record):
        self._seen("finish", record)

    def of(self, name):
        return [record for event, record in self.events if event == name]


def tiny(tmp_path, *overrides):
    return load_task(write_task(tmp_path), list(overrides))


def lines(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_callbacks_see_every_event_of_a_run(tmp_path):
    seen = Recorder()
    run = train(tiny(tmp_path), tmp_path / "run", callbacks=[seen])
    assert isinstance(run, TrainedRun) and run.status == "finished" and run.stopped_by is None
    assert [r.iteration for r in seen.of("iteration")] == [1, 2, 3, 4, 5, 6]
    first = seen.of("iteration")[0]
    assert isinstance(first, IterationEnd) and first.loss > 0 and 0 <= first.accuracy <= 1
    assert first.meta_lr == pytest.approx(0.01) and first.elapsed_s > 0
    validations = seen.of("validation")
    assert [v.iteration for v in validations] == [3, 6]
    logged = [line for line in lines(run.path) if "val_mean" in line]
    for record, line in zip(validations, logged):
        assert isinstance(record, Validation) and record.metric == "accuracy" and record.higher_is_better
        assert (record.mean, record.ci95, record.improved) == (line["val_mean"], line["val_ci95"], line["best"])
    # Meta-SGD's learned lrs, as copies: changing them changes nothing in the run.
    lrs = validations[-1].learned_lrs
    assert set(lrs) and all(t.device.type == "cpu" for t in lrs.values())
    with pytest.raises(TypeError):
        lrs["x"] = torch.zeros(1)
    checkpoints = seen.of("checkpoint")
    assert all(isinstance(c, CheckpointWritten) and c.path == run.path / "checkpoints/last.pt" for c in checkpoints)
    assert [c.iteration for c in checkpoints if not c.best] == [2, 4, 6]
    assert {c.iteration for c in checkpoints if c.best} <= {3, 6}
    (end,) = seen.of("finish")
    assert isinstance(end, RunEnd) and (end.status, end.iteration, end.run, end.reason) == ("finished", 6, run.path, None)
    assert end.result.mean == run.result.mean
    assert seen.events[-1][0] == "finish"
    results = json.loads((run.path / "results.json").read_text())
    assert (results["status"], results["stopped_by"]) == ("finished", None)


def test_a_stop_on_validation_ends_the_run_with_its_checkpoint_and_results(tmp_path):
    prune, watcher = Recorder({("validation", 3): "pruned at iteration 3"}), Recorder()
    run = train(tiny(tmp_path, "train.iterations=50"), tmp_path / "run", callbacks=[prune, watcher])
    assert (run.status, run.stopped_by, run.iterations) == ("stopped", "Recorder: pruned at iteration 3", 3)
    # Every callback saw the event the first one stopped on, and the end.
    assert [v.iteration for v in watcher.of("validation")] == [3]
    assert watcher.of("finish")[0].status == "stopped"
    assert watcher.of("finish")[0].reason == "Recorder: pruned at iteration 3"
    assert [line["iteration"] for line in lines(run.path)] == [1, 2, 3]
    last = torch.load(run.path / "checkpoints/last.pt", weights_only=True)
    assert last["iteration"] == 3 and last["progress"]["stopped_by"] == "Recorder: pruned at iteration 3"
    results = json.loads((run.path / "results.json").read_text())
    assert (results["status"], results["stopped_by"], results["iterations"]) == ("stopped", run.stopped_by, 3)
    assert results["mean"] == run.result.mean


def test_a_stop_on_iteration_end_validates_logs_and_checkpoints_that_iteration(tmp_path):
    seen = Recorder({("iteration", 4): "enough"})
    run = train(tiny(tmp_path, "train.iterations=50", "train.log_every=3"), tmp_path / "run", callbacks=[seen])
    assert (run.status, run.iterations) == ("stopped", 4)
    assert [line["iteration"] for line in lines(run.path)] == [3, 4]
    assert "val_mean" in lines(run.path)[-1]  # the end of a run is validated, whatever stopped it
    assert [c.iteration for c in seen.of("checkpoint") if not c.best] == [2, 4]


def test_a_stop_on_a_checkpoint_logs_what_is_left_and_records_the_stop(tmp_path):
    seen = Recorder({("checkpoint", 2): "stop at the checkpoint"})
    run = train(tiny(tmp_path, "train.iterations=50", "train.log_every=5", "validation.every=0"), tmp_path / "run",
                callbacks=[seen])
    assert (run.status, run.iterations) == ("stopped", 2)
    assert [line["iteration"] for line in lines(run.path)] == [2]  # iterations 1-2 in one line
    last = torch.load(run.path / "checkpoints/last.pt", weights_only=True)
    assert last["progress"]["stopped_by"] == "Recorder: stop at the checkpoint"
    assert last["progress"]["metrics_bytes"] == (run.path / "metrics.jsonl").stat().st_size
    assert [c.iteration for c in seen.of("checkpoint")] == [2]  # the second write tells no one


def test_a_stopped_run_killed_before_its_results_resumes_to_its_end(tmp_path):
    run = train(tiny(tmp_path, "train.iterations=50"), tmp_path / "run",
                callbacks=[Recorder({("validation", 3): "pruned"})])
    first = json.loads((run.path / "results.json").read_text())
    (run.path / "results.json").unlink()
    seen = Recorder()
    again = resume(run.path, callbacks=[seen])
    assert (again.status, again.stopped_by, again.iterations) == ("stopped", "Recorder: pruned", 3)
    assert seen.of("iteration") == [] and seen.of("finish")[0].status == "stopped"
    assert json.loads((run.path / "results.json").read_text())["mean"] == first["mean"]


def test_a_failing_run_tells_the_callbacks_and_raises(tmp_path, monkeypatch):
    from fewshot_metaopt.learners import GradientMetaLearner

    def diverge(self, episodes):
        raise FloatingPointError("meta-gradient norm is nan")

    monkeypatch.setattr(GradientMetaLearner, "meta_train_step", diverge)
    seen = Recorder()
    with pytest.raises(FloatingPointError):
        train(tiny(tmp_path), tmp_path / "run", callbacks=[seen])
    (end,) = seen.of("finish")
    assert (end.status, end.reason, end.result) == ("failed", "meta-gradient norm is nan", None)


def test_hooks_must_answer_none_or_stop(tmp_path):
    class Confused(Callback):
        def on_iteration_end(self, record):
            return True

    with pytest.raises(TypeError, match=r"Confused.on_iteration_end returned True; return None to go on, or Stop"):
        train(tiny(tmp_path), tmp_path / "run", callbacks=[Confused()])
    with pytest.raises(TypeError, match="must be fewshot_metaopt.runs.Callback instances, got 'tensorboard'"):
        CallbackList(["tensorboard"])
    with pytest.raises(ValueError, match="Stop needs a reason"):
        Stop("  ")


def test_every_callback_closes_even_when_one_fails_to():
    closed = []

    class Broken(Callback):
        def on_finish(self, record):
            raise OSError("disk full")

    class Closes(Callback):
        def on_finish(self, record):
            closed.append(record.status)

    with pytest.raises(OSError, match="disk full"):
        CallbackList([Broken(), Closes()]).finish(RunEnd("finished", 1, None))
    assert closed == ["finished"]
    # The base class's hooks do nothing and ask for nothing.
    base = Callback()
    assert base.on_iteration_end(None) is None and base.on_validation(None) is None
    assert base.on_checkpoint(None) is None and base.on_finish(None) is None


def test_a_failing_final_test_tells_the_callbacks(tmp_path, monkeypatch):
    from fewshot_metaopt.runs import RunError, checkpoint_pair

    def lost(run):
        raise RunError("the checkpoint went missing")

    monkeypatch.setattr(checkpoint_pair, "checkpoint_for_use", lost)
    seen = Recorder()
    with pytest.raises(RunError, match="went missing"):
        train(tiny(tmp_path), tmp_path / "run", callbacks=[seen])
    assert [(r.status, r.reason) for r in seen.of("finish")] == [("failed", "the checkpoint went missing")]


def test_a_resume_that_is_refused_leaves_the_run_unlocked(tmp_path, monkeypatch):
    from fewshot_metaopt.learners import GradientMetaLearner
    from fewshot_metaopt.runs import RunError
    from fewshot_metaopt.runs.run_dir import RunDir

    real = GradientMetaLearner.meta_train_step
    calls = []

    def stop_in_the_fourth(self, episodes):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(self, episodes)

    monkeypatch.setattr(GradientMetaLearner, "meta_train_step", stop_in_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path), tmp_path / "run")
    monkeypatch.undo()
    config = tmp_path / "run/config.toml"
    config.write_text(config.read_text().replace("inner_lr = 0.3", "inner_lr = 0.2"))
    with pytest.raises(RunError, match="no longer matches"):
        resume(tmp_path / "run")
    RunDir.open(tmp_path / "run").lock().release()  # not held by the refused resume


def test_the_command_line_reports_a_stop_and_an_interrupted_final_test(tmp_path, capsys, monkeypatch):
    from fewshot_metaopt.cli import main
    from fewshot_metaopt.cli import train_command
    from fewshot_metaopt.runs.trainer import Trainer

    class Stopping(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, callbacks=[Recorder({("iteration", 2): "enough for the test"})], **kwargs)

    monkeypatch.setattr(train_command, "Trainer", Stopping)
    assert main(["train", str(write_task(tmp_path)), "--out", str(tmp_path / "run")]) == 0
    assert "stopped at iteration 2 by Recorder: enough for the test" in capsys.readouterr().out

    def ctrl_c(self, run):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_test_and_record", ctrl_c)
    assert main(["train", str(write_task(tmp_path)), "--out", str(tmp_path / "other"), "--threads", "1"]) == 130
    out = capsys.readouterr().out
    assert f"interrupted; the run keeps its last checkpoint, {tmp_path / 'other/checkpoints/last.pt'}" in out
    assert f"continue with: fewshot-metaopt train --resume {tmp_path / 'other'} --threads 1" in out
