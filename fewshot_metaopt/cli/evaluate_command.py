"""``fewshot-metaopt evaluate``: score a trained run or checkpoint on fixed episodes."""

from __future__ import annotations

import argparse
from typing import Callable, Sequence

from tqdm.auto import tqdm

from ..runs.components import manifest
from ..runs.data_sources import open_split
from ..runs.restore import restore
from .parsing import add_data_root, add_machine_options, positive_int

DESCRIPTION = """\
Adapt a trained model to each of a fixed manifest of episodes and report the mean accuracy
(MSE for regression) ± 95% CI. A run directory stands for its best checkpoint (its latest
when it has not validated). The manifest depends only on the task's seed, the split and the
number of episodes, so every evaluation of every run of a task scores the same episodes."""


def add_parser(commands) -> None:
    parser = commands.add_parser("evaluate", help="mean accuracy ± 95%% CI of a run or checkpoint",
                                 description=DESCRIPTION)
    parser.add_argument("target", metavar="RUN_DIR|CHECKPOINT", help="a run directory or a checkpoint file")
    parser.add_argument("--episodes", type=positive_int, default=600, help="fixed episodes to score (default: 600)")
    parser.add_argument("--split", choices=("train", "val", "test"), default="test",
                        help="which of the task's splits to draw them from (default: test)")
    add_data_root(parser)
    add_machine_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, command: Sequence[str], echo: Callable[[str], None] = print) -> int:
    restored = restore(args.target, args.device, args.data_root)
    task = restored.task
    episodes = manifest(task, open_split(task.data, args.split), args.split, args.episodes)
    result = restored.learner.evaluate(tqdm(episodes, desc="evaluate", unit="episode", leave=False, mininterval=1.0))
    echo(f"{task.name}, {restored.checkpoint} (iteration {restored.iteration}), "
         f"{args.split} split {task.data.split(args.split)!r}: {result}")
    return 0
