"""Faults injected into training runs: a kill between any two writes of a checkpoint step, a
second process in the same run directory, a full disk, a diverging run, a half-made run
directory, malformed and foreign checkpoints. Nothing is lost and each fault is one line."""

import errno
import json
import os
import shutil
import stat

import pytest
import torch

from fewshot_metaopt.atomic_files import WriteFailed
from fewshot_metaopt.cli import main
from fewshot_metaopt.runs import checkpoint, checkpoint_pair
from fewshot_metaopt.runs.checkpoint import SCHEMA, load_checkpoint, save_checkpoint
from fewshot_metaopt.runs.errors import RunError
from fewshot_metaopt.runs.run_dir import RunDir
from test_cli import TINY_TASK, error_line, write_task
from test_cli_resume import assert_same_run


def last_error(capsys) -> str:
    """The error line, the last one printed (a progress bar may have drawn lines before it)."""
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("fewshot-metaopt: error: "), line
    return line


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The uninterrupted run every interrupted one must end as."""
    folder = tmp_path_factory.mktemp("whole")
    assert main(["train", str(write_task(folder)), "--out", str(folder / "run")]) == 0
    return folder / "run"


class Killed(KeyboardInterrupt):
    pass


def kill_in_first_best_step(monkeypatch, before: int, midway: bool = False) -> None:
    """Raise ``Killed`` at write ``before`` of the first checkpoint step that saves a best: the
    writes are best.next.pt, last.pt and the rename to best.pt (k = 0, 1, 2), and ``midway``
    kills in the middle of writing file ``before``."""
    real_save, real_promote = checkpoint_pair.save_checkpoint, checkpoint_pair.promote
    state = {"armed": False, "writes": 0}
    real_pair_save = checkpoint_pair.save

    def pair_save(run, payload, best):
        state["armed"] = best and state["writes"] == 0
        return real_pair_save(run, payload, best)

    def write(action):
        if state["armed"]:
            if state["writes"] == before:
                raise Killed
            state["writes"] += 1
        return action()

    def save(path, payload):
        if midway and state["armed"] and state["writes"] == before:
            with pytest.raises(Killed):
                with checkpoint.atomic_writer(path) as f:  # half a file, then the kill
                    f.write(b"half")
                    raise Killed
            raise Killed
        return write(lambda: real_save(path, payload))

    monkeypatch.setattr(checkpoint_pair, "save", pair_save)
    monkeypatch.setattr(checkpoint_pair, "save_checkpoint", save)
    monkeypatch.setattr(checkpoint_pair, "promote", lambda run: write(lambda: real_promote(run)))


@pytest.mark.parametrize("before, midway", [(0, False), (0, True), (1, False), (1, True), (2, False)])
def test_a_kill_between_any_two_writes_of_a_checkpoint_step_resumes_to_the_same_run(
        tmp_path, monkeypatch, whole, before, midway):
    task = write_task(tmp_path)
    cut = tmp_path / "cut"
    kill_in_first_best_step(monkeypatch, before, midway)
    assert main(["train", str(task), "--out", str(cut)]) == 130
    monkeypatch.undo()
    assert main(["train", "--resume", str(cut)]) == 0
    assert_same_run(whole, cut)
    results = json.loads((cut / "results.json").read_text())
    assert results["checkpoint_iteration"] == results["best_validation"]["iteration"]
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


def test_a_best_checkpoint_the_latest_does_not_name_is_refused(tmp_path, whole):
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    # An older best put back by hand: no crash can leave this pair.
    best = load_checkpoint(run / "checkpoints/best.pt")
    best["iteration"] -= 1
    save_checkpoint(run / "checkpoints/best.pt", {k: v for k, v in best.items() if k not in ("format", "version")})
    with pytest.raises(RunError, match="has no checkpoint of iteration 3, which .* names as the best: the run directory was altered"):
        checkpoint_pair.checkpoint_for_use(RunDir(run))
    assert main(["evaluate", str(run), "--episodes", "2"]) == 1


def test_a_second_process_in_a_run_directory_is_refused(tmp_path, capsys, whole):
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    (run / "results.json").unlink()
    holder = RunDir.open(run).lock()
    try:
        assert main(["train", "--resume", str(run)]) == 1
        assert "is in use by another fewshot-metaopt process" in error_line(capsys)
    finally:
        holder.release()
    assert main(["train", "--resume", str(run)]) == 0


def test_a_full_disk_names_the_file_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    task = write_task(tmp_path)
    run = tmp_path / "run"
    real_save, saves = torch.save, []

    def full_after_one(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) > 1:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", full_after_one)
    monkeypatch.setattr("fewshot_metaopt.atomic_files.shutil.disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 0))
    assert main(["train", str(task), "--out", str(run)]) == 1
    line = last_error(capsys)
    assert "no space left on the device mounted at" in line and "checkpoints/" in line and "unexpected" not in line
    assert load_checkpoint(run / "checkpoints/last.pt")["iteration"] == 2
    assert not list((run / "checkpoints").glob(".*.partial"))


def test_a_full_disk_while_logging_names_the_log(tmp_path, capsys, monkeypatch):
    from fewshot_metaopt.runs import metrics_log

    def no_space(self, record):
        raise metrics_log.write_failure(self.path, OSError(errno.ENOSPC, "No space left on device"))

    monkeypatch.setattr(metrics_log.MetricsLog, "append", no_space)
    assert main(["train", str(write_task(tmp_path)), "--out", str(tmp_path / "run")]) == 1
    assert "no space left on the device mounted at" in last_error(capsys)
    failure = metrics_log.write_failure(tmp_path / "m", OSError(errno.EACCES, "Permission denied"))
    assert isinstance(failure, WriteFailed) and str(failure) == f"cannot write {tmp_path / 'm'}: Permission denied"


def test_a_diverged_run_is_not_reported_as_a_success(tmp_path, capsys):
    task = write_task(tmp_path, TINY_TASK.replace("inner_lr = 0.3", "inner_lr = 1e6"))
    code = main(["train", str(task), "--out", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    # Finite but enormous losses are reported as a diverged run (on this machine); should a
    # platform's kernels turn them non-finite first, that is a failure with its own line.
    if "the run diverged" in captured.err:
        assert "learner.inner_lr" in captured.err
        health = json.loads((tmp_path / "run/results.json").read_text())["health"]
        assert health["diverged"] and any("meta-loss ended at" in f for f in health["findings"])
    else:
        assert "non-finite" in captured.err or "nan" in captured.err or "inf" in captured.err


def test_a_run_that_fails_before_its_first_checkpoint_says_so(tmp_path, capsys, monkeypatch):
    from fewshot_metaopt.learners import GradientMetaLearner

    def blow_up(self, episodes):
        raise FloatingPointError("meta-gradient norm is nan at iteration 0; nothing was updated")

    monkeypatch.setattr(GradientMetaLearner, "meta_train_step", blow_up)
    assert main(["train", str(write_task(tmp_path)), "--out", str(tmp_path / "run")]) == 1
    line = error_line(capsys)
    assert "no checkpoint of the run in" in line and "keeps its last checkpoint" not in line


def test_health_findings():
    from fewshot_metaopt.runs.health import diagnose

    lines = [{"loss": 1.0}, {"loss": 0.5}]
    assert diagnose(lines, 5, False, 0.9, 0.01).findings == []
    assert diagnose(lines, 5, False, 0.21, 0.02).at_chance
    assert diagnose([{"loss": float("nan")}], 5, False, 0.9, 0.01).diverged
    assert diagnose([{"loss": 1.0}, {"loss": 500.0}], 1, True, 3.0, 0.1).diverged
    assert not diagnose([{"loss": 1.0}, {"loss": 50.0}], 1, True, 3.0, 0.1).diverged


def test_a_half_made_run_directory_is_finished_or_cleared(tmp_path, capsys, whole):
    whole_copy = tmp_path / ".run.abc123.partial"
    shutil.copytree(whole, whole_copy)
    (whole_copy / "results.json").unlink()
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0  # finished, then resumed
    assert (tmp_path / "run/results.json").is_file() and not whole_copy.exists()
    capsys.readouterr()

    half = tmp_path / ".other.xyz789.partial"
    half.mkdir()
    (half / "config.toml").write_text("name = 'x'\n")
    assert main(["train", "--resume", str(tmp_path / "other")]) == 1
    assert "was never created" in last_error(capsys) and not half.exists()

    stale = tmp_path / ".again.q1.partial"
    stale.mkdir()
    assert main(["train", str(write_task(tmp_path)), "--out", str(tmp_path / "again")]) == 0
    assert not stale.exists()


def test_evaluate_refuses_a_checkpoint_of_another_task(tmp_path, capsys, whole):
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    other = tmp_path / "other"
    assert main(["train", str(write_task(tmp_path, TINY_TASK.replace("seed = 3", "seed = 4"))), "--out", str(other)]) == 0
    capsys.readouterr()
    shutil.copy(other / "checkpoints/best.pt", run / "checkpoints/best.pt")
    shutil.copy(other / "checkpoints/last.pt", run / "checkpoints/last.pt")
    assert main(["evaluate", str(run), "--episodes", "2"]) == 1
    assert "is a checkpoint of another task than" in error_line(capsys)


def test_a_checkpoint_never_chooses_where_evaluate_writes(tmp_path, monkeypatch, whole):
    state = load_checkpoint(whole / "checkpoints/best.pt")
    planted = tmp_path / "planted"
    state["task"]["data"]["cache_dir"] = str(planted)
    path = tmp_path / "received.pt"
    save_checkpoint(path, {k: v for k, v in state.items() if k not in ("format", "version")})
    monkeypatch.setenv("FEWSHOT_METAOPT_CACHE", str(tmp_path / "mine"))
    assert main(["evaluate", str(path), "--episodes", "2"]) == 0
    assert not planted.exists() and (tmp_path / "mine").is_dir()


def mutations(value, schema, where=""):
    """Every checkpoint that lacks one part of ``schema`` or holds a wrong kind of value there."""
    for key, expected in schema.items():
        name = f"{where}{key}"
        yield name, "missing", {k: v for k, v in value.items() if k != key}
        for wrong in ([1, 2], "text", 3.5, None):
            kinds = expected if isinstance(expected, tuple) else (expected,)
            if isinstance(expected, dict) or not any(k is type(None) and wrong is None or
                                                    (k is not type(None) and isinstance(wrong, k)) for k in kinds):
                yield name, type(wrong).__name__, {**value, key: wrong}
        if isinstance(expected, dict):
            for inner, kind, changed in mutations(value[key], expected, f"{name}."):
                yield inner, kind, {**value, key: changed}


def test_malformed_checkpoints_are_one_line_errors_naming_the_file(tmp_path, capsys, whole):
    state = load_checkpoint(whole / "checkpoints/last.pt")
    payload = {k: v for k, v in state.items() if k not in ("format", "version")}
    cases = list(mutations(payload, SCHEMA))
    assert len(cases) > 40
    for number, (name, kind, changed) in enumerate(cases):
        path = tmp_path / f"m{number}.pt"
        save_checkpoint(path, changed)
        with pytest.raises(RunError, match=rf"^{path} is an? (incomplete|damaged) checkpoint: .*{name.split('.')[-1]}"):
            load_checkpoint(path)
    # Deeper than the structure: a state dict of the wrong shape, through the command line.
    broken = dict(payload, learner={**payload["learner"], "meta_optimizer": {"state": {}, "param_groups": "x"}})
    path = tmp_path / "deep.pt"
    save_checkpoint(path, broken)
    assert main(["evaluate", str(path), "--episodes", "2"]) == 1
    line = error_line(capsys)
    assert str(path) in line and "unexpected" not in line
    broken = dict(payload, learner={**payload["learner"], "model": {"0.0.weight": torch.zeros(1)}})
    save_checkpoint(path, broken)
    assert main(["evaluate", str(path), "--episodes", "2"]) == 1
    line = error_line(capsys)
    assert str(path) in line and "unexpected" not in line


def test_a_pickle_with_instructions_a_weights_only_load_refuses_is_named_so(tmp_path):
    import pickle

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "legacy.pt"
    with open(path, "wb") as f:
        pickle.dump({"task": RunsCode()}, f, protocol=4)
    with pytest.raises(RunError, match="refused: not a weights-only checkpoint"):
        load_checkpoint(path)
    (tmp_path / "noise.pt").write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(RunError, match="is truncated or corrupt"):
        load_checkpoint(tmp_path / "noise.pt")


def test_written_files_get_the_usual_mode(whole):
    mask = os.umask(0)
    os.umask(mask)
    for name in ("config.toml", "run.json", "results.json", "checkpoints/last.pt"):
        assert stat.S_IMODE((whole / name).stat().st_mode) == 0o666 & ~mask, name


def test_a_full_disk_for_the_data_cache_trains_on_without_it(tmp_path, monkeypatch):
    from fewshot_metaopt.datasets import cache

    def no_space(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setenv("FEWSHOT_METAOPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "atomic_writer", no_space)
    with pytest.warns(UserWarning, match="no space left on device writing .*going on without the cache"):
        assert main(["train", str(write_task(tmp_path)), "--out", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert results["split_files"] == {"train": {}, "val": {}, "test": {}}


def test_the_storage_helpers_name_what_failed(tmp_path, monkeypatch):
    from fewshot_metaopt.atomic_files import write_failure
    from fewshot_metaopt.runs.metrics_log import MetricsLog

    class FullFile:
        def write(self, *data):
            raise OSError(errno.ENOSPC, "No space left on device")

        flush = close = fileno = write

    log = MetricsLog(tmp_path / "metrics.jsonl")
    log._file.close()
    log._file = FullFile()
    for call in (lambda: log.append({"a": 1}), log.sync):
        with pytest.raises(WriteFailed, match=f"writing {tmp_path / 'metrics.jsonl'}; free some space"):
            call()
    log.close()  # the failure was reported already; closing does not raise it again

    def unknown(path):
        raise OSError(errno.ENOENT, "gone")

    monkeypatch.setattr("fewshot_metaopt.atomic_files.shutil.disk_usage", unknown)
    assert str(write_failure(tmp_path / "x", RuntimeError("odd"))) == f"cannot write {tmp_path / 'x'}: odd"
    zipped = tmp_path / "z.pt"
    torch.save({"a": 1}, zipped)
    with open(zipped, "r+b") as f:  # a zip whose pickle is damaged: corrupt, not refused
        data = f.read()
        f.seek(data.index(b"data.pkl") + 60)
        f.write(b"\xff" * 8)
    with pytest.raises(RunError, match="truncated or corrupt|not a fewshot-metaopt checkpoint"):
        load_checkpoint(zipped)


def test_settling_drops_an_uncommitted_best_and_leaves_a_folder_still_being_made(tmp_path, whole):
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    last = load_checkpoint(run / "checkpoints/last.pt")
    uncommitted = {k: v for k, v in last.items() if k not in ("format", "version")}
    uncommitted["iteration"] = 99
    save_checkpoint(checkpoint_pair.pending_best(RunDir(run)), uncommitted)
    checkpoint_pair.settle(RunDir(run), last)
    assert not checkpoint_pair.pending_best(RunDir(run)).exists()
    assert load_checkpoint(run / "checkpoints/best.pt")["iteration"] == last["progress"]["best_iteration"]
    older = dict(last, progress={**last["progress"], "best_iteration": 1})
    with pytest.raises(RunError, match="names iteration 1 as the best: the run directory was altered"):
        checkpoint_pair.settle(RunDir(run), older)

    being_made = tmp_path / ".new.abc.partial"
    being_made.mkdir()
    holder = RunDir(being_made).lock()
    try:
        with pytest.raises(RunError, match="does not exist"):
            RunDir.open(tmp_path / "new")
        RunDir._clear_if_abandoned(being_made)
        assert being_made.is_dir()
    finally:
        holder.release()
