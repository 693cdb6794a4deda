"""The fewshot-metaopt command line end to end, in process, on tiny generated Glyphs tasks."""

import argparse
import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from fewshot_metaopt.cli import main
from fewshot_metaopt.cli.main import build_parser
from fewshot_metaopt.runs.data_sources import sha256_of
from fewshot_metaopt.runs.trainer import Trainer

TINY_TASK = """
name = "tiny"
seed = 3

[data]
dataset = "glyphs"
num_characters = 40
samples_per_class = 10
image_size = 16

[episodes]
ways = 3
shots = 1
queries = 2

[model]
name = "conv4"
channels = 4

[learner]
algorithm = "meta_sgd"
inner_lr = 0.3
inner_steps_eval = 2
meta_lr = 0.01

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


def write_task(folder: Path, text: str = TINY_TASK, name: str = "tiny.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def train(tmp_path, *extra, out="run"):
    return main(["train", str(write_task(tmp_path)), "--out", str(tmp_path / out), *extra])


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def error_line(capsys, prog: str = "fewshot-metaopt") -> str:
    """The one line an error printed (after any progress bar drawn before it)."""
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("meta-train:")]
    assert len(err) == 1, err
    assert err[0].startswith(f"{prog}: error: ")
    return err[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny run trained to the end, for the tests that only read it (or copy it first):
    its directory and what train printed."""
    folder = tmp_path_factory.mktemp("finished")
    printed = io.StringIO()
    # Set here as well: module fixtures start before the suite's per-test private cache.
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setenv("FEWSHOT_METAOPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        assert main(["train", str(write_task(folder)), "--out", str(folder / "run")]) == 0
    return folder / "run", printed.getvalue()


def copied(finished, tmp_path) -> Path:
    return Path(shutil.copytree(finished[0], tmp_path / "run"))


def test_train_writes_a_complete_run_directory(finished):
    run, out = finished
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoints", "config.toml", "metrics.jsonl", "plots", "results.json", "run.json"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [1, 2, 3, 4, 5, 6]
    validated = [line for line in lines if "val_mean" in line]
    assert [line["iteration"] for line in validated] == [3, 6]
    assert all(0 <= line["accuracy"] <= 1 and line["loss"] > 0 for line in lines)
    results = json.loads((run / "results.json").read_text())
    assert results["episodes"] == 4 and results["seed"] == 3 and results["metric"] == "accuracy"
    assert 0 <= results["mean"] <= 1 and results["ci95"] >= 0
    best = max(validated, key=lambda line: line["val_mean"])
    assert results["checkpoint"] == "checkpoints/best.pt"
    assert results["checkpoint_iteration"] == best["iteration"] == results["best_validation"]["iteration"]
    assert results["iterations"] == 6 and results["inner_steps"] == 2
    assert results["command"].startswith("fewshot-metaopt train ") and results["resumed"] == []
    assert results["package_version"] and results["torch_version"] == torch.__version__
    for role in ("train", "val", "test"):
        ((path, digest),) = results["split_files"][role].items()
        assert f"glyphs-{role}-" in path and sha256_of(Path(path)) == digest
    assert png_size(run / "plots" / "learning_curves.png")[0] > 500
    assert re.search(r"test accuracy \d+\.\d\d% ± \d+\.\d\d% \(95% CI, 4 episodes\)", out)
    assert "budget: 6 iterations x 2 episodes; validation every 3 iterations on 3 episodes; test on 4" in out
    info = json.loads((run / "run.json").read_text())
    assert info["command"][:2] == ["fewshot-metaopt", "train"]


def test_the_resolved_config_is_itself_a_task_file(tmp_path, capsys):
    assert train(tmp_path, "--set", "train.iterations=2", "--set", "validation.every=0") == 0
    assert "budget: 2 iterations x 2 episodes; no validation; test on 4" in capsys.readouterr().out
    assert main(["train", str(tmp_path / "run" / "config.toml"), "--out", str(tmp_path / "again")]) == 0
    first = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    second = torch.load(tmp_path / "again/checkpoints/last.pt", weights_only=True)
    assert first["task"] == second["task"]
    for name, tensor in first["learner"]["model"].items():
        assert torch.equal(tensor, second["learner"]["model"][name])
    # No validation: the latest checkpoint stands for the run.
    assert json.loads((tmp_path / "run/results.json").read_text())["checkpoint"] == "checkpoints/last.pt"


def test_evaluate_a_run_directory_and_a_checkpoint_file(finished, capsys):
    run = finished[0]
    assert main(["evaluate", str(run), "--episodes", "5"]) == 0
    out = capsys.readouterr().out
    assert "best.pt" in out and "test split 'test'" in out
    assert re.search(r"accuracy \d+\.\d\d% ± \d+\.\d\d% \(95% CI, 5 episodes\)", out)
    assert main(["evaluate", str(run / "checkpoints/last.pt"), "--split", "val", "--episodes", "3"]) == 0
    out = capsys.readouterr().out
    assert "(iteration 6)" in out and "val split 'val'" in out


def test_evaluate_repeats_the_final_test_of_train(finished, capsys):
    results = json.loads((finished[0] / "results.json").read_text())
    assert main(["evaluate", str(finished[0]), "--episodes", "4"]) == 0
    shown = re.search(r"accuracy (\d+\.\d\d)%", capsys.readouterr().out).group(1)
    assert shown == f"{100 * results['mean']:.2f}"


def test_inspect_lr_prints_a_table_and_draws_a_png(finished, tmp_path, capsys):
    copied(finished, tmp_path)
    assert main(["inspect-lr", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "meta_sgd, learned" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("block", "head."))]
    assert [(r[0], r[10]) for r in rows] == list(_tiny_model_names().items())
    for row in rows:
        mean, low, *quantiles, high = map(float, row[2:10])
        assert low <= quantiles[0] <= quantiles[2] <= quantiles[4] <= high and low <= mean <= high
    assert png_size(tmp_path / "run/plots/learned_lr.png")[0] > 300
    checkpoint = tmp_path / "run/checkpoints/last.pt"
    assert main(["inspect-lr", str(checkpoint)]) == 0
    png_size(checkpoint.with_name("last-learned_lr.png"))
    assert main(["inspect-lr", str(checkpoint), "--png", str(tmp_path / "lr.png")]) == 0
    png_size(tmp_path / "lr.png")


def _tiny_model_names() -> dict[str, str]:
    """Readable name by parameter name."""
    from fewshot_metaopt.models import conv4, parameter_display_names

    return {shown: name for name, shown in parameter_display_names(conv4(3, hidden=4, image_size=16)).items()}


def test_inspect_lr_of_maml_reports_the_fixed_rate(tmp_path, capsys):
    assert train(tmp_path, "--set", "learner.algorithm=maml", "--set", "train.iterations=2") == 0
    capsys.readouterr()
    assert main(["inspect-lr", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "fixed (not learned)" in out
    assert all(line.split()[2:10] == ["0.3"] * 8 for line in out.splitlines() if line.startswith("head."))


def test_a_learned_optimizer_trains_and_reports_its_effective_rates(tmp_path, capsys):
    assert train(tmp_path, "--set", "inner_optimizer.method=lstm", "--set", "inner_optimizer.hidden_size=4",
                 "--set", "learner.algorithm=maml", "--set", "train.iterations=2") == 0
    capsys.readouterr()
    assert main(["inspect-lr", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "maml with lstm, effective lr" in out
    assert len([line for line in out.splitlines() if line.startswith(("block1.", "head."))]) == 6
    png_size(tmp_path / "run/plots/learned_lr.png")


def test_plot_draws_the_learning_curves(finished, tmp_path, capsys):
    copied(finished, tmp_path)
    (tmp_path / "run/plots/learning_curves.png").unlink()
    assert main(["plot", str(tmp_path / "run")]) == 0
    assert png_size(tmp_path / "run/plots/learning_curves.png")[0] > 500
    assert main(["plot", str(tmp_path / "run"), "--png", str(tmp_path / "curves.png")]) == 0
    png_size(tmp_path / "curves.png")


def test_sinusoid_regression_reports_mse(tmp_path, capsys):
    task = """
name = "sine"
[data]
dataset = "sinusoid"
[episodes]
shots = 3
queries = 3
eval_queries = 10
[model]
name = "mlp"
hidden_layers = [8]
[learner]
inner_lr = 0.01
[meta_schedule]
name = "cosine"
warmup_steps = 1
[train]
iterations = 4
meta_batch = 2
log_every = 2
[validation]
every = 2
episodes = 3
[evaluation]
episodes = 5
"""
    assert main(["train", str(write_task(tmp_path, task)), "--out", str(tmp_path / "run")]) == 0
    assert re.search(r"test mse \d+\.\d\d ± \d+\.\d\d \(95% CI, 5 episodes\)", capsys.readouterr().out)
    lines = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert all(line["accuracy"] is None and line["val_metric"] == "mse" for line in lines)
    # Cosine over 4 iterations after one warm-up step: 1.0 after iteration 1, 0.75 after 2, 0 after 4.
    assert [line["meta_lr"] for line in lines] == pytest.approx([0.00075, 0.0])
    png_size(tmp_path / "run/plots/learning_curves.png")


def test_a_minutes_budget_stops_training(tmp_path, capsys):
    assert train(tmp_path, "--set", "train.minutes=0.0001", "--set", "train.iterations=1000") == 0
    lines = (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["val_mean"] >= 0


def test_the_default_run_directory_is_named_after_the_task(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(write_task(tmp_path)), "--set", "train.iterations=1"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"tiny-\d{8}-\d{6}", run.name)
    assert (run / "results.json").is_file()


def test_threads_option_sets_torch_threads(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        assert main(["evaluate", str(tmp_path), "--threads", "1"]) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------- bad input


def test_a_missing_task_file_is_one_line_and_writes_nothing(tmp_path, capsys):
    assert main(["train", str(tmp_path / "absent.toml"), "--out", str(tmp_path / "run")]) == 1
    assert error_line(capsys).endswith(f"task file {tmp_path / 'absent.toml'} does not exist")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, message", [
    ("learner.inner_lrr=0.1", "unknown key 'learner.inner_lrr' in --set learner.inner_lrr=0.1"),
    ("learner.inner_lr=fast", "learner.inner_lr in --set learner.inner_lr=fast must be a number, got 'fast'"),
    ("learner.algorithm=leo", "unknown algorithm 'leo'"),
    ("inner_optimizer.method=adagrad", "unknown inner_optimizer.method 'adagrad'"),
    ("inner_optimizer.method=warp_grad", 'meta-trains warp layers alone; a run meta-learns a warped model with '
                                         'learner.algorithm = "warp_maml" or "warp_leap"'),
    ("learner.algorithm=warp_maml", "learner.algorithm 'warp_maml' needs a model with warp layers: "
                                    "model.name 'warp_conv4', got 'conv4'"),
    ("model.name=warp_conv4", "model.name 'warp_conv4' is meta-learned by learner.algorithm 'warp_maml' or "
                              "'warp_leap', got 'meta_sgd'"),
])
def test_bad_settings_fail_before_any_file_is_written(tmp_path, capsys, override, message):
    assert train(tmp_path, "--set", override) == 1
    assert message in error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]


def test_an_unknown_key_in_the_file_names_key_and_file(tmp_path, capsys):
    path = write_task(tmp_path, TINY_TASK.replace("meta_lr = 0.01", "meta_lr = 0.01\nmeta_lrr = 0.1"))
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 1
    assert f"unknown key 'learner.meta_lrr' in {path}" in error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_omniglot_without_its_files_says_which_file_and_how_to_get_it(tmp_path, capsys):
    task = TINY_TASK.replace('dataset = "glyphs"\nnum_characters = 40\nsamples_per_class = 10\nimage_size = 16',
                             'dataset = "omniglot"')
    path = write_task(tmp_path, task)
    assert main(["train", str(path)]) == 1
    assert "needs its folder: pass --data-root DIR" in error_line(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", str(path), "--data-root", str(empty)]) == 1
    line = error_line(capsys)
    assert f"{empty} lacks images_background.zip" in line and "--set data.download=true" in line
    for stem in ("images_background", "images_evaluation"):
        (empty / stem).mkdir()
    assert main(["train", str(path), "--data-root", str(empty)]) == 1
    assert "splits/vinyals/train.txt is missing" in error_line(capsys)
    assert main(["train", str(path), "--data-root", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_miniimagenet_without_its_files_says_how_to_get_them(tmp_path, capsys):
    task = TINY_TASK.replace('dataset = "glyphs"\nnum_characters = 40\nsamples_per_class = 10\nimage_size = 16',
                             'dataset = "miniimagenet"')
    assert main(["train", str(write_task(tmp_path, task)), "--data-root", str(tmp_path)]) == 1
    line = error_line(capsys)
    assert "no miniImageNet data for split 'train'" in line and "cannot be downloaded automatically" in line


def test_data_a_split_cannot_serve_is_one_line(tmp_path, capsys):
    assert train(tmp_path, "--set", "episodes.ways=30") == 1
    assert "ways=30 exceeds the 24 classes of Glyphs split 'train'" in error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_out_must_not_hold_anything_yet(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mine.txt").write_text("keep")
    assert train(tmp_path) == 1
    assert "already exists; continue that run with --resume" in error_line(capsys)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["mine.txt"]


def test_resume_needs_a_run_directory(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 1
    assert "is not a run directory: it has no config.toml or run.json" in error_line(capsys)
    assert main(["train", "--resume", str(tmp_path / "absent")]) == 1
    assert "is not a run directory (it does not exist)" in error_line(capsys)
    task = write_task(tmp_path)
    assert main(["train", "--resume", str(task)]) == 1
    assert "is not a run directory (it is a file)" in error_line(capsys)
    assert main(["train", str(task), "--resume", str(tmp_path)]) == 1
    assert "give it no TASKFILE, --set or --out" in error_line(capsys)


def test_evaluate_and_plot_refuse_what_is_not_a_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "absent.pt")]) == 1
    assert error_line(capsys).endswith(f"checkpoint {tmp_path / 'absent.pt'} does not exist")
    assert main(["plot", str(tmp_path)]) == 1
    assert "not a run directory" in error_line(capsys)


def test_a_run_without_checkpoints_or_metrics_is_reported(tmp_path, capsys, monkeypatch):
    def stop(self, run):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train", stop)
    assert train(tmp_path) == 130
    assert capsys.readouterr().err.strip() == "fewshot-metaopt: interrupted"
    assert main(["evaluate", str(tmp_path / "run")]) == 1
    assert error_line(capsys).endswith("has no checkpoint yet")
    assert main(["plot", str(tmp_path / "run")]) == 1
    assert "has logged nothing yet" in error_line(capsys)


def test_usage_errors_are_one_line_with_status_2(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--episodes=3"])
    assert stop.value.code == 2
    line = error_line(capsys)
    assert "unrecognized arguments: --episodes=3" in line and "--help" in line
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "x", "--episodes", "0"])
    assert stop.value.code == 2
    assert "expected a positive integer, got '0'" in error_line(capsys, "fewshot-metaopt evaluate")
    with pytest.raises(SystemExit) as stop:
        main([])
    assert stop.value.code == 2


def test_help_says_what_every_option_does(capsys):
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(commands.choices) == ["episodes", "evaluate", "inspect-lr", "plot", "tasks", "train", "tune"]
    for name, parser in commands.choices.items():
        assert parser.description
        for action in parser._actions:
            assert action.help, (name, action.dest)
        with pytest.raises(SystemExit) as stop:
            main([name, "--help"])
        assert stop.value.code == 0 and parser.description.split()[0] in capsys.readouterr().out


def test_unexpected_failures_are_one_line_unless_debugging(tmp_path, capsys, monkeypatch):
    def broken(self, run):
        raise KeyError("boom")

    monkeypatch.setattr(Trainer, "train", broken)
    assert train(tmp_path) == 1
    assert error_line(capsys).endswith("unexpected KeyError: 'boom' (rerun with --debug for the traceback)")
    with pytest.raises(KeyError):
        main(["--debug", "train", str(write_task(tmp_path)), "--out", str(tmp_path / "other")])


def test_a_diverging_run_keeps_its_checkpoint(tmp_path, capsys, monkeypatch):
    from fewshot_metaopt.learners import GradientMetaLearner

    calls = []
    real = GradientMetaLearner.meta_train_step

    def diverge(self, episodes):
        calls.append(1)
        if len(calls) > 2:
            raise FloatingPointError("meta-gradient norm is nan at iteration 2")
        return real(self, episodes)

    monkeypatch.setattr(GradientMetaLearner, "meta_train_step", diverge)
    assert train(tmp_path) == 1
    line = error_line(capsys)
    assert "meta-gradient norm is nan" in line and "keeps its last checkpoint" in line
    assert torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["iteration"] == 2


def test_an_interrupt_while_debugging_shows_the_traceback(tmp_path, capsys, monkeypatch):
    def stop(self, run):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train", stop)
    with pytest.raises(KeyboardInterrupt):
        main(["--debug", "train", str(write_task(tmp_path)), "--out", str(tmp_path / "run")])


def test_a_count_that_is_not_a_number_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "x", "--episodes", "many"])
    assert stop.value.code == 2
    assert "expected a positive integer, got 'many'" in error_line(capsys, "fewshot-metaopt evaluate")


def test_a_checkpoint_whose_weights_do_not_fit_its_task_is_refused(finished, tmp_path, capsys):
    from fewshot_metaopt.runs.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(finished[0] / "checkpoints/last.pt")
    state["task"]["model"]["channels"] = 8
    save_checkpoint(tmp_path / "odd.pt", state)
    assert main(["evaluate", str(tmp_path / "odd.pt")]) == 1
    assert "odd.pt: its weights do not fit the model its task describes (size mismatch for 0.0.weight" in error_line(capsys)


def test_plot_of_an_empty_log_says_so(tmp_path, capsys):
    from fewshot_metaopt.runs.run_dir import RunDir
    from fewshot_metaopt.runs.task_config import load_task

    run = RunDir.create(tmp_path / "run", load_task(write_task(tmp_path)), ["fewshot-metaopt", "train"])
    run.metrics.write_text("")
    assert main(["plot", str(run.path)]) == 1
    assert "no metrics to plot for tiny: the run has logged no iteration yet" in error_line(capsys)


def test_plots_draw_what_there_is(tmp_path):
    from fewshot_metaopt.runs.learning_curves import plot_learning_curves
    from fewshot_metaopt.runs.lr_report import plot_lrs

    records = [{"iteration": i, "loss": 1.0 / i, "accuracy": None, "wall_s": 0.5 * i} for i in (1, 2, 3)]
    png_size(plot_learning_curves(records, tmp_path / "a" / "curves.png", "regression without validation"))
    spread = {"w": torch.linspace(0.1, 0.2, 10), "b": torch.tensor([0.3, 0.4])}
    png_size(plot_lrs(spread, tmp_path / "b" / "lr.png", "every tensor spread"))
