"""The algorithms a :class:`GradientMetaLearnerConfig` names, and what each one means.

An algorithm is a set of defaults and choices, not code: which parameters adapt, whether the
meta-gradient is first order, how the inner learning rate is learned, and for the Warp-Grad
algorithms how the initialisation learns. Adding one is one registration line here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Registry


@dataclass(frozen=True)
class Algorithm:
    """name: as configs spell it. first_order: the meta-gradient's order when ``first_order``
    is unset. granularity: the learned-lr granularity when ``lr_granularity`` is unset.
    adapts: ``all`` parameters, the ``head`` only (ANIL), or a warped model's ``warp``-free
    layers. warp_init: for the Warp-Grad algorithms, how the adapted layers' initialisation
    learns: ``maml`` (MAML's meta-gradient) or ``leap`` (the simplified Leap gradient)."""

    name: str
    first_order: bool = False
    granularity: str = "none"
    adapts: str = "all"
    warp_init: str | None = None

    @property
    def warped(self) -> bool:
        return self.warp_init is not None


ALGORITHMS: Registry[Algorithm] = Registry("algorithm")
for _algorithm in (
    Algorithm("maml"),
    Algorithm("fomaml", first_order=True),
    Algorithm("meta_sgd", granularity="per_parameter"),
    Algorithm("anil", adapts="head"),
    Algorithm("warp_maml", adapts="warp", warp_init="maml"),
    Algorithm("warp_leap", adapts="warp", warp_init="leap"),
):
    ALGORITHMS.register(_algorithm.name, _algorithm)

WARP_ALGORITHMS = tuple(name for name in ALGORITHMS if ALGORITHMS[name].warped)
