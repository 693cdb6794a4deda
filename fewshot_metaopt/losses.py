"""The task loss shared by the learners and the learned optimizers."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

LOSSES = ("auto", "cross_entropy", "mse")


def task_loss(output: Tensor, target: Tensor, kind: str = "auto", where: str = "task") -> Tensor:
    """Cross-entropy for integer labels, MSE for float targets (``kind="auto"``).

    Labels outside the model's outputs and targets whose shape differs from the output raise
    a one-line ``ValueError`` that starts with ``where`` (e.g. ``"task 3: support"``).
    """
    if kind == "auto":
        kind = "mse" if target.is_floating_point() else "cross_entropy"
    if kind == "cross_entropy":
        classes = output.shape[-1]
        if target.numel():
            low, high = int(target.min()), int(target.max())
            if low < 0 or high >= classes:
                bad = high if high >= classes else low
                raise ValueError(f"{where} label {bad} is out of range for a model with {classes} outputs")
        return F.cross_entropy(output, target)
    if output.shape != target.shape:
        raise ValueError(
            f"{where} targets of shape {tuple(target.shape)} do not match the model's output {tuple(output.shape)}"
        )
    return F.mse_loss(output, target)
