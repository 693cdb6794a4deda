"""fewshot_metaopt: MAML-family meta-learning and learned inner-loop optimizers."""

from typing import TYPE_CHECKING, Any

# The one version source: the build reads it (pyproject.toml) and runs record it.
__version__ = "0.1.0"

from .episodes import (
    Episode,
    EpisodeBatch,
    EpisodeDataset,
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

if TYPE_CHECKING:
    from .runs.restore import Restored, restore


def __getattr__(name: str) -> Any:
    # The run layer (task files, run directories, checkpoints, plots) loads on first use: the
    # library serves a user's own training loop without it.
    if name in ("restore", "Restored"):
        from .runs.restore import Restored, restore

        return {"restore": restore, "Restored": Restored}[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Episode",
    "EpisodeBatch",
    "EpisodeDataset",
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
    "Restored",
    "TaskDistributionConfig",
    "TaskDistributionSampler",
    "restore",
    "stack_episodes",
    "train_maml",
    "__version__",
]
