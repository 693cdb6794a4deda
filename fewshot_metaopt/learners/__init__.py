"""Gradient-based meta-learners: MAML, first-order MAML, Meta-SGD, ANIL, Warp-MAML, Warp-Leap."""

from .algorithms import ALGORITHMS, Algorithm
from .config import GradientMetaLearnerConfig
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
