"""Settings of :class:`~.meta_optimizer.MetaOptimizer`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict

from .. import checks
from ..config_keys import from_mapping
from ..engines.precision import PRECISIONS
from ..losses import LOSSES
from ..optim.rules.lstm_variants import LSTM_VARIANTS
from ..optim.rules.preprocess import RULE_INITS
from ..registry import Registry
from .rule_registry import RULES

WARP_INIT_OBJECTIVES = ("none", "leap")
META_LOSSES = ("query", "support")

# ``builder(meta_optimizer)`` -> the trainer of ``MetaOptimizer.meta_train_step``. The trainers
# import this module for its config, so this table cannot import them: meta_optimizer.py, which
# imports both, registers them, and the package imports it before any config is made.
OUTER_TRAINERS: Registry[Callable[[Any], Any]] = Registry("outer_trainer")


@dataclass
class MetaOptimizerConfig:
    """What a :class:`~.meta_optimizer.MetaOptimizer` learns and how it is trained.

    method: ``meta_sgd``, ``lstm``, ``l2o`` or ``warp_grad`` (Flennerhag et al. 2020; the base
        model must be a :class:`fewshot_metaopt.warp.WarpedModel`: its warp layers are the
        meta-parameters and the inner loop is SGD at ``inner_lr`` on the adapted layers).
    hidden_size, num_layers: the LSTM's (``lstm``) or the MLP's hidden width (``l2o``).
    preconditioning: ``meta_sgd`` learns a per-parameter lr tensor (a learned diagonal
        preconditioner); ``False`` learns one scalar lr instead. The other methods always
        precondition (their updates are coordinatewise functions of gradient statistics).
    coordinatewise: the learned optimizers apply one small network to every coordinate,
        weights shared, which is what lets them scale and transfer across architectures;
        there is no non-coordinatewise variant.
    meta_lr: Adam's lr for the rule's meta-parameters in :meth:`MetaOptimizer.meta_train_step`
        (positive).
    unroll_steps: the truncated-BPTT window.
    gradient_clipping: max global norm of each window's meta-gradient (``0``: no clipping).
    lstm_variant: ``faithful`` (Andrychowicz 2016; 2 x num_layers x hidden floats of state per
        coordinate) or ``scalable`` (at most 2 floats per coordinate plus a per-tensor LSTM).
    inner_lr: the untrained rule's step size: Meta-SGD's initial lr, the lr of the Adam that an
        untrained scalable LSTM equals, the sign-descent step of an untrained faithful LSTM and
        the L2O rule's ``step_mult`` (see ``rule_init``); positive, since each is a descent step.
    rule_init: ``descent`` — each learned rule starts as a hand-designed descent method and
        meta-training learns corrections (its readout starts at zero); ``random`` — the
        papers' random initialisation (untrained rules then move weights in arbitrary
        directions; see docs/meta_optimizer.md).
    inner_steps: inner steps per episode in ``meta_train_step``.
    second_order: keep the inner gradients in the graph (the papers feed them as constants).
    output_scale: the LSTM's output scale (paper: 0.1), positive (the scalable LSTM starts at
        ``log(inner_lr / output_scale)``).
    meta_loss: ``query`` (few-shot generalisation) or ``support`` (the paper's optimisee loss).
    loss: the task loss (``auto``: cross-entropy for integer labels, MSE otherwise).
    warp_buffer_size: ``warp_grad``: trajectory points the replay buffer keeps.
    warp_points: ``warp_grad``: points sampled per warp update (its cost, whatever
        ``inner_steps``); the objective steps on a point's support set and evaluates on
        ``meta_loss``'s set.
    warp_init: ``warp_grad``: ``none`` (warps only) or ``leap`` (Warp-Leap: the adapted
        layers' initialisation also moves, by the simplified Leap gradient, Adam at meta_lr).
    precision: ``fp32``, ``bf16`` or ``fp16`` (CUDA): the base model's forward passes in
        ``meta_train_step`` under autocast; the rule, its state and the meta-gradient stay
        float32 (see :mod:`fewshot_metaopt.engines.precision`). In a learner's inner loop the
        learner's own ``precision`` applies.
    outer_trainer: what estimates the rule's meta-gradient in ``meta_train_step``: ``tbptt``
        (truncated BPTT, :mod:`.tbptt`) or ``pes`` (persistent evolution strategies,
        :mod:`.pes`: unbiased across truncations, no backpropagation through the unroll; not
        for ``warp_grad``, which has its own trainer, nor with ``fp16``, which needs the loss
        scaling only truncated BPTT does).
    pes_particles: ``pes``: antithetic pairs of inner runs (each pair is two unrolls), >= 1.
    pes_sigma: ``pes``: standard deviation of the perturbations of the rule's parameters,
        positive.
    pes_seed: ``pes``: seed of the perturbations' own generator (the global RNG is not used).
    rule_options: further keyword arguments of the rule's constructor, for settings the keys
        above do not cover, e.g. ``{"mlp_hidden": 4, "activation": "relu", "compile": True}``
        for a scalable LSTM cheap at 10M+ parameters (docs/benchmarks.md); checked against the
        constructor when the rule is built.
    """

    method: str = "meta_sgd"
    hidden_size: int = 20
    num_layers: int = 2
    preconditioning: bool = True
    coordinatewise: bool = True
    meta_lr: float = 0.001
    unroll_steps: int = 20
    gradient_clipping: float = 1.0
    lstm_variant: str = "faithful"
    inner_lr: float = 0.01
    inner_steps: int = 20
    second_order: bool = False
    output_scale: float = 0.1
    meta_loss: str = "query"
    loss: str = "auto"
    rule_init: str = "descent"
    warp_buffer_size: int = 100
    warp_points: int = 16
    warp_init: str = "none"
    precision: str = "fp32"
    outer_trainer: str = "tbptt"
    pes_particles: int = 8
    pes_sigma: float = 0.01
    pes_seed: int = 0
    rule_options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks.choose("method", self.method, RULES.names())
        checks.choose("lstm_variant", self.lstm_variant, LSTM_VARIANTS)
        checks.choose("meta_loss", self.meta_loss, META_LOSSES)
        checks.choose("loss", self.loss, LOSSES)
        checks.choose("rule_init", self.rule_init, RULE_INITS)
        checks.choose("warp_init", self.warp_init, WARP_INIT_OBJECTIVES)
        checks.choose("precision", self.precision, PRECISIONS.names())
        checks.choose("outer_trainer", self.outer_trainer, OUTER_TRAINERS.names())
        if self.outer_trainer != "tbptt" and self.method == "warp_grad":
            raise checks.ConfigError("outer_trainer", f"outer_trainer {self.outer_trainer!r} does not apply to "
                                     "method 'warp_grad', which trains its warp layers by its own objective; "
                                     "use outer_trainer 'tbptt'")
        if self.outer_trainer == "pes" and self.precision == "fp16":
            raise checks.ConfigError("precision", "precision 'fp16' needs loss scaling, which outer_trainer 'pes' "
                                     "does not do; use 'bf16' or 'fp32', or outer_trainer 'tbptt'")
        if not self.coordinatewise:
            raise ValueError("coordinatewise=False: every learned optimizer here is coordinatewise")
        if not self.preconditioning and self.method != "meta_sgd":
            raise ValueError(f"preconditioning=False applies to meta_sgd only, not {self.method!r}")
        for name in ("hidden_size", "num_layers", "unroll_steps", "inner_steps", "warp_buffer_size", "warp_points"):
            checks.at_least(name, getattr(self, name), 1)
        checks.at_least("gradient_clipping", self.gradient_clipping, 0)
        for name in ("meta_lr", "inner_lr", "output_scale", "pes_sigma"):
            checks.positive(name, getattr(self, name))
        checks.integer("pes_particles", self.pes_particles, 1)
        checks.integer("pes_seed", self.pes_seed, 0)
        if not isinstance(self.rule_options, dict) or not all(isinstance(k, str) for k in self.rule_options):
            raise checks.ConfigError("rule_options", f"rule_options must be a mapping of option names to values, "
                                     f"got {self.rule_options!r}")

    def default_search_space(self) -> dict[str, dict[str, list]]:
        """The hyperparameters of this ``method`` worth searching first, in the form of a task
        file's ``[search]`` table (see docs/tuning.md): the untrained rule's step size and the
        rule's meta_lr for every method, the network's width for the LSTM and L2O rules and the
        LSTM's output scale; the truncation window for truncated BPTT, PES's perturbation size,
        Warp-Grad's points per warp update."""
        space: dict[str, dict[str, list]] = {
            "inner_lr": {"log_uniform": [1e-3, 1e-1]},
            "meta_lr": {"log_uniform": [1e-4, 1e-2]},
        }
        if self.method in ("lstm", "l2o"):
            space["hidden_size"] = {"choice": [10, 20, 40]}
        if self.method == "lstm":
            space["output_scale"] = {"log_uniform": [0.01, 1.0]}
        if self.method == "warp_grad":
            space["warp_points"] = {"choice": [8, 16, 32]}
        elif self.outer_trainer == "tbptt":
            space["unroll_steps"] = {"choice": [5, 10, 20]}
        else:
            space["pes_sigma"] = {"log_uniform": [1e-3, 1e-1]}
        return space

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "MetaOptimizerConfig":
        return from_mapping(cls, values, source, "meta-optimizer")
