"""Warp-Grad (Flennerhag et al. 2020): warped models, the replay buffer and the meta-objective."""

from .effective_lr import warp_effective_lr
from .layers import WarpedModel, WarpLayer, warp_conv, warp_conv4, warp_linear, warp_mlp
from .objective import leap_init_gradient, warp_meta_loss, warp_step_loss
from .replay import ReplayBuffer, TrajectoryPoint
from .warp_grad import TaskRun, WarpGradRule, WarpGradTrainer

__all__ = [
    "ReplayBuffer",
    "TaskRun",
    "TrajectoryPoint",
    "WarpGradRule",
    "WarpGradTrainer",
    "WarpLayer",
    "WarpedModel",
    "leap_init_gradient",
    "warp_conv",
    "warp_conv4",
    "warp_effective_lr",
    "warp_linear",
    "warp_meta_loss",
    "warp_mlp",
    "warp_step_loss",
]
