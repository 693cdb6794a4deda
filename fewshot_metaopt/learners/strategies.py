"""How a learner turns a meta-batch into a meta-gradient: one strategy per way of running the
tasks, each talking to the learner only through :class:`~.interface.MetaLearner`."""

from __future__ import annotations

from typing import Callable, List

from ..episodes.episode import Episode
from ..registry import Registry
from .config import GradientMetaLearnerConfig
from .implicit_gradient import accumulate_implicit_meta_gradient
from .interface import MetaLearner
from .reptile import accumulate_reptile_pseudo_gradient
from .results import MetaTrainResult
from .task_loop import accumulate_task_loop_meta_gradient
from .vmapped_tasks import accumulate_vmapped_meta_gradient
from .warp_maml import accumulate_warp_meta_gradient

Strategy = Callable[[MetaLearner, List[Episode]], MetaTrainResult]

STRATEGIES: Registry[Strategy] = Registry("meta-gradient strategy")
STRATEGIES.register("task_loop", accumulate_task_loop_meta_gradient)
STRATEGIES.register("vmapped", accumulate_vmapped_meta_gradient)
STRATEGIES.register("warp", accumulate_warp_meta_gradient)
STRATEGIES.register("implicit", accumulate_implicit_meta_gradient)
STRATEGIES.register("reptile", accumulate_reptile_pseudo_gradient)


def strategy_for(config: GradientMetaLearnerConfig) -> Strategy:
    """Warp-Grad algorithms learn from trajectories; ``vmap_tasks`` batches same-shaped tasks;
    an algorithm that names its own strategy (iMAML's implicit one, Reptile's pseudo-gradient,
    which runs serial or vmapped by ``vmap_tasks`` itself) gets it; everything else
    loops over the tasks."""
    if config.method.strategy is not None:
        return STRATEGIES[config.method.strategy]
    if config.method.warped:
        return STRATEGIES["warp"]
    return STRATEGIES["vmapped" if config.vmap_tasks else "task_loop"]
