"""Warp-Grad runs from task files end to end: training, the replay buffer in weights-only
checkpoints, bit-exact resumption, evaluation and the effective learning rates of the warps."""

import json
import re

import pytest
import torch

from fewshot_metaopt.cli import main
from fewshot_metaopt.runs.checkpoint import load_checkpoint
from fewshot_metaopt.warp import warp_conv4
from test_cli import TINY_TASK, error_line, write_task
from test_cli_resume import (assert_same_run,
                             train_whole_and_interrupted_then_resumed)

WARP_MAML = (TINY_TASK.replace('name = "conv4"', 'name = "warp_conv4"')
             .replace('algorithm = "meta_sgd"', 'algorithm = "warp_maml"\nwarp_points = 2\nwarp_buffer_size = 3'))
# Regression episodes carry task_params, which the buffer's episodes must keep through a checkpoint.
WARP_LEAP_SINE = """
name = "sine"
seed = 1
[data]
dataset = "sinusoid"
[episodes]
shots = 3
queries = 3
[model]
name = "warp_mlp"
hidden_layers = [8]
[learner]
algorithm = "warp_leap"
inner_lr = 0.01
inner_steps = 2
warp_points = 2
warp_buffer_size = 5
[train]
iterations = 6
meta_batch = 2
log_every = 1
checkpoint_every = 2
[validation]
every = 3
episodes = 3
[evaluation]
episodes = 4
"""


@pytest.fixture(scope="module")
def warp_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("warp")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEWSHOT_METAOPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        assert main(["train", str(write_task(folder, WARP_MAML)), "--out", str(folder / "run")]) == 0
    return folder / "run"


def test_a_warp_maml_task_trains_into_a_run_directory(warp_run):
    results = json.loads((warp_run / "results.json").read_text())
    assert results["iterations"] == 6 and results["episodes"] == 4 and 0 <= results["mean"] <= 1
    state = load_checkpoint(warp_run / "checkpoints" / "last.pt")  # weights_only, nothing allow-listed
    buffer = state["learner"]["warp"]["buffer"]
    # 6 iterations x 2 tasks x 1 inner step visit 12 points; the buffer keeps the 3 newest.
    assert buffer["size"] == 3 and len(buffer["points"]) == 3
    names = warp_conv4(3, hidden=4, image_size=16).adapted_parameter_names()
    for point in buffer["points"]:
        assert sorted(point["params"]) == sorted(names)
        assert point["episode"]["support_x"].shape == (3, 1, 16, 16)
    stored = json.loads((warp_run / "run.json").read_text())
    assert stored["command"][:2] == ["fewshot-metaopt", "train"]


def test_train_says_how_many_parameters_are_warps(tmp_path, capsys):
    task = write_task(tmp_path, WARP_MAML.replace("iterations = 6", "iterations = 1"))
    assert main(["train", str(task), "--out", str(tmp_path / "run")]) == 0
    warps = sum(p.numel() for p in warp_conv4(3, hidden=4, image_size=16).warp_parameters())
    assert f"({warps:,} in warp layers); algorithm warp_maml, inner optimizer sgd" in capsys.readouterr().out


def test_evaluate_repeats_the_final_test_of_a_warp_run(warp_run, capsys):
    results = json.loads((warp_run / "results.json").read_text())
    assert main(["evaluate", str(warp_run), "--episodes", "4"]) == 0
    shown = re.search(r"accuracy (\d+\.\d\d)%", capsys.readouterr().out).group(1)
    assert shown == f"{100 * results['mean']:.2f}"


def _lr_rows(out: str) -> dict[str, float]:
    return {line.split()[0]: float(line.split()[2]) for line in out.splitlines() if line.startswith("layers.")}


def test_inspect_lr_shows_how_the_trained_warps_rescale_the_inner_lr(warp_run, tmp_path, capsys):
    assert main(["inspect-lr", str(warp_run), "--png", str(tmp_path / "lr.png")]) == 0
    out = capsys.readouterr().out
    assert "warp_maml, effective lr of the warped gradient (inner lr 0.3) on one validation episode" in out
    rows = _lr_rows(out)
    assert list(rows) == warp_conv4(3, hidden=4, image_size=16).adapted_parameter_names()
    assert all(value > 0 for value in rows.values()) and any(abs(value - 0.3) > 1e-3 for value in rows.values())
    assert (tmp_path / "lr.png").stat().st_size > 0


def inspect_lr_after_one_iteration(tmp_path, capsys, setting: str) -> str:
    """``inspect-lr``'s output for the Warp-MAML task trained one iteration with ``setting``."""
    task = write_task(tmp_path, WARP_MAML)
    assert main(["train", str(task), "--out", str(tmp_path / "run"), "--set", setting,
                 "--set", "train.iterations=1", "--set", "validation.every=0"]) == 0
    capsys.readouterr()
    assert main(["inspect-lr", str(tmp_path / "run")]) == 0
    return capsys.readouterr().out


def test_untrained_identity_warps_leave_the_inner_lr_as_it_is(tmp_path, capsys):
    out = inspect_lr_after_one_iteration(tmp_path, capsys, "learner.meta_lr=0")
    assert set(_lr_rows(out).values()) == {0.3}


def assert_same_buffer(a, b) -> None:
    for name in ("last.pt", "best.pt"):
        x, y = (torch.load(run / "checkpoints" / name, weights_only=True)["learner"]["warp"]["buffer"] for run in (a, b))
        assert torch.equal(x["generator"], y["generator"]) and len(x["points"]) == len(y["points"]) > 0
        for p, q in zip(x["points"], y["points"]):
            assert p["step"] == q["step"] and p["params"].keys() == q["params"].keys()
            assert all(torch.equal(p["params"][n], q["params"][n]) for n in p["params"])
            for field, value in p["episode"].items():
                assert (value is None and q["episode"][field] is None) or torch.equal(value, q["episode"][field])


@pytest.mark.parametrize("text", [WARP_MAML, WARP_LEAP_SINE], ids=["warp_maml-conv4", "warp_leap-mlp"])
def test_an_interrupted_warp_run_resumes_in_process_to_the_same_end(tmp_path, capsys, monkeypatch, text):
    train_whole_and_interrupted_then_resumed(write_task(tmp_path, text), tmp_path, monkeypatch)
    assert_same_run(tmp_path / "whole", tmp_path / "cut")
    assert_same_buffer(tmp_path / "whole", tmp_path / "cut")


def test_a_checkpoint_without_its_buffer_is_refused_in_one_line(warp_run, tmp_path, capsys):
    state = torch.load(warp_run / "checkpoints" / "last.pt", weights_only=True)
    del state["learner"]["warp"]
    torch.save(state, tmp_path / "stripped.pt")
    assert main(["evaluate", str(tmp_path / "stripped.pt")]) == 1
    assert "its weights do not fit the model its task describes (this state has no Warp-Grad replay buffer" in (
        error_line(capsys))


def test_learned_inner_lrs_of_warp_maml_are_reported_as_learned(tmp_path, capsys):
    out = inspect_lr_after_one_iteration(tmp_path, capsys, "learner.lr_granularity=scalar")
    assert "inner learning rates of warp_maml, learned" in out
    rows = _lr_rows(out)
    assert list(rows) == warp_conv4(3, hidden=4, image_size=16).adapted_parameter_names()
    assert len(set(rows.values())) == 1 and rows["layers.0.0.weight"] != 0.3  # one scalar, moved by one meta-step
