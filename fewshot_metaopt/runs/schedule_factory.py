"""The ``[meta_schedule]`` section as a :mod:`fewshot_metaopt.optim.schedules` schedule."""

from __future__ import annotations

from ..optim.schedules import Constant, Cosine, Cyclical, Schedule, Warmup
from .settings import ScheduleSettings


def build_schedule(settings: ScheduleSettings, iterations: int | None) -> Schedule:
    """The multiplier of the meta learning rate per iteration; ValueError for bad values."""
    args = settings.arguments()
    if settings.name == "cosine":
        if iterations is None:
            raise ValueError("cosine decays over train.iterations, which is not set (a minutes-only budget)")
        return Cosine(total_steps=iterations, **args)
    if settings.name == "warmup":
        if "steps" not in args:
            raise ValueError("warmup needs meta_schedule.steps (iterations of linear warm-up)")
        return Warmup(**args)
    if settings.name == "cyclical":
        if "period" not in args:
            raise ValueError("cyclical needs meta_schedule.period (iterations per cycle)")
        return Cyclical(**args)
    return Constant()
