"""The running totals of one meta-batch, shared by the task loop and the vmapped chunks."""

from __future__ import annotations

import math
from typing import Iterable

from torch import Tensor

from .results import MetaTrainResult


class MetaBatchTally:
    """Query loss and accuracy summed over the tasks of a meta-batch that were kept."""

    def __init__(self) -> None:
        self.loss, self.correct, self.count, self.kept = 0.0, 0, 0, 0

    def add(self, loss: float, output: Tensor, query_y: Tensor) -> None:
        self.kept += 1
        self.loss += loss
        if not query_y.is_floating_point():
            self.correct += int((output.argmax(-1) == query_y).sum())
            self.count += query_y.numel()

    def result(self, meta_parameters: Iterable[Tensor], episodes: int, skipped: int) -> MetaTrainResult:
        """The step's result; with skipped tasks, the accumulated meta-gradient is rescaled so
        that it is the mean over the tasks kept (each task contributed 1 / ``episodes``)."""
        if self.kept == 0:
            raise FloatingPointError(f"all {episodes} tasks had non-finite losses; nothing was updated")
        if skipped:
            for p in meta_parameters:
                if p.grad is not None:
                    p.grad.mul_(episodes / self.kept)
        return MetaTrainResult(
            loss=self.loss / self.kept,
            accuracy=self.correct / self.count if self.count else None,
            grad_norm=math.nan,
            tasks=self.kept,
            skipped_tasks=skipped,
        )
