"""The one exception type the run machinery raises for problems a user can fix."""

from __future__ import annotations


class RunError(Exception):
    """A problem with a task file, a data folder, a run directory or a checkpoint.

    Its message is one line that names the file or key at fault and what to do; the command
    line prints it as it is, without a traceback.
    """


class TaskErrors(RunError):
    """Every problem found in one task at once (a task file with three bad keys reports all
    three); each of ``problems`` is one line naming the key at fault and where it was set."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
