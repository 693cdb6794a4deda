"""``fewshot-metaopt plot``: a run's learning curves as a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Sequence

from ..runs.learning_curves import plot_learning_curves
from ..runs.metrics_log import read_metrics
from ..runs.run_dir import RunDir

DESCRIPTION = """\
Draw meta-loss, training accuracy and validation score against iterations and against
wall-clock time, from RUN_DIR/metrics.jsonl. Works on a finished run and on one still
training (its complete lines so far)."""


def add_parser(commands) -> None:
    parser = commands.add_parser("plot", help="learning curves of a run as a PNG", description=DESCRIPTION)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory")
    parser.add_argument("--png", metavar="PATH", default=None,
                        help="where to draw it (default: RUN_DIR/plots/learning_curves.png)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, command: Sequence[str], echo: Callable[[str], None] = print) -> int:
    run_dir = RunDir.open(args.run_dir)
    png = Path(args.png) if args.png else run_dir.plots / "learning_curves.png"
    title = run_dir.task().name
    plot_learning_curves(read_metrics(run_dir.metrics), png, title)
    echo(f"plot: {png}")
    return 0
