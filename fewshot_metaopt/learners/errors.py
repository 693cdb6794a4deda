"""The error a meta-learner raises when a task's loss is not finite."""

from __future__ import annotations


class NonFiniteLossError(FloatingPointError):
    """A task's loss became NaN or infinite; says which task, phase and inner step."""

    def __init__(self, task: int, phase: str, step: int, value: float):
        self.task, self.phase, self.step, self.value = task, phase, step, value
        super().__init__(
            f"task {task}: {phase} loss is {value} at inner step {step}; lower inner_lr, clip, "
            "or set skip_nonfinite_tasks=True to drop such tasks and count them"
        )
