"""One trial of a study: a normal run directory, trained from the searched task with the values
the sampler proposed, scored and pruned at its validation points.

The objective is the best validation score the run reached (the score of the checkpoint the
run keeps and tests): accuracy, maximised, for classification; the mean squared error,
minimised, for regression (sinusoid). A pruned run stops with a checkpoint and its
``results.json`` (``"status": "stopped"``) like any run a callback stops. A run that diverges
is recorded as pruned too, with the reason, so that the sampler steers away from its values. A trial that was
running when its process died is queued again with the same values (:mod:`.recovery`), and
the new trial continues the dead one's run directory from its last checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..runs.callbacks import Callback, Stop, Validation
from ..runs.errors import RunError
from ..runs.run_dir import RunDir
from ..runs.search_space import SearchSpace, apply, choice_label
from ..runs.task_config import TaskConfig, task_from_dict
from ..runs.train_api import TrainedRun, resume, train
from .optuna_import import optuna
from .study_dir import StudyDir

# A trial with one of these fails and the study goes on: its values made an invalid task (or
# data the task cannot use). Anything else (a bug, a full disk) ends the study.
TRIAL_FAILURES = (RunError, ValueError)


class PruneTrial(Callback):
    """Reports each validation score to the trial (step: the iteration) and stops the run when
    the study's pruner says the trial will not beat the others."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def on_validation(self, record: Validation) -> Stop | None:
        self.trial.report(record.mean, record.iteration)
        if self.trial.should_prune():
            return Stop(f"pruned at iteration {record.iteration} (validation {record.metric} {record.mean:.4g})")
        return None


# How a run's stopped_by starts when PruneTrial stopped it (CallbackList names the callback).
PRUNED_BY = f"{PruneTrial.__name__}:"


def describe_values(params: Mapping[str, Any]) -> str:
    """``learner.inner_lr=0.1234, model.hidden_layers=[40, 40]``."""
    shown = (f"{v:.4g}" if isinstance(v, float) else str(choice_label(v)) for v in params.values())
    return ", ".join(f"{key}={value}" for key, value in zip(params, shown))


def trial_task(base: TaskConfig, params: Mapping[str, Any], number: int) -> TaskConfig:
    """``base`` with ``params`` set, checked like a task file (an error names the trial)."""
    return task_from_dict(apply(base.to_dict(), params), f"trial {number} ({describe_values(params)})")


@dataclass
class Objective:
    """What Optuna calls for each trial of this study folder's workers."""

    folder: StudyDir
    folder_id: str
    base: TaskConfig
    space: SearchSpace
    device: str = "cpu"
    command: Sequence[str] = ()
    echo: Callable[[str], None] = lambda line: None

    def __call__(self, trial: Any) -> float:
        previous = trial.user_attrs.get("run_dir") if trial.user_attrs.get("folder") == self.folder_id else None
        trial.set_user_attr("folder", self.folder_id)  # first: from here on, the trial is known to be this folder's
        for inherited in ("interrupted", "error"):  # a trial queued again carries the dead trial's notes
            if trial.user_attrs.get(inherited):
                trial.set_user_attr(inherited, None)
        params = self.space.sample(trial)
        try:
            return self._score(trial, self._run(trial, trial_task(self.base, params, trial.number), previous))
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # queued again when the study resumes
            raise
        except FloatingPointError as err:
            # Diverged (a loss or meta-gradient went non-finite): its values are bad ones, which
            # the sampler learns from a pruned trial (a failed one it ignores).
            reason = f"diverged: {' '.join(str(err).split())}"
            trial.set_user_attr("error", reason)
            raise optuna().TrialPruned(reason) from None
        except TRIAL_FAILURES as err:
            trial.set_user_attr("error", " ".join(str(err).split()) or type(err).__name__)
            raise

    @staticmethod
    def _score(trial: Any, run: TrainedRun) -> float:
        """The run's best validation score; TrialPruned when the pruner stopped it."""
        trial.set_user_attr("iterations", run.iterations)
        trial.set_user_attr("test", {"metric": run.result.metric, "mean": run.result.mean, "ci95": run.result.ci95})
        if run.stopped_by is not None and run.stopped_by.startswith(PRUNED_BY):
            raise optuna().TrialPruned(run.stopped_by.removeprefix(PRUNED_BY).strip())
        # Never None: a run validates at its end, and a search refuses validation.every = 0.
        return run.best_validation

    def _run(self, trial: Any, task: TaskConfig, previous: str | None) -> TrainedRun:
        """A new run directory for the trial, or, for a trial queued again after its process
        died, the dead trial's run directory (``previous``) continued."""
        options = dict(callbacks=[PruneTrial(trial)], device=self.device, echo=self.echo, command=self.command)
        if previous is not None:
            path = self.folder.path / previous
            try:
                RunDir.open(path)  # finishes, or clears, a run directory whose creation was killed
            except RunError:
                pass
            if path.is_dir():
                return resume(path, **options)
        path = self.folder.trial_dir(trial.number)
        trial.set_user_attr("run_dir", self.folder.relative(path))
        return train(task, path, **options)
