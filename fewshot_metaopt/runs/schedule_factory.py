"""The ``[meta_schedule]`` section as a :mod:`fewshot_metaopt.optim.schedules` schedule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..optim.schedules import Constant, Cosine, Cyclical, Schedule, Warmup
from ..registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from .settings import ScheduleSettings

# ``builder(arguments, iterations)`` -> the schedule ``meta_schedule.name`` names.
SCHEDULES: Registry[Callable[[dict[str, Any], "int | None"], Schedule]] = Registry("meta_schedule.name")


@SCHEDULES.register("constant")
def _constant(args: dict[str, Any], iterations: int | None) -> Schedule:
    return Constant()


@SCHEDULES.register("cosine")
def _cosine(args: dict[str, Any], iterations: int | None) -> Schedule:
    if iterations is None:
        raise ValueError("cosine decays over train.iterations, which is not set (a minutes-only budget)")
    return Cosine(total_steps=iterations, **args)


@SCHEDULES.register("warmup")
def _warmup(args: dict[str, Any], iterations: int | None) -> Schedule:
    if "steps" not in args:
        raise ValueError("warmup needs meta_schedule.steps (iterations of linear warm-up)")
    return Warmup(**args)


@SCHEDULES.register("cyclical")
def _cyclical(args: dict[str, Any], iterations: int | None) -> Schedule:
    if "period" not in args:
        raise ValueError("cyclical needs meta_schedule.period (iterations per cycle)")
    return Cyclical(**args)


def build_schedule(settings: "ScheduleSettings", iterations: int | None) -> Schedule:
    """The multiplier of the meta learning rate per iteration; ValueError for bad values."""
    return SCHEDULES[settings.name](settings.arguments(), iterations)
