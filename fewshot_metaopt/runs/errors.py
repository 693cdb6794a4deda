"""The one exception type the run machinery raises for problems a user can fix."""

from __future__ import annotations


class RunError(Exception):
    """A problem with a task file, a data folder, a run directory or a checkpoint.

    Its message is one line that names the file or key at fault and what to do; the command
    line prints it as it is, without a traceback.
    """
