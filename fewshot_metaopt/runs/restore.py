"""A trained learner back from a run directory or a checkpoint file, for evaluation and inspection."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..learners import GradientMetaLearner
from .checkpoint import applied, load_checkpoint
from .checkpoint_pair import checkpoint_for_use
from .components import build_learner
from .errors import RunError
from .run_dir import RunDir
from .task_config import TaskConfig, task_from_dict
from .task_identity import same_task


@dataclass
class Restored:
    task: TaskConfig
    learner: GradientMetaLearner
    checkpoint: Path
    iteration: int
    run: RunDir | None


def restore(target: str | Path, device: str = "cpu", data_root: str | None = None) -> Restored:
    """``target`` is a run directory (its best checkpoint, else its latest) or a checkpoint file.

    The task comes from the run's ``config.toml``, which must match the checkpoint's; a bare
    checkpoint file brings its own task, minus its cache folder: a file received from elsewhere
    never chooses where this machine writes (the default cache location is used instead).
    """
    target = Path(target)
    run = RunDir.open(target) if target.is_dir() else None
    path = checkpoint_for_use(run) if run is not None else target
    state = load_checkpoint(path, map_location=device)
    if run is not None:
        task = run.task(data_root)
        if not same_task(state["task"], task.to_dict()):
            raise RunError(f"{path} is a checkpoint of another task than {run.config}; "
                           "a run directory holds checkpoints of its own task only")
    else:
        stored = dict(state["task"])
        stored["data"] = {k: v for k, v in stored["data"].items() if k != "cache_dir"}
        task = task_from_dict(stored, f"the task stored in {path}", data_root)
    learner = build_learner(task, device)
    with applied(path, "its weights do not fit the model its task describes"):
        learner.load_state_dict(state["learner"])
    return Restored(task, learner, path, int(state["iteration"]), run)
