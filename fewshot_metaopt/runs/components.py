"""Turning a :class:`TaskConfig` into the objects a run uses: model, learner, samplers, schedule."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from ..episodes.sampler import EpisodeManifest, TaskDistributionSampler, derive_seed
from ..learners import GradientMetaLearner
from ..meta_training.meta_optimizer import MetaOptimizer
from ..optim.schedules import schedule_optimizer
from .model_registry import build_model
from .schedule_factory import build_schedule
from .task_config import TaskConfig

# Validation and test manifests are drawn from seeds of their own, so that the sinusoid
# family (one family for every role) never validates on its test tasks.
_MANIFEST_STREAM = {"train": 100, "val": 101, "test": 102}


def build_learner(task: TaskConfig, device: str | torch.device = "cpu") -> GradientMetaLearner:
    """The model (initialised from the global torch RNG) and its meta-learner."""
    model = build_model(task).to(device)
    rule_config = task.meta_optimizer_config()
    rule = MetaOptimizer(model, rule_config) if rule_config is not None else None
    return GradientMetaLearner(model, task.learner, inner_optimizer=rule)


def build_scheduler(task: TaskConfig, learner: GradientMetaLearner) -> LambdaLR | None:
    """Torch's scheduler of the meta learning rate, or None when it stays constant."""
    if task.meta_schedule.name == "constant":
        return None  # torch's scheduler would only multiply by 1
    return schedule_optimizer(learner.meta_optimizer, build_schedule(task.meta_schedule, task.train.iterations))


def train_sampler(task: TaskConfig, source: Any) -> TaskDistributionSampler:
    """The training stream, augmented when ``data.augment_splits`` holds ``train`` (its default)."""
    e = task.episodes
    return TaskDistributionSampler(source, ways=task.ways, shots=e.shots, queries=e.queries, seed=task.seed,
                                   augment=task.data.augmentation("train"))


def manifest(task: TaskConfig, source: Any, role: str, episodes: int) -> EpisodeManifest:
    """The fixed episodes that score ``role``; ``fixed(100)`` is a prefix of ``fixed(600)``.
    Augmented only when ``data.augment_splits`` names ``role``."""
    seed = derive_seed(task.seed, _MANIFEST_STREAM[role])
    sampler = TaskDistributionSampler(source, ways=task.ways, shots=task.episodes.shots,
                                      queries=task.eval_queries, seed=seed, augment=task.data.augmentation(role))
    return sampler.fixed(episodes)
