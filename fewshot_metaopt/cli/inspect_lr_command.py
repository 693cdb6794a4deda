"""``fewshot-metaopt inspect-lr``: the inner learning rates of a trained learner, per tensor."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Sequence

from ..runs.components import manifest
from ..runs.data_sources import open_split
from ..runs.lr_report import effective_lrs, format_table, lr_rows, lr_tensors, plot_lrs, warped_lrs
from ..runs.restore import restore
from .parsing import add_data_root, add_machine_options

DESCRIPTION = """\
Print the inner learning rates per parameter tensor (mean, min, 5/25/50/75/95% quantiles,
max) and draw them as a violin per tensor in a PNG. For MAML they are the fixed inner lr,
for Meta-SGD the learned per-parameter rates; learned optimizers (lstm, l2o) have none, so
their effective lr (mean|update| / mean|gradient|) on one validation episode is shown. For a
Warp-Grad model with a fixed inner lr it is the lr that would move each adapted tensor as far
without the warp layers (inner lr x mean|warped grad| / mean|unwarped grad|), on one
validation episode."""


def add_parser(commands) -> None:
    parser = commands.add_parser("inspect-lr", help="table and PNG of the learned inner learning rates",
                                 description=DESCRIPTION)
    parser.add_argument("target", metavar="RUN_DIR|CHECKPOINT", help="a run directory or a checkpoint file")
    parser.add_argument("--png", metavar="PATH", default=None,
                        help="where to draw the plot (default: RUN_DIR/plots/learned_lr.png, or "
                             "<checkpoint>-learned_lr.png beside a checkpoint file)")
    add_data_root(parser)
    add_machine_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, command: Sequence[str], echo: Callable[[str], None] = print) -> int:
    restored = restore(args.target, args.device, args.data_root)
    task, learner = restored.task, restored.learner
    tensors, learned = lr_tensors(learner)
    warped = learner.warp is not None and not learned
    if tensors and not warped:
        kind = "learned" if learned else "fixed (not learned)"
    else:
        episode = manifest(task, open_split(task.data, "val"), "val", 1)[0]
        if warped:
            tensors = warped_lrs(learner, episode)
            kind = f"effective lr of the warped gradient (inner lr {task.learner.inner_lr:g}) on one validation episode"
        else:
            tensors = effective_lrs(learner, episode)
            kind = "effective lr of the last inner step on one validation episode"
    method = task.inner_optimizer.method
    echo(f"{task.name}, {restored.checkpoint} (iteration {restored.iteration}): inner learning rates of "
         f"{task.learner.algorithm}{'' if method == 'sgd' else ' with ' + method}, {kind}")
    echo(format_table(lr_rows(tensors)))
    if args.png is not None:
        png = Path(args.png)
    elif restored.run is not None:
        png = restored.run.plots / "learned_lr.png"
    else:
        png = restored.checkpoint.with_name(f"{restored.checkpoint.stem}-learned_lr.png")
    plot_lrs(tensors, png, f"{task.name}: inner learning rates ({kind}), iteration {restored.iteration}")
    echo(f"plot: {png}")
    return 0
