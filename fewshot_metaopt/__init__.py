"""fewshot_metaopt: MAML-family meta-learning and learned inner-loop optimizers."""

from .episodes import (
    Episode,
    EpisodeBatch,
    EpisodeManifest,
    TaskDistributionConfig,
    TaskDistributionSampler,
    stack_episodes,
)

from .learners import (
    EvaluationResult,
    GradientMetaLearner,
    GradientMetaLearnerConfig,
    MetaTrainResult,
    ModelAgnosticMetaLearning,
    train_maml,
)
from .meta_training import MetaOptimizer, MetaOptimizerConfig, MetaOptTrainResult, OptimizerState

__version__ = "0.1.0"

__all__ = [
    "Episode",
    "EpisodeBatch",
    "EpisodeManifest",
    "EvaluationResult",
    "GradientMetaLearner",
    "GradientMetaLearnerConfig",
    "MetaTrainResult",
    "MetaOptTrainResult",
    "MetaOptimizer",
    "MetaOptimizerConfig",
    "ModelAgnosticMetaLearning",
    "OptimizerState",
    "TaskDistributionConfig",
    "TaskDistributionSampler",
    "stack_episodes",
    "train_maml",
    "__version__",
]
