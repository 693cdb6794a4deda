"""Gradient-based meta-learners (Phase 50.2)."""

from .config import GradientMetaLearnerConfig
from .gradient_meta_learner import GradientMetaLearner, NonFiniteLossError, head_parameter_names
from .maml_api import ModelAgnosticMetaLearning, tensors_to_episodes, train_maml
from .results import EvaluationResult, MetaTrainResult

__all__ = [
    "EvaluationResult",
    "GradientMetaLearner",
    "GradientMetaLearnerConfig",
    "MetaTrainResult",
    "ModelAgnosticMetaLearning",
    "NonFiniteLossError",
    "head_parameter_names",
    "tensors_to_episodes",
    "train_maml",
]
