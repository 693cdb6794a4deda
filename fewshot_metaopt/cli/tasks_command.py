"""``fewshot-metaopt tasks``: the task files installed with the package, or one of them in full."""

from __future__ import annotations

import argparse
from typing import Callable, Sequence

from ..runs.task_catalog import QUICKSTART, TASKS_FOLDER, bundled_task, bundled_tasks
from ..runs.task_config import read_task_file
from .parsing import PROG

DESCRIPTION = f"""\
List the task files installed with the package, each with its description. A task's name
stands for its file wherever a task file is accepted ('{PROG} train omniglot-5w1s'). With
NAME, print that task file, e.g. to start a task of your own from it:
'{PROG} tasks omniglot-5w1s > my-task.toml'."""


def add_parser(commands) -> None:
    parser = commands.add_parser("tasks", help="list the installed task files, or print one",
                                 description=DESCRIPTION)
    parser.add_argument("name", nargs="?", metavar="NAME", help="a task's name: print its file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, command: Sequence[str], echo: Callable[[str], None] = print) -> int:
    if args.name is not None:
        echo(bundled_task(args.name).read_text(encoding="utf-8").rstrip("\n"))
        return 0
    tasks = bundled_tasks()
    width = max(len(name) for name in tasks)
    for name, path in tasks.items():
        description = read_task_file(path).get("description", "")
        echo(f"{name:<{width}}  {description}".rstrip())
    echo(f"\n'{PROG} train NAME' trains one ('{PROG} train' alone: {QUICKSTART}); '{PROG} tasks NAME' prints its file.")
    echo(f"The files are in {TASKS_FOLDER}.")
    return 0
