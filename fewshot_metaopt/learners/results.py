"""What a meta-training step and an evaluation report."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class MetaTrainResult:
    """One outer update: mean query loss and accuracy over the tasks kept, the meta-gradient's
    global norm before clipping, how many tasks were skipped for non-finite losses, and for
    the Warp-Grad algorithms the warp objective's value."""

    loss: float
    accuracy: float | None
    grad_norm: float
    tasks: int
    skipped_tasks: int = 0
    warp_loss: float | None = None


@dataclass
class EvaluationResult:
    """Per-episode values of ``metric`` (``accuracy`` or ``mse``) with mean and 95% CI half-width."""

    metric: str
    values: list[float] = field(repr=False)
    losses: list[float] = field(repr=False)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def ci95(self) -> float:
        """1.96 standard errors (sample standard deviation); 0 for a single episode."""
        n = len(self.values)
        if n < 2:
            return 0.0
        m = self.mean
        var = sum((v - m) ** 2 for v in self.values) / (n - 1)
        return 1.96 * math.sqrt(var / n)

    @property
    def accuracies(self) -> list[float]:
        if self.metric != "accuracy":
            raise AttributeError(f"this evaluation measured {self.metric}, not accuracy")
        return self.values

    def __str__(self) -> str:
        scale, unit = (100.0, "%") if self.metric == "accuracy" else (1.0, "")
        return (
            f"{self.metric} {scale * self.mean:.2f}{unit} ± {scale * self.ci95:.2f}{unit} "
            f"(95% CI, {len(self.values)} episodes)"
        )
