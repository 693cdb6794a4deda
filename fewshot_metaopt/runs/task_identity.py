"""When a checkpoint belongs to a task: every key but the data paths, which may move between
machines without changing the run, and the ``[logging]`` table, which records the run without
changing what it computes."""

from __future__ import annotations

from typing import Any, Mapping

from .task_config import PATH_KEYS


def identifying_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    data = {k: v for k, v in values.get("data", {}).items() if f"data.{k}" not in PATH_KEYS}
    return {**{k: v for k, v in values.items() if k != "logging"}, "data": data}


def same_task(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return identifying_keys(a) == identifying_keys(b)
