"""plot: log-scale loss, grad-norm and meta-lr panels, the best checkpoint and the test result
marked, several runs overlaid with a legend."""

import json
from pathlib import Path

import pytest

from fewshot_metaopt.cli import main
from fewshot_metaopt.cli.plot_command import labels
from fewshot_metaopt.runs.errors import RunError
from fewshot_metaopt.runs.learning_curves import RunCurves, curves_figure, plot_learning_curves
from fewshot_metaopt.runs.run_dir import RunDir
from fewshot_metaopt.runs.task_config import load_task
from test_cli import png_size, write_task


def records(iterations=6, validate_every=3, best_at=(3,), loss=1.0, metric="accuracy", meta_lr=True):
    """Metrics lines as the trainer writes them: validation every ``validate_every``
    iterations, an improvement at the iterations in ``best_at``."""
    lines = []
    for i in range(1, iterations + 1):
        line = {"iteration": i, "loss": loss / i, "accuracy": None if metric == "mse" else 0.3 + 0.05 * i,
                "grad_norm": 10.0 / i, "skipped_tasks": 0, "wall_s": 30.0 * i}
        if meta_lr:
            line["meta_lr"] = 1e-3 * (1 - i / (2 * iterations))
        if i % validate_every == 0:
            line.update(val_metric=metric, val_mean=0.4 + 0.01 * i, val_ci95=0.05, best=i in best_at)
        lines.append(line)
    return lines


RESULTS = {"metric": "accuracy", "mean": 0.42, "ci95": 0.03, "checkpoint_iteration": 3}


def marks(ax, marker: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for line in ax.lines if line.get_marker() == marker
            for x, y in zip(line.get_xdata(), line.get_ydata())]


def test_the_panels_mark_the_best_checkpoint_and_the_test_on_a_log_loss():
    fig = curves_figure([RunCurves("tiny", records(), RESULTS)], "tiny")
    loss, score, norm, lr = fig.axes[:4]
    assert fig._suptitle.get_text() == "tiny: learning curves"
    assert loss.get_yscale() == "log" and norm.get_yscale() == "log" and lr.get_yscale() == "linear"
    assert [loss.get_ylabel(), score.get_ylabel(), norm.get_ylabel(), lr.get_ylabel()] == [
        "meta-loss (query, after adaptation)", "accuracy", "meta-gradient norm", "meta learning rate"]
    assert norm.get_xlabel() == lr.get_xlabel() == "iteration"
    assert marks(score, "*") == [(3.0, pytest.approx(0.43))]
    assert marks(score, "D") == [(3.0, 0.42)]
    assert [t.get_text() for t in score.get_legend().get_texts()] == [
        "train (meta-batch)", "validation (95% CI)", "best checkpoint", "test of the tested checkpoint (95% CI)"]
    assert loss.get_legend() is None  # one run: its name is the title
    assert list(lr.lines[0].get_ydata()) == pytest.approx([1e-3 * (1 - i / 12) for i in range(1, 7)])


def test_several_runs_are_overlaid_with_a_legend_and_their_own_colours():
    runs = [RunCurves("a", records(), RESULTS), RunCurves("b", records(best_at=(3, 6), loss=2.0)),
            RunCurves("c", records(validate_every=100))]
    fig = curves_figure(runs, "3 runs", x="minutes")
    loss, score = fig.axes[:2]
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["a", "b", "c"]
    assert len({line.get_color() for line in loss.lines}) == 3
    # The last improvement is the best checkpoint; minutes of training on the x axis.
    assert sorted(marks(score, "*")) == [(1.5, pytest.approx(0.43)), (3.0, pytest.approx(0.46))]
    assert marks(score, "D") == [(1.5, 0.42)]
    assert fig.axes[2].get_xlabel() == "wall-clock (minutes)"


def test_a_loss_that_is_not_positive_stays_linear_and_an_old_log_says_what_it_lacks():
    lines = records(meta_lr=False)
    lines[0]["loss"] = -0.5  # a task loss of the user's own can go below zero
    lines[1]["grad_norm"] = float("nan")  # skipped, not drawn
    fig = curves_figure([RunCurves("own loss", lines)], "own loss")
    loss, _, norm, lr = fig.axes[:4]
    assert loss.get_yscale() == "linear" and norm.get_yscale() == "log"
    assert len(norm.lines[0].get_xdata()) == 5
    assert [t.get_text() for t in lr.texts] == ["not logged by this run"]


def test_regression_runs_are_scored_by_mse_and_not_mixed_with_accuracy():
    fig = curves_figure([RunCurves("sine", records(metric="mse"), {**RESULTS, "metric": "mse"})], "sine")
    score = fig.axes[1]
    assert score.get_ylabel() == "mean squared error"
    assert "train (meta-batch)" not in [t.get_text() for t in score.get_legend().get_texts()]
    with pytest.raises(RunError, match=r"^the runs are scored differently \(sine by mse, omniglot by accuracy\); "):
        curves_figure([RunCurves("sine", records(metric="mse")), RunCurves("omniglot", records())], "2 runs")


def test_what_cannot_be_plotted_is_one_line():
    with pytest.raises(RunError, match="^no metrics to plot for b: the run has logged no iteration yet$"):
        curves_figure([RunCurves("a", records()), RunCurves("b", [])], "2 runs")
    with pytest.raises(RunError, match="^unknown x axis 'hours'; choose one of iteration, minutes$"):
        curves_figure([RunCurves("a", records())], "a", x="hours")


def test_the_one_run_plot_train_draws_takes_the_results_too(tmp_path):
    assert png_size(plot_learning_curves(records(), tmp_path / "curves.png", "tiny", RESULTS))[0] > 1000


def run_dir(tmp_path, name: str, lines, results=None) -> Path:
    """A run directory holding the given metrics (and results), as a run leaves it."""
    task = load_task(write_task(tmp_path, f"name = '{name}'\n[train]\niterations = 6\n", f"{name}.toml"))
    run = RunDir.create(tmp_path / "runs" / name, task, ["fewshot-metaopt", "train"])
    run.metrics.write_text("".join(json.dumps(line) + "\n" for line in lines))
    if results is not None:
        run.results.write_text(json.dumps(results))
    return run.path


def test_plot_overlays_the_run_directories_it_is_given(tmp_path, capsys, monkeypatch):
    first = run_dir(tmp_path, "first", records(), RESULTS)
    second = run_dir(tmp_path, "second", records(best_at=(6,)))
    monkeypatch.chdir(tmp_path)
    assert main(["plot", str(first), str(second)]) == 0
    assert capsys.readouterr().out.strip() == "plot: learning_curves.png"
    assert png_size(tmp_path / "learning_curves.png")[0] > 1000
    assert main(["plot", str(first), str(second), "--x", "minutes", "--png", str(tmp_path / "both.png")]) == 0
    png_size(tmp_path / "both.png")
    assert main(["plot", str(first)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"plot: {first / 'plots' / 'learning_curves.png'}")
    png_size(first / "plots" / "learning_curves.png")


def test_plot_names_the_run_it_cannot_draw(tmp_path, capsys):
    first = run_dir(tmp_path, "first", records())
    empty = run_dir(tmp_path, "empty", [])
    assert main(["plot", str(first), str(empty)]) == 1
    assert capsys.readouterr().err.strip() == (
        "fewshot-metaopt: error: no metrics to plot for empty: the run has logged no iteration yet")
    assert main(["plot", str(first), str(tmp_path / "absent")]) == 1
    assert "is not a run directory" in capsys.readouterr().err


def test_runs_are_named_by_their_folder_unless_two_folders_share_a_name():
    assert labels(["runs/a", "runs/b"]) == ["a", "b"]
    assert labels(["x/run", "y/run", "z/other"]) == ["x/run", "y/run", "other"]


def test_the_run_s_own_plot_carries_its_test_result(tmp_path, monkeypatch):
    """train() draws its learning curves with results.json, so the test marker is on them."""
    from fewshot_metaopt.runs import load_task, train, trainer
    from test_cli import write_task

    drawn = {}

    def capture(records, path, title, results=None, x="iteration"):
        drawn.update(path=path, results=results)
        return path

    monkeypatch.setattr(trainer, "plot_learning_curves", capture)
    run = train(load_task(write_task(tmp_path)), tmp_path / "run")
    written = json.loads((run.path / "results.json").read_text())
    assert drawn["path"] == run.path / "plots" / "learning_curves.png"
    assert drawn["results"]["mean"] == written["mean"] and drawn["results"]["ci95"] == written["ci95"]
