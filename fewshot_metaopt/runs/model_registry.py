"""The networks a task file's ``model.name`` names, built for the task's data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from torch import nn

from ..models import TRANSDUCTIVE, conv4, mlp, resnet12, wrn28_10
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


def _batch_norm(task: "TaskConfig") -> dict:
    """The batch-norm mode; per-step batch norm keeps a row per inner step of meta-training."""
    return dict(batch_norm=task.model.batch_norm or TRANSDUCTIVE, inner_steps=task.learner.inner_steps)


def _resnet12(task: "TaskConfig") -> nn.Module:
    channels, _, _ = image_shape(task.data)
    dropblock = {key: value for key, value in (("drop_rate", task.model.drop_rate),
                                               ("dropblock_size", task.model.dropblock_size)) if value is not None}
    return resnet12(task.ways, in_channels=channels, **_batch_norm(task), **dropblock)


MODELS.register("conv4", lambda task: conv4(task.ways, **_image_shape(task), **_batch_norm(task)))
MODELS.register("mlp", lambda task: mlp(1, 1, hidden=_hidden(task)))
# The same networks with a warp layer after each hidden block (Warp-Grad).
MODELS.register("warp_conv4", lambda task: warp_conv4(task.ways, **_image_shape(task), **task.model.warp_options()))
MODELS.register("warp_mlp", lambda task: warp_mlp(1, 1, hidden=_hidden(task), **task.model.warp_options()))
# MetaOptNet's ResNet-12 and WRN-28-10. Both pool globally, so the image size is free (ResNet-12
# halves it four times: 16 pixels or more).
MODELS.register("resnet12", _resnet12)
MODELS.register("wrn28_10", lambda task: wrn28_10(task.ways, image_shape(task.data)[0], **_batch_norm(task)))


def build_model(task: "TaskConfig") -> nn.Module:
    """The task's network; a ``warp_`` model is the same network with warp layers between its blocks."""
    return MODELS[task.model.name](task)
