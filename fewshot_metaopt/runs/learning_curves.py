"""Learning curves of one run or several overlaid, from their ``metrics.jsonl``, as one PNG.

Four panels against iterations (or wall-clock minutes): the meta-loss (mean query loss after
adaptation, on a log scale), the score (training accuracy, validation score with its 95% CI,
the best checkpoint starred and the test result of the checkpoint tested as a diamond with
its CI), the meta-gradient's norm (log scale) and the meta learning rate. Each run has its
colour and a legend entry. Matplotlib's object API is used without pyplot, so no display is
needed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..atomic_files import atomic_writer
from .errors import RunError
from .metrics_log import read_metrics
from .run_dir import RunDir

# What the x axis can be: the metrics field behind it and its label.
X_AXES = {"iteration": ("iteration", "iteration"), "minutes": ("minutes", "wall-clock (minutes)")}
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
           "tab:cyan", "tab:gray")


@dataclass(frozen=True)
class RunCurves:
    """One run's metrics lines and, once it has finished, its ``results.json``."""

    label: str
    records: Sequence[dict[str, Any]]
    results: dict[str, Any] | None = None

    @property
    def metric(self) -> str | None:
        """What the run is scored by (``accuracy`` or ``mse``), None before it has validated or tested."""
        found = next((r["val_metric"] for r in self.records if "val_metric" in r), None)
        return found or (self.results or {}).get("metric")

    @property
    def best(self) -> dict[str, Any] | None:
        """The metrics line of the best checkpoint so far (the last one that improved)."""
        return next((r for r in reversed(self.records) if r.get("best")), None)


def read_run(run: RunDir, label: str) -> RunCurves:
    """``run``'s curves as far as it has logged them (a run still training included)."""
    results = json.loads(run.results.read_text(encoding="utf-8")) if run.results.is_file() else None
    return RunCurves(label, read_metrics(run.metrics), results)


def _finite(records: Sequence[dict[str, Any]], key: str, x: str) -> tuple[list[float], list[float]]:
    pairs = [(r[x], r[key]) for r in records
             if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) and r.get(x) is not None]
    return [a for a, _ in pairs], [b for _, b in pairs]


def _log_if_positive(ax, values: list[float]) -> None:
    """A log axis where every value is positive (losses, norms); linear otherwise."""
    from matplotlib.ticker import FormatStrFormatter

    if values and min(values) > 0:
        ax.set_yscale("log")
        if max(values) < 10 * min(values):
            # Within a decade the labelled ticks are minor ones, which read 1.1x10^0 by default.
            for formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
                formatter(FormatStrFormatter("%.3g"))


def _x_of(rows: Sequence[dict[str, Any]], iteration: int, x: str) -> float | None:
    row = next((r for r in rows if r["iteration"] == iteration), None)
    return None if row is None else row[x]


def _draw_run(axes, run: RunCurves, rows: Sequence[dict[str, Any]], x: str, colour: str) -> dict[str, list[float]]:
    """One run's lines on the four panels; returns the values drawn on the line panels."""
    loss, score, norm, lr = axes
    xs, losses = _finite(rows, "loss", x)
    loss.plot(xs, losses, color=colour, label=run.label)
    xs, accuracy = _finite(rows, "accuracy", x)
    if accuracy:
        score.plot(xs, accuracy, color=colour, alpha=0.45, linewidth=1)
    vx, vy = _finite(rows, "val_mean", x)
    if vy:
        _, ci = _finite(rows, "val_ci95", x)
        score.errorbar(vx, vy, yerr=ci if len(ci) == len(vy) else None, color=colour, marker="o", markersize=4,
                       linestyle="--", capsize=3)
    best = run.best
    if best is not None:
        score.plot([_x_of(rows, best["iteration"], x)], [best["val_mean"]], marker="*", markersize=15, color=colour,
                   markeredgecolor="black", linestyle="none", zorder=5)
    results = run.results
    if results is not None and isinstance(results.get("mean"), (int, float)):
        tested = results.get("checkpoint_iteration")
        at = _x_of(rows, tested, x) if tested is not None else None
        at = rows[-1][x] if at is None else at
        score.errorbar([at], [results["mean"]], yerr=[results.get("ci95") or 0.0], marker="D", markersize=8,
                       color=colour, markeredgecolor="black", capsize=4, linestyle="none", zorder=5)
    xs, norms = _finite(rows, "grad_norm", x)
    norm.plot(xs, norms, color=colour)
    xs, lrs = _finite(rows, "meta_lr", x)
    lr.plot(xs, lrs, color=colour)
    return {"loss": losses, "grad_norm": norms, "meta_lr": lrs}


def _style_legend(score, metric: str | None) -> None:
    """What each mark on the score panel means, in grey: the colours say which run."""
    from matplotlib.lines import Line2D

    grey = "0.35"
    handles = [
        Line2D([], [], color=grey, alpha=0.45, label="train (meta-batch)"),
        Line2D([], [], color=grey, marker="o", markersize=4, linestyle="--", label="validation (95% CI)"),
        Line2D([], [], color=grey, marker="*", markersize=12, markeredgecolor="black", linestyle="none",
               label="best checkpoint"),
        Line2D([], [], color=grey, marker="D", markersize=7, markeredgecolor="black", linestyle="none",
               label="test of the tested checkpoint (95% CI)"),
    ]
    if metric == "mse":
        handles = handles[1:]  # regression logs no training accuracy
    score.legend(handles=handles, fontsize=8, loc="best")


def curves_figure(runs: Sequence[RunCurves], title: str, x: str = "iteration"):
    """Every run's learning curves overlaid on four panels (see the module docstring), as a
    matplotlib ``Figure``: loss and score on top, gradient norm and meta lr below."""
    from matplotlib.figure import Figure  # imported here: it costs every command a second at startup

    if x not in X_AXES:
        raise RunError(f"unknown x axis {x!r}; choose one of {', '.join(X_AXES)}")
    for run in runs:
        if not run.records:
            raise RunError(f"no metrics to plot for {run.label}: the run has logged no iteration yet")
    metrics = {run.label: run.metric for run in runs if run.metric is not None}
    if len(set(metrics.values())) > 1:
        scored = ", ".join(f"{label} by {metric}" for label, metric in metrics.items())
        raise RunError(f"the runs are scored differently ({scored}); plot accuracy and mse runs apart")
    metric = next(iter(metrics.values()), None)
    field, xlabel = X_AXES[x]
    fig = Figure(figsize=(12, 8), layout="constrained")
    fig.suptitle(f"{title}: learning curves")
    (loss, score), (norm, lr) = fig.subplots(2, 2, sharex=True)
    drawn: dict[str, list[float]] = {"loss": [], "grad_norm": [], "meta_lr": []}
    for i, run in enumerate(runs):
        rows = [{**r, "minutes": r["wall_s"] / 60 if isinstance(r.get("wall_s"), (int, float)) else None}
                for r in run.records]
        for key, values in _draw_run((loss, score, norm, lr), run, rows, field, COLOURS[i % len(COLOURS)]).items():
            drawn[key] += values
    _log_if_positive(loss, drawn["loss"])
    _log_if_positive(norm, drawn["grad_norm"])
    loss.set(ylabel="meta-loss (query, after adaptation)")
    score.set(ylabel="mean squared error" if metric == "mse" else "accuracy")
    norm.set(xlabel=xlabel, ylabel="meta-gradient norm")
    lr.set(xlabel=xlabel, ylabel="meta learning rate")
    for ax in (loss, score, norm, lr):
        ax.grid(alpha=0.3)
    if not drawn["meta_lr"]:  # logs written before meta_lr was
        lr.text(0.5, 0.5, "not logged by this run", transform=lr.transAxes, ha="center", va="center", color="0.4")
    if len(runs) > 1:
        loss.legend(fontsize=8, loc="best")
    _style_legend(score, metric)
    return fig


def plot_runs(runs: Sequence[RunCurves], path: Path, title: str, x: str = "iteration") -> Path:
    """:func:`curves_figure` written to ``path`` as a PNG (atomically)."""
    fig = curves_figure(runs, title, x)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as f:
        fig.savefig(f, format="png", dpi=110)
    return path


def plot_learning_curves(records: Sequence[dict[str, Any]], path: Path, title: str,
                         results: dict[str, Any] | None = None, x: str = "iteration") -> Path:
    """One run's learning curves (``results``: its ``results.json``, for the test marker)."""
    return plot_runs([RunCurves(title, records, results)], path, title, x)
