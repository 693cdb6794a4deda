"""Episodes and their sampling."""

from .episode import Episode, EpisodeBatch, stack_episodes
from .episode_dataset import EpisodeDataset
from .interop import Learn2LearnTasks, episodes_from_torchmeta, iter_torchmeta, split_support_query
from .sampler import EpisodeManifest, TaskDistributionConfig, TaskDistributionSampler, derive_seed
from .task_family import TaskFamily

__all__ = [
    "Episode",
    "EpisodeBatch",
    "EpisodeDataset",
    "EpisodeManifest",
    "Learn2LearnTasks",
    "TaskDistributionConfig",
    "TaskDistributionSampler",
    "TaskFamily",
    "derive_seed",
    "episodes_from_torchmeta",
    "iter_torchmeta",
    "split_support_query",
    "stack_episodes",
]
