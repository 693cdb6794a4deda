"""The samplers that propose a trial's values and the pruners that stop unpromising trials,
by the names ``--sampler`` and ``--pruner`` take.

A pruner judges a trial at its validation points, on the validation score so far (step: the
iteration). ``median`` (Optuna's MedianPruner) stops a trial whose score is worse than the
median of the complete trials' scores at the same iteration, once ``prune_after`` trials are
complete; ``hyperband`` (Li et al. 2018) runs brackets of successive halving from the first
validation point (``validation.every`` iterations) to the budget (``train.iterations``);
``none`` runs every trial to its end.
"""

from __future__ import annotations

from typing import Any, Callable

from ..registry import Registry
from ..runs.task_config import TaskConfig
from .optuna_import import optuna

# name -> builder(seed) -> an Optuna sampler.
SAMPLERS: Registry[Callable[[int], Any]] = Registry("sampler")
SAMPLERS.register("tpe", lambda seed: optuna().samplers.TPESampler(seed=seed))
SAMPLERS.register("random", lambda seed: optuna().samplers.RandomSampler(seed=seed))

# name -> builder(task, prune_after) -> an Optuna pruner.
PRUNERS: Registry[Callable[[TaskConfig, int], Any]] = Registry("pruner")
PRUNERS.register("median", lambda task, after: optuna().pruners.MedianPruner(n_startup_trials=after))
PRUNERS.register("hyperband", lambda task, after: optuna().pruners.HyperbandPruner(
    min_resource=task.validation.every, max_resource=task.train.iterations or "auto", reduction_factor=3))
PRUNERS.register("none", lambda task, after: optuna().pruners.NopPruner())
