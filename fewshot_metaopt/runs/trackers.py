"""The trackers a ``[logging]`` table switches on, by name: one entry per tracking service,
each a :class:`~.callbacks.Callback` built for the run directory. Adding one is a module with
its callback, an entry here and its keys in ``LoggingSettings`` (``runs/settings.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..registry import Registry
from .callbacks import FAILED, Callback, CallbackList, RunEnd
from .extras import check_installed
from .mlflow_callback import MlflowCallback
from .tensorboard_callback import FOLDER as TENSORBOARD_FOLDER
from .tensorboard_callback import TensorBoardCallback
from .wandb_callback import WandbCallback

if TYPE_CHECKING:  # pragma: no cover
    from .run_dir import RunDir
    from .settings import LoggingSettings
    from .task_config import TaskConfig


@dataclass(frozen=True)
class Tracker:
    """``module``: what must be importable (installed by the extra of the tracker's name);
    ``build(task, run, resumed_at)``: the callback, ``resumed_at`` being the iteration a
    resumed run continues from (0 for a new run)."""

    module: str
    build: Callable[["TaskConfig", "RunDir", int], Callback]


TRACKERS: Registry[Tracker] = Registry("logging tracker")

TRACKERS.register("tensorboard", Tracker(
    "tensorboard", lambda task, run, resumed_at: TensorBoardCallback(run.path / TENSORBOARD_FOLDER, resumed_at)))
TRACKERS.register("wandb", Tracker(
    "wandb", lambda task, run, resumed_at: WandbCallback(
        run.path, run.path.name, task.to_dict(), task.logging.wandb_project, task.logging.wandb_entity,
        task.logging.wandb_mode)))
TRACKERS.register("mlflow", Tracker(
    "mlflow", lambda task, run, resumed_at: MlflowCallback(
        run.path, run.path.name, task.to_dict(), task.logging.mlflow_tracking_uri, task.logging.mlflow_experiment)))


def check_trackers(settings: "LoggingSettings") -> None:
    """Refuse a tracker whose package is missing, before the run directory is made."""
    for name in settings.enabled():
        check_installed(TRACKERS[name].module, name, f"logging.{name}")


def build_trackers(task: "TaskConfig", run: "RunDir", resumed_at: int) -> list[Callback]:
    """The callbacks of the trackers switched on; when one cannot start, those already started
    are closed (as failed) before the error goes on."""
    built: list[Callback] = []
    try:
        for name in task.logging.enabled():
            built.append(TRACKERS[name].build(task, run, resumed_at))
    except BaseException as err:
        CallbackList(built).finish(RunEnd(FAILED, resumed_at, run.path, str(err) or type(err).__name__))
        raise
    return built
