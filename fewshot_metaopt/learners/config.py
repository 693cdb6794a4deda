"""Settings of :class:`GradientMetaLearner`, validated when built."""

from __future__ import annotations

from dataclasses import dataclass

from .. import checks
from ..config_keys import from_mapping
from ..engines.choice import ENGINES
from ..engines.precision import PRECISIONS
from ..losses import LOSSES
from ..optim.learned_lr import GRANULARITIES
from ..optim.outer_step import OUTER_OPTIMIZERS
from .algorithms import ALGORITHMS, Algorithm

BATCH_NORM_MODES = ("transductive",)

SECOND_ORDER_LR_MESSAGE = (
    "learned inner learning rates (Meta-SGD) need second-order meta-gradients: the rates act "
    "only through the inner update, and first_order=True cuts that path; use first_order=False"
)


@dataclass
class GradientMetaLearnerConfig:
    """What a :class:`GradientMetaLearner` does.

    algorithm: ``maml``, ``fomaml`` (MAML with first-order meta-gradients), ``meta_sgd``
        (per-parameter learned inner lrs, Li et al. 2017), ``anil`` (only the head adapts),
        ``imaml`` (implicit meta-gradients at a proximal inner solution, see ``imaml_lambda``),
        ``reptile`` (Nichol et al. 2018: the pseudo-gradient ``theta - phi`` of plain inner
        training, see ``reptile_batch_size``; with ``meta_optimizer="sgd"`` and ``meta_lr=eps``
        the outer step is ``theta += eps * (mean phi - theta)``), ``proto_maml``
        (Triantafillou et al. 2020: each task's linear head starts from its support set's class
        prototypes, ``W_k = 2 c_k``, ``b_k = -||c_k||^2``, then MAML adapts; first-order with
        ``first_order=True``),
        ``warp_maml`` or ``warp_leap`` (Warp-Grad, Flennerhag et al. 2020, on a
        :class:`fewshot_metaopt.warp.WarpedModel`: the warp layers learn from the Warp-Grad
        objective, the adapted layers' initialisation from MAML's meta-gradient or from the
        simplified Leap gradient, whose cost does not grow with the inner steps).
    inner_lr: inner learning rate (the initial value when it is learned), positive and finite:
        a fixed negative lr would be gradient ascent and zero adapts nothing. Learned lrs
        (Meta-SGD, ``lr_granularity`` other than ``none``) start here and may move anywhere
        during meta-training, below zero included, but start as a descent step.
    inner_steps / inner_steps_eval: inner steps when meta-training / evaluating
        (``None``: same as training).
    first_order: ``None`` follows the algorithm (True only for ``fomaml`` and ``reptile``).
    first_order_until: MAML++'s derivative-order annealing (Antoniou et al. 2019): first-order
        meta-gradients for the first ``first_order_until`` meta-iterations, second order from
        then on (0: the order ``first_order`` says throughout). For the algorithms that
        differentiate the inner steps and are not first-order already.
    meta_lr, meta_optimizer: the outer optimizer (``adam`` or ``sgd``) and its lr, finite and
        >= 0 (0 keeps the meta-parameters where they start: an untrained baseline run through
        the same pipeline).
    lr_granularity: ``none``, ``scalar``, ``per_layer``, ``per_parameter``,
        ``per_step_per_layer`` (MAML++); ``None``: ``per_parameter`` for meta_sgd, else ``none``.
    multi_step_loss: MAML++'s loss over the query loss after every inner step; its weights
        move linearly from uniform to the last step over ``multi_step_anneal_iters``
        meta-iterations (0: stay uniform).
    batch_norm: ``transductive`` — batch norm uses the statistics of the batch it sees, at
        training and test time alike (MAML's reference setting); models should keep no
        running statistics (see :func:`fewshot_metaopt.models.conv4`).
    meta_grad_clip: clip the meta-gradient's global norm to this, positive and finite
        (``None``: no clipping).
    allow_unused: let parameters get no inner gradient (otherwise an error names them).
    skip_nonfinite_tasks: drop a task whose loss turns NaN/Inf and count it, instead of
        raising.
    loss: ``auto`` (cross-entropy for integer labels, MSE for float targets), or fixed.
    warp_points, warp_buffer_size: Warp-Grad: trajectory points per warp update, and points
        the replay buffer keeps.
    engine: what runs the inner loop: ``higher`` (monkeypatched modules, higher's
        differentiable optimizers), ``func`` (functional fast weights, faster: see
        ``docs/engines.md``) or ``auto`` (``func``, but ``higher`` for the Warp-Grad
        algorithms, which record higher's trajectories). Both give the same meta-gradients.
    vmap_tasks: the func engine adapts same-shaped tasks together with ``torch.func.vmap``
        instead of one after another (slower on the CPU, for accelerators).
    vmap_chunk_size: with ``vmap_tasks``, tasks per vmapped chunk; each chunk's meta-gradient
        is taken before the next one runs, which bounds memory (``None``: the whole meta-batch).
    reptile_batch_size: Reptile's inner steps descend on mini-batches of this many support
        examples, drawn without replacement and cycled through (``None``: every step on the
        whole support set, as is a size that covers it). Evaluation adapts on the whole support
        set.
    imaml_lambda, cg_steps, cg_damping: iMAML (``algorithm="imaml"``, Rajeswaran et al. 2019):
        the inner loop runs ``inner_steps`` steps of the inner rule on the support loss plus
        ``imaml_lambda / 2 * ||phi - theta||^2`` and keeps no graph; the meta-gradient
        ``(I + H / imaml_lambda)^-1 grad L_query(phi)`` (H: the support loss's Hessian at the
        adapted weights) is solved by ``cg_steps`` steps of conjugate gradient on Hessian-vector
        products, with ``(1 + cg_damping) I + H / imaml_lambda`` as the matrix (0: the exact
        system; the reference code damps with 1). Memory does not grow with ``inner_steps``.
    precision: ``fp32``, ``bf16`` (autocast on CPU and CUDA) or ``fp16`` (CUDA, with loss
        scaling): the precision of the network's forward passes, inner and outer; losses,
        batch-norm statistics, learned lrs and rule states, and meta-gradients stay float32
        (see :mod:`fewshot_metaopt.engines.precision`).
    """

    algorithm: str = "maml"
    inner_lr: float = 0.4
    inner_steps: int = 1
    inner_steps_eval: int | None = None
    first_order: bool | None = None
    meta_lr: float = 1e-3
    meta_optimizer: str = "adam"
    lr_granularity: str | None = None
    multi_step_loss: bool = False
    multi_step_anneal_iters: int = 0
    batch_norm: str = "transductive"
    meta_grad_clip: float | None = None
    allow_unused: bool = False
    skip_nonfinite_tasks: bool = False
    loss: str = "auto"
    warp_points: int = 16
    warp_buffer_size: int = 100
    engine: str = "auto"
    vmap_tasks: bool = False
    vmap_chunk_size: int | None = None
    precision: str = "fp32"
    imaml_lambda: float = 2.0
    cg_steps: int = 5
    cg_damping: float = 0.0
    first_order_until: int = 0
    reptile_batch_size: int | None = None

    def __post_init__(self) -> None:
        checks.choose("algorithm", self.algorithm, ALGORITHMS.names())
        checks.choose("meta_optimizer", self.meta_optimizer, OUTER_OPTIMIZERS.names())
        checks.choose("batch_norm", self.batch_norm, BATCH_NORM_MODES)
        checks.choose("loss", self.loss, LOSSES)
        checks.choose("engine", self.engine, ("auto", *ENGINES.names()))
        checks.choose("precision", self.precision, PRECISIONS.names())
        if self.lr_granularity is not None:
            checks.choose("lr_granularity", self.lr_granularity, GRANULARITIES)
        if checks.integer("inner_steps", self.inner_steps) < 1:
            raise checks.ConfigError("inner_steps",
                                     f"inner_steps must be >= 1 for meta-training, got {self.inner_steps}")
        checks.at_least("inner_steps_eval", self.inner_steps_eval, 0)
        checks.positive("inner_lr", self.inner_lr)
        checks.at_least("meta_lr", self.meta_lr, 0)
        checks.optional_positive("meta_grad_clip", self.meta_grad_clip)
        checks.positive("imaml_lambda", self.imaml_lambda)
        checks.integer("cg_steps", self.cg_steps, least=1)
        checks.at_least("cg_damping", self.cg_damping, 0)
        checks.integer("first_order_until", self.first_order_until, least=0)
        if self.reptile_batch_size is not None:
            checks.integer("reptile_batch_size", self.reptile_batch_size, least=1)
        for name in ("warp_points", "warp_buffer_size", "multi_step_anneal_iters", "vmap_chunk_size"):
            checks.at_least(name, getattr(self, name), 0 if name == "multi_step_anneal_iters" else 1)
        if self.algorithm == "warp_leap" and (self.granularity != "none" or self.multi_step_loss):
            raise ValueError("warp_leap does not differentiate the inner loop: learned inner lrs and "
                             "multi_step_loss need warp_maml")
        if self.method.strategy == "reptile":
            self._check_reptile()
        if self.method.first_order and self.first_order is False:
            raise ValueError(f"algorithm {self.algorithm!r} is first-order; first_order=False contradicts it")
        if self.uses_first_order and self.granularity != "none":
            raise ValueError(SECOND_ORDER_LR_MESSAGE)
        if self.engine == "func" and self.method.warped:
            raise ValueError(f"algorithm {self.algorithm!r} runs on the higher engine only (its replay buffer "
                             "records higher's fast weights); use engine='higher' or 'auto'")
        if self.vmap_tasks and self.inner_engine != "func":
            raise ValueError("vmap_tasks needs the func engine")
        if self.vmap_tasks and self.allow_unused:
            raise ValueError("vmap_tasks cannot tell an unused parameter from a zero gradient; "
                             "use allow_unused=False or vmap_tasks=False")
        if self.method.proximal:
            self._check_implicit()
        if self.first_order_until:
            self._check_annealing()
        if self.vmap_chunk_size is not None and not self.vmap_tasks:
            raise ValueError(f"vmap_chunk_size must be >= 1 and needs vmap_tasks=True, got {self.vmap_chunk_size}")

    def _check_implicit(self) -> None:
        """iMAML's meta-gradient is the implicit one at the inner solution: it does not pass
        through the inner updates, so nothing that needs that path applies."""
        name = repr(self.algorithm)
        if self.granularity != "none":
            raise ValueError(f"algorithm {name} learns no inner learning rate (its implicit meta-gradient does not "
                             f"pass through the inner updates); use lr_granularity=None or 'none', got "
                             f"{self.lr_granularity!r}")
        if self.multi_step_loss:
            raise ValueError(f"algorithm {name} scores the inner solution only; use multi_step_loss=False")
        if self.first_order is not None:
            raise ValueError(f"algorithm {name} takes the implicit meta-gradient, set by cg_steps and cg_damping; "
                             f"first_order does not apply (leave it unset), got {self.first_order}")
        if self.vmap_tasks:
            raise ValueError(f"algorithm {name} adapts tasks one after another; use vmap_tasks=False")
        if self.precision == "fp16":
            raise ValueError(f"algorithm {name} does not scale its conjugate-gradient solve for fp16; "
                             "use precision 'fp32' or 'bf16'")

    def _check_reptile(self) -> None:
        """Reptile's pseudo-gradient does not pass through the inner updates or the query set."""
        name = repr(self.algorithm)
        if self.granularity != "none":
            raise ValueError(f"algorithm {name} learns no inner learning rate (its pseudo-gradient theta - phi does "
                             f"not pass through the inner updates); use lr_granularity=None or 'none', got "
                             f"{self.lr_granularity!r}")
        if self.multi_step_loss:
            raise ValueError(f"algorithm {name} takes no query loss during adaptation; use multi_step_loss=False")

    def _check_annealing(self) -> None:
        """Annealing switches the order of a meta-gradient that runs back through the inner steps."""
        n = self.first_order_until
        if not self.method.unrolls:
            raise ValueError(f"first_order_until applies to meta-gradients taken back through the inner steps; "
                             f"algorithm {self.algorithm!r} never differentiates them; use 0, got {n}")
        if self.uses_first_order:
            why = "first_order=True" if self.first_order else f"algorithm {self.algorithm!r}"
            raise ValueError(f"first_order_until={n} switches to second-order meta-gradients after {n} iterations, "
                             f"but {why} keeps them first-order throughout; use algorithm 'maml' (or first_order "
                             "unset) with first_order_until, or first_order_until=0")

    def first_order_at(self, iteration: int) -> bool:
        """Whether the meta-gradient of meta-iteration ``iteration`` (counted from 0) is first-order."""
        return self.uses_first_order or iteration < self.first_order_until

    @property
    def method(self) -> Algorithm:
        """What the named algorithm means (its registry entry)."""
        return ALGORITHMS[self.algorithm]

    @property
    def uses_first_order(self) -> bool:
        return self.method.first_order if self.first_order is None else bool(self.first_order)

    @property
    def inner_engine(self) -> str:
        """The engine ``engine`` resolves to: ``higher`` or ``func``."""
        if self.engine == "auto":
            return "higher" if self.method.warped else "func"
        return self.engine

    @property
    def granularity(self) -> str:
        if self.lr_granularity is not None:
            return self.lr_granularity
        return self.method.granularity

    @property
    def eval_steps(self) -> int:
        return self.inner_steps if self.inner_steps_eval is None else self.inner_steps_eval

    def default_search_space(self) -> dict[str, dict[str, list]]:
        """The hyperparameters worth searching first, with ranges that cover the published
        settings (sinusoid's inner lr 0.01, Omniglot's 0.4; Adam at 1e-3), in the form of a
        task file's ``[search]`` table (``{"inner_lr": {"log_uniform": [0.001, 1.0]}, ...}``;
        see docs/tuning.md). The same for every algorithm: Meta-SGD's and MAML++'s learned
        lrs start at ``inner_lr``, so it matters to them too."""
        return {
            "inner_lr": {"log_uniform": [1e-3, 1.0]},
            "inner_steps": {"int": [1, 5]},
            "meta_lr": {"log_uniform": [1e-4, 1e-2]},
        }

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "GradientMetaLearnerConfig":
        return from_mapping(cls, values, source, "learner")
