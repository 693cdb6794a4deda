"""fewshot_metaopt: MAML-family meta-learning and learned inner-loop optimizers."""

from .episodes import (
    Episode,
    EpisodeBatch,
    EpisodeManifest,
    TaskDistributionConfig,
    TaskDistributionSampler,
    stack_episodes,
)

__version__ = "0.1.0"

__all__ = [
    "Episode",
    "EpisodeBatch",
    "EpisodeManifest",
    "TaskDistributionConfig",
    "TaskDistributionSampler",
    "stack_episodes",
    "__version__",
]
