"""The task files installed with the package, and the names that stand for them.

``fewshot_metaopt/tasks/*.toml`` ship inside the package (the repository's ``tasks/`` is a link
to that folder), so an installed copy has them too: ``fewshot-metaopt train omniglot-5w1s``
works from any folder, and ``fewshot-metaopt tasks`` lists them. The quick start that
``fewshot-metaopt train`` runs without a task file is one of them, ``glyphs-quickstart``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import RunError

TASKS_FOLDER = Path(__file__).resolve().parents[1] / "tasks"
QUICKSTART = "glyphs-quickstart"
SUFFIX = ".toml"


def bundled_tasks() -> dict[str, Path]:
    """Every task file that ships with the package, by name (its file name without ``.toml``)."""
    return {path.stem: path for path in sorted(TASKS_FOLDER.glob(f"*{SUFFIX}"))}


def bundled_task(name: str) -> Path:
    """The installed task file called ``name``; a one-line error listing the names otherwise."""
    tasks = bundled_tasks()
    if name not in tasks:
        raise RunError(f"no task is called {name!r}; choose one of {', '.join(tasks)} "
                       "('fewshot-metaopt tasks' describes them), or give a task file's path")
    return tasks[name]


def task_file(task: str | os.PathLike) -> Path:
    """The task file ``task`` names: a path as given, else the installed task of that name.

    ``tasks/omniglot-5w1s.toml`` is a path; ``omniglot-5w1s`` (or ``omniglot-5w1s.toml``) names
    the installed task when no file of that name is in the current folder. A path that does not
    exist is returned as it is, for the reader to report.
    """
    path = Path(task)
    if path.exists() or len(path.parts) != 1:
        return path
    name = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.name
    if name in bundled_tasks() or path.suffix != SUFFIX:
        return bundled_task(name)
    return path

