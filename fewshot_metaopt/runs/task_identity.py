"""When a checkpoint belongs to a task: every key but the data paths, which may move between
machines without changing the run."""

from __future__ import annotations

from typing import Any, Mapping

from .task_config import PATH_KEYS


def without_paths(values: Mapping[str, Any]) -> dict[str, Any]:
    data = {k: v for k, v in values.get("data", {}).items() if f"data.{k}" not in PATH_KEYS}
    return {**values, "data": data}


def same_task(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return without_paths(a) == without_paths(b)
