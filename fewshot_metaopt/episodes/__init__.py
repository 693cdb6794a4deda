"""Episodes and their sampling."""

from .augmentation import Augmentation
from .augmentation_registry import AUGMENTATIONS
from .augmented_family import AugmentedFamily
from .class_rotation import ClassRotation
from .crop_flip_jitter import CropFlipJitter, ResizedCropFlipJitter
from .episode import Episode, EpisodeBatch, stack_episodes
from .episode_draw import EpisodeDraw
from .episode_dataset import EpisodeDataset
from .interop import Learn2LearnTasks, episodes_from_torchmeta, iter_torchmeta, split_support_query
from .sampler import EpisodeManifest, TaskDistributionConfig, TaskDistributionSampler, derive_seed
from .task_family import TaskFamily

__all__ = [
    "AUGMENTATIONS",
    "Augmentation",
    "AugmentedFamily",
    "ClassRotation",
    "CropFlipJitter",
    "Episode",
    "EpisodeBatch",
    "EpisodeDataset",
    "EpisodeDraw",
    "EpisodeManifest",
    "Learn2LearnTasks",
    "ResizedCropFlipJitter",
    "TaskDistributionConfig",
    "TaskDistributionSampler",
    "TaskFamily",
    "derive_seed",
    "episodes_from_torchmeta",
    "iter_torchmeta",
    "split_support_query",
    "stack_episodes",
]
