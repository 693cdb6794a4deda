"""A trained learner back from a run directory or a checkpoint file, for evaluation and inspection."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..learners import GradientMetaLearner
from .checkpoint import load_checkpoint
from .components import build_learner
from .errors import RunError
from .run_dir import RunDir
from .task_config import TaskConfig, task_from_dict


@dataclass
class Restored:
    task: TaskConfig
    learner: GradientMetaLearner
    checkpoint: Path
    iteration: int
    run: RunDir | None


def restore(target: str | Path, device: str = "cpu", data_root: str | None = None) -> Restored:
    """``target`` is a run directory (its best checkpoint, else its latest) or a checkpoint file."""
    target = Path(target)
    run = RunDir.open(target) if target.is_dir() else None
    path = run.checkpoint_for_use() if run is not None else target
    state = load_checkpoint(path, map_location=device)
    task = task_from_dict(state["task"], f"the task stored in {path}", data_root)
    learner = build_learner(task, device)
    try:
        learner.load_state_dict(state["learner"])
    except (RuntimeError, KeyError, ValueError) as err:
        # torch lists every mismatch on a line of its own; the first one names the culprit.
        lines = [line.strip().rstrip(".") for line in str(err).splitlines() if line.strip()]
        reason = next((line for line in lines if not line.endswith(":")), type(err).__name__)
        raise RunError(f"{path}: its weights do not fit the model its task describes ({reason[:200]})") from None
    return Restored(task, learner, path, int(state["iteration"]), run)
