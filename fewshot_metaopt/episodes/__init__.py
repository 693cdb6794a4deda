"""Episodes and their sampling (Phase 50.1)."""

from .episode import Episode, EpisodeBatch, stack_episodes
from .interop import Learn2LearnTasks, episodes_from_torchmeta, iter_torchmeta, split_support_query
from .sampler import EpisodeManifest, TaskDistributionConfig, TaskDistributionSampler, derive_seed

__all__ = [
    "Episode",
    "EpisodeBatch",
    "EpisodeManifest",
    "Learn2LearnTasks",
    "TaskDistributionConfig",
    "TaskDistributionSampler",
    "derive_seed",
    "episodes_from_torchmeta",
    "iter_torchmeta",
    "split_support_query",
    "stack_episodes",
]
