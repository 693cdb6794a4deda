"""``fewshot-metaopt plot``: learning curves of one run or several overlaid, as a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Sequence

from ..runs.learning_curves import X_AXES, plot_runs, read_run
from ..runs.run_dir import RunDir

DESCRIPTION = """\
Draw the meta-loss (log scale), the training accuracy and validation score with the best
checkpoint starred and the test result marked, the meta-gradient norm and the meta learning
rate, against iterations (or wall-clock minutes), from RUN_DIR/metrics.jsonl and
RUN_DIR/results.json. Several run directories are overlaid, one colour each, with a legend.
Works on finished runs and on runs still training (their complete lines so far)."""


def add_parser(commands) -> None:
    parser = commands.add_parser("plot", help="learning curves of one run or several overlaid, as a PNG",
                                 description=DESCRIPTION)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run directory (several: overlaid)")
    parser.add_argument("--png", metavar="PATH", default=None,
                        help="where to draw it (default: RUN_DIR/plots/learning_curves.png for one run, "
                             "learning_curves.png in the current directory for several)")
    parser.add_argument("--x", choices=tuple(X_AXES), default="iteration",
                        help="the horizontal axis: iteration (default) or minutes of training")
    parser.set_defaults(run=run)


def labels(paths: Sequence[str]) -> list[str]:
    """Each run's legend entry: its directory's name, or the path as given where names repeat."""
    names = [Path(p).resolve().name for p in paths]
    return [name if names.count(name) == 1 else str(p) for name, p in zip(names, paths)]


def run(args: argparse.Namespace, command: Sequence[str], echo: Callable[[str], None] = print) -> int:
    run_dirs = [RunDir.open(path) for path in args.run_dirs]
    if len(run_dirs) == 1:  # named by its task, as the plot train draws is
        title = run_dirs[0].task().name
        png = Path(args.png) if args.png else run_dirs[0].plots / "learning_curves.png"
        curves = [read_run(run_dirs[0], title)]
    else:
        title = f"{len(run_dirs)} runs"
        png = Path(args.png or "learning_curves.png")
        curves = [read_run(run_dir, label) for run_dir, label in zip(run_dirs, labels(args.run_dirs))]
    plot_runs(curves, png, title, args.x)
    echo(f"plot: {png}")
    return 0
