"""``fewshot-metaopt inspect-lr``: the inner learning rates of a trained learner, per tensor."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from torch import Tensor

from ..models import parameter_display_names
from ..runs.components import manifest
from ..runs.data_sources import open_split
from ..runs.errors import RunError
from ..runs.lr_report import (
    effective_lrs,
    format_table,
    gradient_free,
    initial_lr,
    lr_rows,
    lr_tensors,
    never_moved,
    notes,
    plot_lrs,
    warped_lrs,
)
from ..runs.restore import restore
from .parsing import add_data_root, add_machine_options

# Validation episodes whose support gradients decide that a tensor gets none.
GRADIENT_EPISODES = 3

DESCRIPTION = """\
Print the inner learning rates per parameter tensor (mean, min, 5/25/50/75/95% quantiles,
max) and draw them as a violin per tensor in a PNG. For MAML they are the fixed inner lr,
for Meta-SGD the learned per-parameter rates; learned optimizers (lstm, l2o) have none, so
their effective lr (mean|update| / mean|gradient|) on one validation episode is shown. For a
Warp-Grad model with a fixed inner lr it is the lr that would move each adapted tensor as far
without the warp layers (inner lr x mean|warped grad| / mean|unwarped grad|), on one
validation episode.

Tensors go by readable names (conv4's block1.conv.weight, its parameter 0.0.weight beside
it), and the plot has a dashed line at the initial lr. A tensor whose support-set gradient
is zero on the first validation episodes (a conv bias followed by batch norm) is flagged "no
gradient": the inner loop never moves it, and its learned lr gets no meta-gradient; a
learned lr still at its initial value is flagged "never moved"."""


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


class Rates(NamedTuple):
    tensors: dict[str, Tensor]
    kind: str  # what the rates are, for the heading and the plot's title
    learned: bool  # learning-rate tensors the outer loop trains (Meta-SGD)
    effective: bool  # a learned optimizer's measured step / gradient, not an lr it has
    reference: tuple[float, str] | None  # where the plot's dashed line goes, and its label
    episodes: list | None  # the validation episodes loaded to measure them


def _rates(task, learner) -> Rates:
    tensors, learned = lr_tensors(learner)
    if tensors and (learner.warp is None or learned):  # a warped model's fixed lr says little alone
        init = initial_lr(learner)
        return Rates(tensors, "learned" if learned else "fixed (not learned)", learned, False,
                     (init, f"{'initial' if learned else 'inner'} lr {init:g}"), None)
    episodes = manifest(task, open_split(task.data, "val"), "val", GRADIENT_EPISODES)
    if learner.warp is not None:
        inner = task.learner.inner_lr
        return Rates(warped_lrs(learner, episodes[0]), f"effective lr of the warped gradient (inner lr {inner:g}) on "
                     "one validation episode", False, False, (inner, f"inner lr {inner:g}"), episodes)
    return Rates(effective_lrs(learner, episodes[0]), "effective lr of the last inner step on one validation episode",
                 False, True, None, episodes)


def _no_gradient(task, learner, rates: Rates, echo: Callable[[str], None]) -> tuple[set[str], int]:
    """The tensors that get no support-set gradient, and on how many episodes that was seen."""
    try:
        episodes = rates.episodes or manifest(task, open_split(task.data, "val"), "val", GRADIENT_EPISODES)
    except RunError as err:  # the rates themselves need no data; only this check does
        echo(f"(no check of which tensors get a gradient: {err})")
        return set(), 0
    return gradient_free(learner, episodes, rates.tensors), len(episodes)


def run(args: argparse.Namespace, command: Sequence[str], echo: Callable[[str], None] = print) -> int:
    restored = restore(args.target, args.device, args.data_root)
    task, learner = restored.task, restored.learner
    rates = _rates(task, learner)
    method = task.inner_optimizer.method
    echo(f"{task.name}, {restored.checkpoint} (iteration {restored.iteration}): inner learning rates of "
         f"{task.learner.algorithm}{'' if method == 'sgd' else ' with ' + method}, {rates.kind}")
    no_gradient, checked_on = _no_gradient(task, learner, rates, echo)
    unmoved = never_moved(rates.tensors, rates.reference[0]) if rates.learned else set()
    flagged = notes(rates.tensors, no_gradient, unmoved)
    labels = parameter_display_names(learner.model)
    echo(format_table(lr_rows(rates.tensors, labels, flagged)))
    if no_gradient:
        if rates.effective:  # a learned optimizer's step need not scale with the gradient
            consequence = "their effective lr divides by a zero gradient and means nothing"
        else:
            consequence = "the inner loop never moves them" + (", and their learned lrs get no meta-gradient"
                                                                if rates.learned else "")
        names = ", ".join(labels.get(n, n) for n in rates.tensors if n in no_gradient)
        echo(f"no gradient: {names} (a zero support-set gradient on {checked_on} validation episodes; a conv bias "
             f"followed by batch norm gets none, the norm subtracting its mean): {consequence}")
    if args.png is not None:
        png = Path(args.png)
    elif restored.run is not None:
        png = restored.run.plots / "learned_lr.png"
    else:
        png = restored.checkpoint.with_name(f"{restored.checkpoint.stem}-learned_lr.png")
    ylabel = "inner learning rate" if rates.episodes is None else "effective inner learning rate"
    plot_lrs({labels.get(n, n): t for n, t in rates.tensors.items()}, png,
             f"{task.name}: inner learning rates ({rates.kind}), iteration {restored.iteration}", rates.reference,
             {labels.get(n, n): note for n, note in flagged.items()}, ylabel)
    echo(f"plot: {png}")
    return 0
