"""Trials whose process died, queued again; and how many trials a study has spent.

A killed worker leaves its trial ``RUNNING`` in the storage. When a study folder is resumed,
its lock says that no process of this folder is running any more, so every ``RUNNING`` trial
of this folder died: each is failed and queued again with the same values (Optuna's
``RetryFailedTrialCallback``), and the new trial continues the dead one's run directory from
its last checkpoint (see :mod:`.trial_objective`). A trial stopped by Ctrl-C is failed by
Optuna and queued again the same way. Trials other machines run in a shared database are
left to the storage's heartbeats (:mod:`.storage`), which fail them once their machine has
been silent for the grace period, and queue them again through the same callback.

Finished trials are never touched: a study resumes with every complete and pruned trial it had.
"""

from __future__ import annotations

import warnings
from typing import Any

from .optuna_import import optuna


def _callback_class() -> Any:
    storages = optuna().storages
    # Optuna 4.9 renamed it; the behaviour is the same.
    return getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback


def retry(study: Any, trial: Any) -> None:
    """Queue ``trial`` (failed) again with its values, intermediate scores and run directory."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna().exceptions.ExperimentalWarning)  # stable since Optuna 2.8
        callback = _callback_class()(inherit_intermediate_values=True)
    callback(study, trial)


def retried_number(trial: Any) -> int | None:
    """The number of the dead trial that ``trial`` was queued to continue, or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna().exceptions.ExperimentalWarning)
        return _callback_class().retried_trial_number(trial)


def _retried(trials: list) -> set[int]:
    return {n for n in map(retried_number, trials) if n is not None}


def requeue_dead(study: Any, folder_id: str, every: bool = False) -> list[int]:
    """Fail and queue again the trials of this folder that were running or interrupted when
    their process ended; their numbers. ``every``: the storage is this folder's own (its SQLite
    file), so every running trial is this folder's, even one killed before it was marked so.
    Call it only while holding the folder's lock, before any worker starts."""
    state = optuna().trial.TrialState
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    dead = []
    for trial in trials:
        if trial.number in retried or not (every or trial.user_attrs.get("folder") == folder_id):
            continue
        if trial.state == state.RUNNING:
            # Skipped when another machine's heartbeat check failed it first (and queued it again).
            study.tell(trial.number, state=state.FAIL, skip_if_finished=True)
            dead.append(trial.number)
        elif trial.state == state.FAIL and trial.user_attrs.get("interrupted"):
            dead.append(trial.number)
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    dead = [t for t in trials if t.number in dead and t.number not in retried and t.state == state.FAIL]
    for trial in dead:
        retry(study, trial)
    return [t.number for t in dead]


def spent(study: Any) -> int:
    """Trials that count towards ``--trials``: every trial begun (complete, pruned, failed or
    running), but not a dead trial that was queued again, nor a queued one not yet begun."""
    state = optuna().trial.TrialState
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    return sum(1 for t in trials if t.number not in retried and t.state != state.WAITING)
