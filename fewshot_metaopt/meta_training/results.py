"""What one meta-training step of a :class:`~.meta_optimizer.MetaOptimizer` reports."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MetaOptTrainResult:
    """One :meth:`MetaOptimizer.meta_train_step`: mean meta-loss per window and step, the
    mean final loss (after all inner steps), the last window's meta-gradient norm (before
    clipping), and how many windows were updated."""

    meta_loss: float
    final_loss: float
    grad_norm: float
    windows: int
    inner_steps: int
