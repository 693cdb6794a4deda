"""The ``ModelAgnosticMetaLearning`` / ``train_maml`` front end of the Meta-SGD seed.

Both are thin layers over :class:`GradientMetaLearner`: the mathematics lives there once.

>>> maml = ModelAgnosticMetaLearning(model, inner_lr=0.01, outer_lr=0.001, inner_steps=5, meta_sgd=True)
>>> loss = maml.meta_train_step(support_x, support_y, query_x, query_y)
>>> model, maml, losses = train_maml(model, sampler, num_iterations=1000, meta_sgd=True)
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..episodes.episode import Episode
from ..episodes.sampler import TaskDistributionSampler
from .config import SECOND_ORDER_LR_MESSAGE, GradientMetaLearnerConfig
from .gradient_meta_learner import GradientMetaLearner
from .results import EvaluationResult


def _is_batched(support_data: Tensor, support_labels: Tensor) -> bool:
    """Integer labels: ``(T, n)`` is a batch. Float targets: inputs ``(T, n, features)`` are."""
    if support_labels.is_floating_point():
        return support_data.dim() >= 3
    return support_labels.dim() >= 2


def tensors_to_episodes(
    support_data: Tensor,
    support_labels: Tensor,
    query_data: Tensor,
    query_labels: Tensor,
    batched: bool | None = None,
) -> list[Episode]:
    """One task's tensors, or a batch with a leading task dimension, as Episodes."""
    if batched is None:
        batched = _is_batched(support_data, support_labels)
    if not batched:
        return [Episode(support_data, support_labels, query_data, query_labels)]
    sizes = {support_data.shape[0], support_labels.shape[0], query_data.shape[0], query_labels.shape[0]}
    if len(sizes) != 1:
        raise ValueError(f"batched tensors disagree on the number of tasks: {sorted(sizes)}")
    return [Episode(*parts) for parts in zip(support_data, support_labels, query_data, query_labels)]


class ModelAgnosticMetaLearning:
    """MAML, first-order MAML or Meta-SGD behind the ``ModelAgnosticMetaLearning`` constructor.

    ``meta_sgd=True`` learns a per-parameter inner learning rate (initialised to
    ``inner_lr``) together with the initialisation; it needs ``first_order=False``.
    Further :class:`GradientMetaLearnerConfig` fields may be passed as keywords.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        outer_lr: float = 0.001,
        inner_steps: int = 5,
        meta_sgd: bool = False,
        first_order: bool = False,
        **config: Any,
    ) -> None:
        if meta_sgd and first_order:
            raise ValueError(f"meta_sgd=True with first_order=True: {SECOND_ORDER_LR_MESSAGE}")
        algorithm = "meta_sgd" if meta_sgd else ("fomaml" if first_order else "maml")
        settings = dict(algorithm=algorithm, inner_lr=inner_lr, meta_lr=outer_lr, inner_steps=inner_steps)
        overlap = sorted(set(settings) & set(config))
        if overlap:
            raise ValueError(f"set {overlap[0]!r} through the named arguments, not as an extra keyword")
        self.model = model
        self.learner = GradientMetaLearner(model, GradientMetaLearnerConfig.from_dict(settings | config, "ModelAgnosticMetaLearning"))

    @property
    def meta_sgd(self) -> bool:
        return self.learner.config.algorithm == "meta_sgd"

    @property
    def meta_sgd_lrs(self) -> nn.ParameterList | None:
        """Meta-SGD's learned inner learning rates, the very tensors the outer optimizer trains
        (``None`` without ``meta_sgd``): one entry per adapted parameter tensor, shaped like it
        at the default per-parameter granularity (0-dim at ``lr_granularity="per_layer"``; one
        entry in all at ``scalar`` and ``per_step_per_layer``)."""
        lrs = getattr(self.learner.rule, "lrs", None)
        return lrs.values if self.meta_sgd and lrs is not None else None

    @property
    def meta_optimizer(self) -> torch.optim.Optimizer:
        """The outer optimizer over the initialisation and, with ``meta_sgd``, the learning rates."""
        return self.learner.meta_optimizer

    def meta_train_step(
        self,
        support_data: Tensor,
        support_labels: Tensor,
        query_data: Tensor,
        query_labels: Tensor,
        batched: bool | None = None,
    ) -> float:
        """One outer update on one task or a batch of tasks; returns the mean query loss."""
        episodes = tensors_to_episodes(support_data, support_labels, query_data, query_labels, batched)
        return self.learner.meta_train_step(episodes).loss

    def adapt(self, support_data: Tensor, support_labels: Tensor, steps: int | None = None):
        empty = support_data[:0]
        return self.learner.adapt(Episode(support_data, support_labels, empty, support_labels[:0]), steps)

    def evaluate(self, episodes: Iterable[Episode], steps: int | None = None) -> EvaluationResult:
        return self.learner.evaluate(episodes, steps)

    def get_learned_lr(self) -> dict[str, float]:
        return self.learner.get_learned_lr()


def _meta_batches(task_dataloader: Any, meta_batch_size: int, num_iterations: int | None) -> Iterator[list[Episode]]:
    if isinstance(task_dataloader, TaskDistributionSampler):
        if num_iterations is None:
            per_epoch = task_dataloader.config.episodes_per_epoch
            if per_epoch is None:
                raise ValueError("the sampler is endless: pass num_iterations to train_maml")
            num_iterations = max(per_epoch // meta_batch_size, 1)
        for _ in range(num_iterations):
            yield task_dataloader.sample_batch(meta_batch_size)
        return
    for i, item in enumerate(task_dataloader):
        if num_iterations is not None and i >= num_iterations:
            return
        if isinstance(item, Episode):
            yield [item]
        elif isinstance(item, (list, tuple)) and item and all(isinstance(e, Episode) for e in item):
            yield list(item)
        elif isinstance(item, (list, tuple)) and len(item) == 4:
            yield tensors_to_episodes(*item)
        else:
            raise ValueError(
                f"task_dataloader item {i} is a {type(item).__name__}; expected an Episode, a list of "
                "Episodes or (support_x, support_y, query_x, query_y)"
            )


def train_maml(
    model: nn.Module,
    task_dataloader: Any,
    inner_lr: float = 0.01,
    outer_lr: float = 0.001,
    inner_steps: int = 5,
    meta_sgd: bool = False,
    first_order: bool = False,
    num_iterations: int | None = None,
    meta_batch_size: int = 4,
    progress: bool = True,
    **config: Any,
) -> tuple[nn.Module, ModelAgnosticMetaLearning, list[float]]:
    """Meta-train ``model``; returns it, the trainer and the per-iteration query losses.

    ``task_dataloader`` is a :class:`TaskDistributionSampler` (``meta_batch_size`` episodes
    per iteration; pass ``num_iterations`` for an endless one) or any iterable of Episodes,
    lists of Episodes, or ``(support_x, support_y, query_x, query_y)`` tuples (one task or a
    batch with a leading task dimension).
    """
    if meta_batch_size < 1:
        raise ValueError(f"meta_batch_size must be >= 1, got {meta_batch_size}")
    maml = ModelAgnosticMetaLearning(
        model, inner_lr=inner_lr, outer_lr=outer_lr, inner_steps=inner_steps,
        meta_sgd=meta_sgd, first_order=first_order, **config,
    )
    losses: list[float] = []
    bar = tqdm(
        _meta_batches(task_dataloader, meta_batch_size, num_iterations),
        total=num_iterations, disable=not progress, desc="meta-train", unit="it",
    )
    for episodes in bar:
        result = maml.learner.meta_train_step(episodes)
        losses.append(result.loss)
        postfix = {"loss": f"{result.loss:.4f}"}
        if result.accuracy is not None:
            postfix["acc"] = f"{result.accuracy:.3f}"
        bar.set_postfix(postfix)
    if not losses:
        raise ValueError("task_dataloader yielded no tasks")
    return model, maml, losses


__all__ = ["ModelAgnosticMetaLearning", "tensors_to_episodes", "train_maml"]
