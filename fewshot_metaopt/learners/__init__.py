"""Gradient-based meta-learners (Phase 50.2)."""

from .config import GradientMetaLearnerConfig
from .algorithms import ALGORITHMS, Algorithm
from .errors import NonFiniteLossError
from .gradient_meta_learner import GradientMetaLearner, head_parameter_names
from .maml_api import ModelAgnosticMetaLearning, tensors_to_episodes, train_maml
from .results import EvaluationResult, MetaTrainResult

__all__ = [
    "ALGORITHMS",
    "Algorithm",
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
