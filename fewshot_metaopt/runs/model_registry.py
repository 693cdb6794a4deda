"""The networks a task file's ``model.name`` names, built for the task's data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from torch import nn

from ..models import conv4, mlp
from ..registry import Registry
from ..warp import warp_conv4, warp_mlp
from .data_sources import image_shape

if TYPE_CHECKING:  # pragma: no cover
    from .task_config import TaskConfig

MODELS: Registry[Callable[["TaskConfig"], nn.Module]] = Registry("model.name")


def _image_shape(task: "TaskConfig") -> dict:
    channels, size, _ = image_shape(task.data)
    return dict(in_channels=channels, hidden=task.model.channels or 64, image_size=size)


def _hidden(task: "TaskConfig") -> tuple[int, ...]:
    return tuple(task.model.hidden_layers or (40, 40))


MODELS.register("conv4", lambda task: conv4(task.ways, **_image_shape(task)))
MODELS.register("mlp", lambda task: mlp(1, 1, hidden=_hidden(task)))
# The same networks with a warp layer after each hidden block (Warp-Grad).
MODELS.register("warp_conv4", lambda task: warp_conv4(task.ways, **_image_shape(task), **task.model.warp_options()))
MODELS.register("warp_mlp", lambda task: warp_mlp(1, 1, hidden=_hidden(task), **task.model.warp_options()))


def build_model(task: "TaskConfig") -> nn.Module:
    """The task's network; a ``warp_`` model is the same network with warp layers between its blocks."""
    return MODELS[task.model.name](task)
