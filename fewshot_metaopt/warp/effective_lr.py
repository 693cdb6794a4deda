"""What learning rate a warped model's inner SGD amounts to, per adapted tensor."""

from __future__ import annotations

from typing import Dict

import torch
from torch.func import functional_call

from ..episodes.episode import Episode
from ..losses import task_loss
from .layers import WarpedModel


def warp_effective_lr(model: WarpedModel, episode: Episode, inner_lr: float, loss: str = "auto") -> Dict[str, float]:
    """``inner_lr * mean|grad with warps| / mean|grad without warps|`` per adapted tensor, on
    ``episode``'s support set at the model's current weights: the SGD lr that would move each
    tensor as far in the unwarped model. Identity warps give exactly ``inner_lr``."""
    names = model.adapted_parameter_names()
    params = dict(model.named_parameters())
    adapted = [params[n] for n in names]

    def grads() -> list:
        out = functional_call(model, params, (episode.support_x,))
        return torch.autograd.grad(task_loss(out, episode.support_y, loss), adapted)

    with torch.enable_grad():
        warped = grads()
        with model.warps_bypassed():
            plain = grads()
    return {n: inner_lr * float(w.abs().mean() / p.abs().mean()) for n, w, p in zip(names, warped, plain)}
