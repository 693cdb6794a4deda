"""Gradient-based meta-learners (Phase 50.2)."""

from .config import GradientMetaLearnerConfig
from .gradient_meta_learner import GradientMetaLearner, NonFiniteLossError, head_parameter_names
from .results import EvaluationResult, MetaTrainResult

__all__ = [
    "EvaluationResult",
    "GradientMetaLearner",
    "GradientMetaLearnerConfig",
    "MetaTrainResult",
    "NonFiniteLossError",
    "head_parameter_names",
]
