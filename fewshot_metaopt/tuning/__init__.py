"""Hyperparameter search on Optuna (the ``search`` extra): :class:`HyperparameterTuner` runs a
study over a task's ``[search]`` table, each trial a normal run directory, pruned at its
validation points; ``fewshot-metaopt tune`` is its command line (docs/tuning.md).

Importing this package does not import Optuna; using it without Optuna installed is a
one-line error saying how to install it.
"""

from .default_space import default_space
from .report import StudyReport, TrialRow
from .search_algorithms import PRUNERS, SAMPLERS
from .trial_objective import PruneTrial
from .tuner import HyperparameterTuner

__all__ = ["HyperparameterTuner", "PRUNERS", "PruneTrial", "SAMPLERS", "StudyReport", "TrialRow", "default_space"]
