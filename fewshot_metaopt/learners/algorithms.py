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
    learns: ``maml`` (MAML's meta-gradient) or ``leap`` (the simplified Leap gradient).
    strategy: the meta-gradient strategy (``learners/strategies.py``) the algorithm needs, or
    ``None`` for the default choice (the task loop, or vmapped chunks). proximal: the inner
    loop minimises the support loss plus ``lambda/2 ||phi - theta||^2`` (iMAML).
    prototype_head: each task's linear head starts from the class prototypes of its support
    set (Proto-MAML, ``learners/prototype_head.py``).
    keys: the config fields read only by the algorithms that list them; a task file that sets
    one for another algorithm is refused."""

    name: str
    first_order: bool = False
    granularity: str = "none"
    adapts: str = "all"
    warp_init: str | None = None
    strategy: str | None = None
    proximal: bool = False
    prototype_head: bool = False
    keys: tuple[str, ...] = ()

    @property
    def warped(self) -> bool:
        return self.warp_init is not None

    @property
    def unrolls(self) -> bool:
        """Whether the meta-gradient is taken back through the inner steps (MAML's family), so
        that its order is a choice (``first_order``, ``first_order_until``). Reptile, iMAML
        and Warp-Leap never differentiate the inner steps."""
        return self.strategy is None and self.warp_init != "leap"


WARP_KEYS = ("warp_points", "warp_buffer_size")
IMAML_KEYS = ("imaml_lambda", "cg_steps", "cg_damping")
REPTILE_KEYS = ("reptile_batch_size",)

ALGORITHMS: Registry[Algorithm] = Registry("algorithm")
for _algorithm in (
    Algorithm("maml"),
    Algorithm("fomaml", first_order=True),
    Algorithm("meta_sgd", granularity="per_parameter"),
    Algorithm("anil", adapts="head"),
    Algorithm("warp_maml", adapts="warp", warp_init="maml", keys=WARP_KEYS),
    Algorithm("warp_leap", adapts="warp", warp_init="leap", keys=WARP_KEYS),
    # iMAML (Rajeswaran et al. 2019): a proximal inner loop that keeps no graph, and the implicit
    # meta-gradient solved by conjugate gradient (learners/implicit_gradient.py).
    Algorithm("imaml", strategy="implicit", proximal=True, keys=IMAML_KEYS),
    # Reptile (Nichol et al. 2018): the pseudo-gradient theta - phi of plain inner training
    # (learners/reptile.py); first-order by nature, nothing differentiates the inner steps.
    Algorithm("reptile", first_order=True, strategy="reptile", keys=REPTILE_KEYS),
    # Proto-MAML (Triantafillou et al. 2020): MAML from a head built of the support prototypes.
    Algorithm("proto_maml", prototype_head=True),
):
    ALGORITHMS.register(_algorithm.name, _algorithm)

WARP_ALGORITHMS = tuple(name for name in ALGORITHMS if ALGORITHMS[name].warped)


def algorithms_reading(key: str) -> list[str]:
    """The algorithms that list ``key`` among their own config keys (``Algorithm.keys``)."""
    return [name for name in ALGORITHMS if key in ALGORITHMS[name].keys]


def owned_keys() -> set[str]:
    """Every config key that only some algorithms read."""
    return {key for name in ALGORITHMS for key in ALGORITHMS[name].keys}
