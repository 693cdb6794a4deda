"""``fewshot-metaopt episodes export``: a run's or a task's fixed episodes as a JSON manifest."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Sequence

from ..datasets.episode_manifest import save_manifest
from ..runs.components import manifest
from ..runs.data_sources import open_split
from ..runs.errors import RunError
from ..runs.run_dir import RunDir
from ..runs.task_config import TaskConfig, load_task
from .parsing import OneLineParser, add_data_root, positive_int

DESCRIPTION = """\
Work with the fixed episodes that validate and test a task."""

EXPORT_DESCRIPTION = """\
Write the fixed episodes of a run (RUN_DIR: the task it ran) or of a task (a task file, or an
installed task's name) to FILE as JSON: for each episode its class names and the ids of its
support and query images, with the data set, the split and the sampler's settings. They are
the episodes 'fewshot-metaopt evaluate' and a run's final test score, so another library can
score the same ones; fewshot_metaopt.datasets.load_manifest rebuilds them (docs/episodes.md)."""


def add_parser(commands) -> None:
    parser = commands.add_parser("episodes", help="export a task's fixed test episodes as a JSON manifest",
                                 description=DESCRIPTION)
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True, parser_class=OneLineParser,
                                    help="export: write fixed episodes to a JSON manifest")
    export = actions.add_parser("export", help="write the fixed episodes of a run or task to a JSON manifest",
                                description=EXPORT_DESCRIPTION)
    export.add_argument("target", metavar="RUN_DIR|TASK", help="a run directory, a task file or an installed task's name")
    export.add_argument("--out", metavar="FILE", required=True, help="the manifest to write (JSON)")
    export.add_argument("--split", choices=("train", "val", "test"), default="test",
                        help="which of the task's splits the episodes come from (default: test)")
    export.add_argument("--episodes", type=positive_int, default=None,
                        help="how many (default: the task's evaluation.episodes, or validation.episodes for val); "
                             "the first N of any longer export")
    export.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of a task file, e.g. --set episodes.shots=5 (repeatable)")
    add_data_root(export)
    export.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="on failure, show the full traceback")
    export.set_defaults(run=run)


def _task(args: argparse.Namespace) -> TaskConfig:
    if Path(args.target).is_dir():
        if args.overrides:
            raise RunError(f"--set changes a task file, not a run: the episodes of {args.target} are those of the "
                           f"task it ran ({Path(args.target) / 'config.toml'})")
        return RunDir.open(args.target).task(args.data_root)
    return load_task(args.target, args.overrides, args.data_root)


def run(args: argparse.Namespace, command: Sequence[str], echo: Callable[[str], None] = print) -> int:
    task = _task(args)
    if task.regression:
        raise RunError(f"data.dataset {task.data.dataset!r} is a regression family: its episodes have no classes or "
                       f"images for a manifest to list")
    count = args.episodes or (task.validation.episodes if args.split == "val" else task.evaluation.episodes)
    source = open_split(task.data, args.split)
    path = save_manifest(manifest(task, source, args.split, count), args.out)
    echo(f"{task.name}: {count} {args.split} episodes ({source.name} split {source.split!r}, {task.ways}-way "
         f"{task.episodes.shots}-shot, {task.eval_queries} queries per class) written to {path}")
    return 0
