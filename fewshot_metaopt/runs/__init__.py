"""Training runs: task files, run directories, checkpoints, metrics and plots.

This is the machinery behind the ``fewshot-metaopt`` command line; the library (episodes,
learners, optimizers) never imports it, so a learner stays usable in a user's own loop.
:func:`train` and :func:`resume` run a task from Python with the caller's callbacks.
"""

from .callbacks import Callback, CheckpointWritten, IterationEnd, RunEnd, Stop, Validation
from .errors import RunError
from .interrupts import Interrupted
from .task_config import TaskConfig, load_task
from .train_api import TrainedRun, resume, train

__all__ = [
    "Callback", "CheckpointWritten", "Interrupted", "IterationEnd", "RunEnd", "RunError", "Stop", "TaskConfig",
    "TrainedRun", "Validation", "load_task", "resume", "train",
]
