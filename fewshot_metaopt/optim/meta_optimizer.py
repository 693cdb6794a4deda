"""The Phase 50.4 ``MetaOptimizer``: a learned inner-loop optimizer with the spec's API.

It picks an update rule by ``MetaOptimizerConfig.method`` and is itself an update rule, so it
runs wherever rules run — ``GradientMetaLearner(model, config, inner_optimizer=mo)`` meta-trains
the model's initialisation and the rule's meta-parameters together (the MAML inner loop), and
``higher.innerloop_ctx(model, RuleOptimizer(model.named_parameters(), mo))`` drives it in a
user's own loop. On its own it offers the spec's calls:

>>> mo = MetaOptimizer(model, MetaOptimizerConfig(method="lstm"))
>>> updates, state = mo.compute_update(gradients, state)      # deltas to add to the parameters
>>> result = mo.meta_train_step(episodes, model)               # truncated BPTT on the rule only
>>> mo.get_learned_lr(); mo.reset_optimizer_state()

``meta_train_step`` trains only the rule (the learned-optimizer setting of Andrychowicz et al.):
from the model's current weights it runs ``inner_steps`` steps of the rule on each episode's
support set, in windows of ``unroll_steps``; the meta-loss of a window is the sum of the losses
after each of its steps (the query loss by default), backpropagated through the window's
updates; then the meta-gradient is clipped, the rule's parameters take one Adam step, and the
weights and rule state are detached before the next window (truncated BPTT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..config_keys import from_mapping
from ..episodes.episode import Episode
from ..losses import LOSSES, task_loss
from .learned_lr import learned_lr_of
from .rules.base import Params, UpdateRule
from .rules.l2o import L2ORule
from .rules.loss_feature import with_loss
from .rules.lstm_scalable import LSTM_VARIANTS, lstm_rule
from .rules.preprocess import RULE_INITS
from .rules.sgd import SGDRule
from .tree import detached_tree
from ..warp.effective_lr import warp_effective_lr
from ..warp.objective import leap_init_gradient
from ..warp.warp_grad import WarpGradRule, WarpGradTrainer, require_warped

METHODS = ("meta_sgd", "lstm", "l2o", "warp_grad")
WARP_INIT_OBJECTIVES = ("none", "leap")
META_LOSSES = ("query", "support")


@dataclass
class MetaOptimizerConfig:
    """The spec's fields (first eight, same names and defaults) and ours.

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
    meta_lr: Adam's lr for the rule's meta-parameters in :meth:`MetaOptimizer.meta_train_step`.
    unroll_steps: the truncated-BPTT window.
    gradient_clipping: max global norm of each window's meta-gradient (``0``: no clipping).
    lstm_variant: ``faithful`` (Andrychowicz 2016; 2 x num_layers x hidden floats of state per
        coordinate) or ``scalable`` (at most 2 floats per coordinate plus a per-tensor LSTM).
    inner_lr: the untrained rule's step size: Meta-SGD's initial lr, the lr of the Adam that an
        untrained scalable LSTM equals, the sign-descent step of an untrained faithful LSTM and
        the L2O rule's ``step_mult`` (see ``rule_init``).
    rule_init: ``descent`` — each learned rule starts as a hand-designed descent method and
        meta-training learns corrections (its readout starts at zero); ``random`` — the
        papers' random initialisation (untrained rules then move weights in arbitrary
        directions; see docs/meta_optimizer.md).
    inner_steps: inner steps per episode in ``meta_train_step``.
    second_order: keep the inner gradients in the graph (the papers feed them as constants).
    output_scale: the LSTM's output scale (paper: 0.1).
    meta_loss: ``query`` (few-shot generalisation) or ``support`` (the paper's optimisee loss).
    loss: the task loss (``auto``: cross-entropy for integer labels, MSE otherwise).
    warp_buffer_size: ``warp_grad``: trajectory points the replay buffer keeps.
    warp_points: ``warp_grad``: points sampled per warp update (its cost, whatever
        ``inner_steps``); the objective steps on a point's support set and evaluates on
        ``meta_loss``'s set.
    warp_init: ``warp_grad``: ``none`` (warps only) or ``leap`` (Warp-Leap: the adapted
        layers' initialisation also moves, by the simplified Leap gradient, Adam at meta_lr).
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

    def __post_init__(self) -> None:
        for name, value, options in (
            ("method", self.method, METHODS),
            ("lstm_variant", self.lstm_variant, LSTM_VARIANTS),
            ("meta_loss", self.meta_loss, META_LOSSES),
            ("loss", self.loss, LOSSES),
            ("rule_init", self.rule_init, RULE_INITS),
            ("warp_init", self.warp_init, WARP_INIT_OBJECTIVES),
        ):
            if value not in options:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(options)}")
        if not self.coordinatewise:
            raise ValueError("coordinatewise=False: every learned optimizer here is coordinatewise")
        if not self.preconditioning and self.method != "meta_sgd":
            raise ValueError(f"preconditioning=False applies to meta_sgd only, not {self.method!r}")
        for name in ("hidden_size", "num_layers", "unroll_steps", "inner_steps", "warp_buffer_size", "warp_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gradient_clipping < 0:
            raise ValueError(f"gradient_clipping must be >= 0, got {self.gradient_clipping}")

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "MetaOptimizerConfig":
        return from_mapping(cls, values, source, "meta-optimizer")


@dataclass
class OptimizerState:
    """The spec's state, plus the rule's own (``rule_state``), which is what updates read.

    ``hidden``/``cell`` are filled for the faithful LSTM: ``(num_layers, coordinates, hidden)``
    over all tensors in parameter order (a copy, made when the state is returned).
    ``per_param_lr`` holds Meta-SGD's lr tensors.
    """

    hidden: Optional[Tensor] = None
    cell: Optional[Tensor] = None
    step_count: int = 0
    running_loss: float = 0.0
    per_param_lr: Optional[Dict[str, Tensor]] = None
    rule_state: Any = None


@dataclass
class MetaOptTrainResult:
    """One :meth:`MetaOptimizer.meta_train_step`: mean meta-loss per window and step, the
    mean final loss (after all inner steps), the last window's meta-gradient norm (before
    clipping), and how many windows were updated."""

    meta_loss: float
    final_loss: float
    grad_norm: float
    windows: int
    inner_steps: int


def build_rule(config: MetaOptimizerConfig, model: nn.Module, dtype: torch.dtype) -> UpdateRule:
    shapes = {name: p.shape for name, p in model.named_parameters()}
    if config.method == "warp_grad":
        model = require_warped(model, "method 'warp_grad'")
        adapted = {n: shapes[n] for n in model.adapted_parameter_names()}
        return WarpGradRule(model, SGDRule.for_params(adapted, lr=config.inner_lr, dtype=dtype))
    if config.method == "meta_sgd":
        granularity = "per_parameter" if config.preconditioning else "scalar"
        return SGDRule.for_params(shapes, lr=config.inner_lr, granularity=granularity, dtype=dtype)
    if config.method == "lstm":
        return lstm_rule(
            variant=config.lstm_variant, hidden_size=config.hidden_size, num_layers=config.num_layers,
            output_scale=config.output_scale, second_order=config.second_order,
            init=config.rule_init, init_lr=config.inner_lr,
        ).to(dtype)
    return L2ORule(hidden_size=config.hidden_size, hidden_layers=config.num_layers,
                   second_order=config.second_order, init=config.rule_init, step_mult=config.inner_lr).to(dtype)


class MetaOptimizer(UpdateRule):
    """A learned optimizer for ``base_model``'s parameters (see the module docstring)."""

    def __init__(self, base_model: nn.Module, config: MetaOptimizerConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MetaOptimizerConfig()
        params = dict(base_model.named_parameters())
        if not params:
            raise ValueError("the base model has no parameters to optimise")
        self.shapes = {name: p.shape for name, p in params.items()}
        self.rule = build_rule(config, base_model, next(iter(params.values())).dtype)
        # Held outside the module tree: the base model's weights are not the optimizer's.
        self.__dict__["base_model"] = base_model
        self.meta_optimizer = torch.optim.Adam(self.rule.parameters(), lr=config.meta_lr)
        self.state: OptimizerState | None = None
        self.warp: WarpGradTrainer | None = None
        if config.method == "warp_grad":
            eval_batch = "query" if config.meta_loss == "query" else "support"
            self.warp = WarpGradTrainer(base_model, self.rule, config.warp_buffer_size, config.warp_points,
                                        config.loss, "support", eval_batch)
            adapted = [params[n] for n in base_model.adapted_parameter_names()]
            self.init_optimizer = torch.optim.Adam(adapted, lr=config.meta_lr)
            self._warp_lr: Dict[str, float] = {}

    # --------------------------------------------------------------------- the rule contract

    def init(self, params: Params) -> Any:
        return self.rule.init(params)

    def update(self, params: Params, grads: Params, state: Any, step: int) -> tuple[Params, Any]:
        return self.rule.update(params, grads, state, step)

    # --------------------------------------------------------------------- the spec's API

    def _check_gradients(self, gradients: Dict[str, Tensor]) -> None:
        for name, grad in gradients.items():
            if name not in self.shapes:
                raise ValueError(f"gradient for {name!r}, which is not a parameter of the base model")
            if grad.shape != self.shapes[name]:
                raise ValueError(
                    f"gradient for {name!r} has shape {tuple(grad.shape)}, the parameter {tuple(self.shapes[name])}"
                )

    def _wrap(self, rule_state: Any, step_count: int, running_loss: float) -> OptimizerState:
        state = OptimizerState(step_count=step_count, running_loss=running_loss, rule_state=rule_state)
        lrs = getattr(self.rule, "lrs", None)
        if lrs is not None:
            state.per_param_lr = {n: lrs.lr(n) for n in self.shapes} if lrs.learned else None
        if isinstance(rule_state, dict) and rule_state and all(isinstance(v, list) for v in rule_state.values()):
            layers = len(next(iter(rule_state.values())))
            state.hidden = torch.stack([torch.cat([rule_state[n][k][0] for n in rule_state]) for k in range(layers)])
            state.cell = torch.stack([torch.cat([rule_state[n][k][1] for n in rule_state]) for k in range(layers)])
        return state

    def compute_update(
        self, gradients: Dict[str, Tensor], state: OptimizerState | None = None
    ) -> tuple[Dict[str, Tensor], OptimizerState]:
        """The updates (deltas to add) for the base model's current parameters.

        ``state=None`` continues from the state this optimizer last returned (or starts
        fresh after :meth:`reset_optimizer_state`). Gradients are checked against the model.
        """
        self._check_gradients(gradients)
        params = dict(self.base_model.named_parameters())
        state = state if state is not None else self.state
        if state is None:
            state = self._wrap(self.rule.init(params), 0, 0.0)
        new, rule_state = self.rule.update(params, gradients, state.rule_state, state.step_count)
        updates = {name: new[name] - params[name] for name in gradients}
        self.state = self._wrap(rule_state, state.step_count + 1, state.running_loss)
        return updates, self.state

    def reset_optimizer_state(self) -> None:
        """Forget the recurrent state: the next :meth:`compute_update` starts a new task."""
        self.state = None

    def get_learned_lr(self) -> Dict[str, float]:
        """Meta-SGD: the mean learned lr per tensor. Learned rules: the effective lr of their
        last update, ``mean|delta| / mean|grad|`` per tensor (empty before any update).
        Warp-Grad: per adapted tensor, ``inner_lr * mean|warped grad| / mean|unwarped grad|``
        on the support set of the first episode of the last ``meta_train_step`` (the SGD lr
        that would move the tensor as far in the model without warps; ``inner_lr`` before)."""
        if self.warp is not None:
            return dict(self._warp_lr) or {n: self.config.inner_lr for n in self.warp.adapted}
        return learned_lr_of(self.rule)

    def meta_train_step(self, episodes: Iterable[Episode], base_model: nn.Module | None = None) -> MetaOptTrainResult:
        """Train the rule on episodes by truncated BPTT (see the module docstring)."""
        episodes = list(episodes)
        if not episodes:
            raise ValueError("meta_train_step needs at least one episode, got none")
        model = self.base_model if base_model is None else base_model
        cfg = self.config
        device = next(model.parameters()).device
        episodes = [ep.to(device) for ep in episodes]
        if self.warp is not None:
            if model is not self.base_model:
                raise ValueError("method 'warp_grad' trains the warp layers of the base model it was built with; "
                                 "pass that model or none")
            return self._warp_train_step(episodes)
        start = {n: p.detach() for n, p in model.named_parameters()}
        runs = [(dict(start), self.rule.init(start)) for _ in episodes]
        window_losses, grad_norm, windows, done = [], math.nan, 0, 0
        while done < cfg.inner_steps:
            length = min(cfg.unroll_steps, cfg.inner_steps - done)
            self.meta_optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for task, (episode, (params, state)) in enumerate(zip(episodes, runs)):
                params, state, loss = self._unroll(model, episode, params, state, done, length, task)
                (loss / len(episodes)).backward()
                total += loss.item()
                runs[task] = (detached_tree(params), detached_tree(state))
            clip = cfg.gradient_clipping if cfg.gradient_clipping > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(list(self.rule.parameters()), clip))
            if not math.isfinite(grad_norm):
                self.meta_optimizer.zero_grad(set_to_none=True)
                raise FloatingPointError(
                    f"meta-gradient norm is {grad_norm} in the window starting at inner step {done}; "
                    "nothing was updated (lower meta_lr or unroll_steps, or clip)"
                )
            self.meta_optimizer.step()
            window_losses.append(total / (len(episodes) * length))
            windows += 1
            done += length
        final = 0.0
        with torch.no_grad():
            for episode, (params, _) in zip(episodes, runs):
                x, y = self._meta_batch(episode)
                final += task_loss(functional_call(model, params, (x,)), y, cfg.loss).item() / len(episodes)
        return MetaOptTrainResult(
            meta_loss=sum(window_losses) / len(window_losses), final_loss=final,
            grad_norm=grad_norm, windows=windows, inner_steps=cfg.inner_steps,
        )

    def _warp_train_step(self, episodes: list) -> MetaOptTrainResult:
        """Warp-Grad: trajectories into the buffer, one warp update from sampled points, and
        under ``warp_init="leap"`` one Leap update of the adapted layers' initialisation."""
        cfg, warp = self.config, self.warp
        runs = [warp.run_task(ep, cfg.inner_steps, task) for task, ep in enumerate(episodes)]
        self.meta_optimizer.zero_grad(set_to_none=True)
        meta_loss = warp.accumulate_warp_gradient(list(self.rule.parameters()))
        clip = cfg.gradient_clipping if cfg.gradient_clipping > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(list(self.rule.parameters()), clip))
        if not math.isfinite(grad_norm):
            self.meta_optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(f"warp meta-gradient norm is {grad_norm}; nothing was updated (lower meta_lr)")
        self.meta_optimizer.step()
        if cfg.warp_init == "leap":
            leap = leap_init_gradient([run.trajectory for run in runs])
            params = dict(self.base_model.named_parameters())
            for name, grad in leap.items():
                params[name].grad = grad.to(params[name].dtype)
            self.init_optimizer.step()
            self.init_optimizer.zero_grad(set_to_none=True)
        self._warp_lr = warp_effective_lr(self.base_model, episodes[0], cfg.inner_lr, cfg.loss)
        return MetaOptTrainResult(
            meta_loss=meta_loss, final_loss=sum(r.query_loss for r in runs) / len(runs),
            grad_norm=grad_norm, windows=1, inner_steps=cfg.inner_steps,
        )

    def _meta_batch(self, episode: Episode) -> tuple[Tensor, Tensor]:
        if self.config.meta_loss == "query":
            return episode.query_x, episode.query_y
        return episode.support_x, episode.support_y

    def _unroll(self, model, episode: Episode, params: Params, state: Any, first: int, length: int, task: int):
        """``length`` rule steps from ``params``; returns the new weights and state and the sum
        of the meta-losses after each step, differentiable into the rule's parameters."""
        cfg = self.config
        meta_x, meta_y = self._meta_batch(episode)
        params = {n: p.requires_grad_() if not p.requires_grad else p for n, p in params.items()}
        window_loss = 0.0
        for step in range(first, first + length):
            where = f"task {task}: support at inner step {step}:"
            loss = task_loss(functional_call(model, params, (episode.support_x,)), episode.support_y, cfg.loss, where)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{where} loss is {loss.item()}; lower the rule's step size or clip")
            names = list(params)
            # Keep the graph: the window's meta-loss backpropagates through earlier updates.
            grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=cfg.second_order,
                                        retain_graph=True, allow_unused=True)
            grads = {n: g for n, g in zip(names, grads) if g is not None}
            params, state = self.rule.update(params, grads, with_loss(state, loss), step)
            meta = task_loss(functional_call(model, params, (meta_x,)), meta_y, cfg.loss, f"task {task}: {cfg.meta_loss}")
            window_loss = window_loss + meta
        return params, state, window_loss
