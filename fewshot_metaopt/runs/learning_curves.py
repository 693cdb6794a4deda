"""Learning curves of a run, from its ``metrics.jsonl``, as one PNG.

Top row: the meta-loss (mean query loss after adaptation) against iterations and against
wall-clock time; bottom row: training accuracy and validation score (with its 95% CI) on the
same two axes. Matplotlib's object API is used without pyplot, so no display is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


from ..atomic_files import atomic_writer
from .errors import RunError


def _series(records: Sequence[dict[str, Any]], key: str, x: str) -> tuple[list[float], list[float]]:
    pairs = [(r[x], r[key]) for r in records if r.get(key) is not None]
    return [a for a, _ in pairs], [b for _, b in pairs]


def plot_learning_curves(records: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    from matplotlib.figure import Figure  # imported here: it costs every command a second at startup

    if not records:
        raise RunError(f"no metrics to plot for {title}: the run has logged no iteration yet")
    rows = [{**r, "minutes": r["wall_s"] / 60} for r in records]
    val_metric = next((r["val_metric"] for r in rows if "val_metric" in r), None)
    fig = Figure(figsize=(11, 7), layout="constrained")
    fig.suptitle(f"{title}: learning curves")
    axes = fig.subplots(2, 2)
    for column, (x, label) in enumerate((("iteration", "iteration"), ("minutes", "wall-clock (minutes)"))):
        top, bottom = axes[0][column], axes[1][column]
        top.plot(*_series(rows, "loss", x), color="tab:blue")
        top.set(xlabel=label, ylabel="meta-loss (query, after adaptation)")
        top.grid(alpha=0.3)
        xs, ys = _series(rows, "accuracy", x)
        if ys:
            bottom.plot(xs, ys, color="tab:blue", label="train (meta-batch)")
        if val_metric is not None:
            vx, vy = _series(rows, "val_mean", x)
            _, ci = _series(rows, "val_ci95", x)
            bottom.errorbar(vx, vy, yerr=ci, color="tab:orange", marker="o", capsize=3, label="validation (95% CI)")
        bottom.set(xlabel=label, ylabel="mean squared error" if val_metric == "mse" else "accuracy")
        bottom.grid(alpha=0.3)
        if bottom.get_legend_handles_labels()[0]:
            bottom.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as f:
        fig.savefig(f, format="png", dpi=110)
    return path
