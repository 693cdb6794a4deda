"""``RUN_DIR/trackers.json``: the id each tracking service gave the run, so that a resumed
run goes on logging into the same W&B run or MLflow run instead of opening another."""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic_files import atomic_write_text
from .errors import RunError

FILE = "trackers.json"


def _ids(folder: Path) -> dict[str, str]:
    path = folder / FILE
    if not path.is_file():
        return {}
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise RunError(f"{path} is not valid JSON ({err}); delete it to start new tracker runs") from None
    if not isinstance(ids, dict):
        raise RunError(f"{path} must hold a JSON object of tracker ids; delete it to start new tracker runs")
    return ids


def tracker_id(folder: Path, tracker: str) -> str | None:
    """The id ``tracker`` gave the run in ``folder``, or None when it has none yet."""
    return _ids(folder).get(tracker)


def remember_id(folder: Path, tracker: str, value: str) -> None:
    ids = _ids(folder)
    if ids.get(tracker) != value:
        atomic_write_text(folder / FILE, json.dumps({**ids, tracker: value}, indent=2) + "\n")
