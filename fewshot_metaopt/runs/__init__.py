"""Training runs: task files, run directories, checkpoints, metrics and plots.

This is the machinery behind the ``fewshot-metaopt`` command line; the library (episodes,
learners, optimizers) never imports it, so a learner stays usable in a user's own loop.
"""

from .errors import RunError
from .task_config import TaskConfig, load_task

__all__ = ["RunError", "TaskConfig", "load_task"]
