"""``MetaOptimizer``: a learned inner-loop optimizer (Meta-SGD, LSTM, L2O, Warp-Grad) behind one API.

It picks an update rule by ``MetaOptimizerConfig.method`` and is itself an update rule, so it
runs wherever rules run — ``GradientMetaLearner(model, config, inner_optimizer=mo)`` meta-trains
the model's initialisation and the rule's meta-parameters together (the MAML inner loop), and
``higher.innerloop_ctx(model, RuleOptimizer(model.named_parameters(), mo))`` drives it in a
user's own loop. On its own it offers the learned-optimizer calls:

>>> mo = MetaOptimizer(model, MetaOptimizerConfig(method="lstm"))
>>> updates, state = mo.compute_update(gradients, state)      # deltas to add to the parameters
>>> result = mo.meta_train_step(episodes, model)               # truncated BPTT on the rule only
>>> mo.get_learned_lr(); mo.reset_optimizer_state()

``meta_train_step`` trains only the rule (the learned-optimizer setting of Andrychowicz et al.)
with the outer trainer ``config.outer_trainer`` names (``OUTER_TRAINERS``): truncated BPTT
(:mod:`.tbptt`) or persistent evolution strategies (:mod:`.pes`), for every method but
``warp_grad``, whose warp layers learn from the Warp-Grad objective (:mod:`.warp_trainer`). The
facade holds the config, the rule, the rule's optimizer and the state of
:meth:`compute_update`; the trainers hold the training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional

import torch
from torch import Tensor, nn

from ..episodes.episode import Episode, episodes_to
from ..optim.learned_lr import learned_lr_of
from ..optim.moved_state import follow_parameters, mapped_tree
from ..optim.rules.base import Params, UpdateRule, step_rule
from ..distributed import MetaBatchGroup
from ..warp.warp_grad import require_warped
from .config import OUTER_TRAINERS, MetaOptimizerConfig
from .pes import PersistentES
from .results import MetaOptTrainResult
from .rule_registry import build_rule
from .tbptt import TruncatedBPTT
from .warp_trainer import WarpRuleTrainer


@dataclass
class OptimizerState:
    """The optimizer's state between updates, with the rule's own (``rule_state``), which is what updates read.

    A default-constructed ``OptimizerState()`` is the state before the first update, for every
    method. ``hidden``/``cell`` are filled for the faithful LSTM: ``(num_layers, coordinates,
    hidden)`` over all tensors in parameter order (a copy, made when the state is returned).
    ``per_param_lr`` holds Meta-SGD's lr tensors. ``running_loss`` is the mean of the losses
    passed to :meth:`MetaOptimizer.compute_update` so far (``losses_seen`` of them; it stays
    0.0 while none was passed).
    """

    hidden: Optional[Tensor] = None
    cell: Optional[Tensor] = None
    step_count: int = 0
    running_loss: float = 0.0
    per_param_lr: Optional[Dict[str, Tensor]] = None
    rule_state: Any = None
    losses_seen: int = 0


class MetaOptimizer(UpdateRule):
    """A learned optimizer for ``base_model``'s parameters (see the module docstring)."""

    def __init__(self, base_model: nn.Module, config: MetaOptimizerConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MetaOptimizerConfig()
        params = dict(base_model.named_parameters())
        if not params:
            raise ValueError("the base model has no parameters to optimise")
        self.shapes = {name: p.shape for name, p in params.items()}
        first = next(iter(params.values()))
        # The rule steps the model's tensors, so it lives where they do; the optimizer is
        # built after the move so that it holds the moved parameters.
        self.rule = build_rule(config, base_model, first.dtype).to(device=first.device, dtype=first.dtype)
        self.meta_optimizer = torch.optim.Adam(self.rule.parameters(), lr=config.meta_lr)
        self.state: OptimizerState | None = None
        # The trainers are plain objects, so the base model they hold stays out of this
        # module's parameters: its weights are not the optimizer's.
        self.tbptt = TruncatedBPTT(self.rule, self.meta_optimizer, config, base_model)
        self.outer_trainer = OUTER_TRAINERS[config.outer_trainer](self)
        self.warp_trainer: WarpRuleTrainer | None = None
        if config.method == "warp_grad":
            self.warp_trainer = WarpRuleTrainer(require_warped(base_model, "method 'warp_grad'"), self.rule,
                                                self.meta_optimizer, config)

    @property
    def base_model(self) -> nn.Module:
        return self.tbptt.model

    @property
    def warp(self):
        """The Warp-Grad trajectories and replay buffer (``warp_grad`` only, else ``None``)."""
        return None if self.warp_trainer is None else self.warp_trainer.warp

    # --------------------------------------------------------------------- the rule contract

    def init(self, params: Params) -> Any:
        return self.rule.init(params)

    def update(
        self, params: Params, grads: Params, state: Any, step: int, loss: Tensor | None = None
    ) -> tuple[Params, Any]:
        return self.rule.update(params, grads, state, step, loss=loss)

    # --------------------------------------------------------------------- the learned-optimizer API

    def _check_gradients(self, gradients: Dict[str, Tensor]) -> None:
        for name, grad in gradients.items():
            if name not in self.shapes:
                raise ValueError(f"gradient for {name!r}, which is not a parameter of the base model")
            if grad.shape != self.shapes[name]:
                raise ValueError(
                    f"gradient for {name!r} has shape {tuple(grad.shape)}, the parameter {tuple(self.shapes[name])}"
                )

    def _wrap(self, rule_state: Any, previous: OptimizerState, loss: Tensor | None) -> OptimizerState:
        """The state after one more update from ``previous``."""
        seen, running = previous.losses_seen, previous.running_loss
        if loss is not None:
            seen += 1
            running += (float(loss.detach()) - running) / seen
        state = OptimizerState(step_count=previous.step_count + 1, running_loss=running, rule_state=rule_state,
                               losses_seen=seen)
        lrs = getattr(self.rule, "lrs", None)
        if lrs is not None:
            state.per_param_lr = {n: lrs.lr(n) for n in self.shapes} if lrs.learned else None
        if isinstance(rule_state, dict) and rule_state and all(isinstance(v, list) for v in rule_state.values()):
            layers = len(next(iter(rule_state.values())))
            state.hidden = torch.stack([torch.cat([rule_state[n][k][0] for n in rule_state]) for k in range(layers)])
            state.cell = torch.stack([torch.cat([rule_state[n][k][1] for n in rule_state]) for k in range(layers)])
        return state

    def compute_update(
        self, gradients: Dict[str, Tensor], state: OptimizerState | None = None, loss: Tensor | None = None
    ) -> tuple[Dict[str, Tensor], OptimizerState]:
        """The updates (deltas to add) for the base model's current parameters.

        ``state=None`` continues from the state this optimizer last returned (or starts
        fresh after :meth:`reset_optimizer_state`); ``OptimizerState()`` starts fresh.
        ``loss``, the loss the gradients are of, is an input of the rules that read it and
        enters ``running_loss``. Gradients are checked against the model.
        """
        self._check_gradients(gradients)
        params = dict(self.base_model.named_parameters())
        state = state if state is not None else (self.state or OptimizerState())
        new, rule_state = step_rule(self.rule, params, gradients, state.rule_state, state.step_count, loss)
        updates = {name: new[name] - params[name] for name in gradients}
        self.state = self._wrap(rule_state, state, loss)
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
        if self.warp_trainer is not None:
            return dict(self.warp_trainer.effective_lr) or {n: self.config.inner_lr for n in self.warp.adapted}
        return learned_lr_of(self.rule)

    def meta_train_step(self, episodes: Iterable[Episode], base_model: nn.Module | None = None) -> MetaOptTrainResult:
        """Train the rule on episodes (see the module docstring)."""
        episodes = list(episodes)
        if not episodes:
            raise ValueError("meta_train_step needs at least one episode, got none")
        model = self.base_model if base_model is None else base_model
        device = next(model.parameters()).device
        episodes = episodes_to(episodes, device)
        group = self.tbptt.group
        if group is not None:
            episodes = group.share(episodes, "meta-batch")
        if self.warp_trainer is not None:
            if model is not self.base_model:
                raise ValueError("method 'warp_grad' trains the warp layers of the base model it was built with; "
                                 "pass that model or none")
            return self.warp_trainer.train_step(episodes)
        return self.outer_trainer.train_step(model, episodes)

    def training_state_dict(self) -> dict:
        """What resuming :meth:`meta_train_step` needs: the rule's parameters, its optimizer's
        state and the outer trainer's (PES: its particles and generator; truncated BPTT keeps
        none between steps), as plain tensors and containers (``weights_only`` loads them)."""
        if self.warp_trainer is not None:
            raise ValueError("method 'warp_grad' keeps a replay buffer and trajectories this state does not hold; "
                             "checkpoint it through its learner")
        state = {"outer_trainer": self.config.outer_trainer, "rule": self.rule.state_dict(),
                 "meta_optimizer": self.meta_optimizer.state_dict()}
        if hasattr(self.outer_trainer, "state_dict"):
            state["outer_trainer_state"] = self.outer_trainer.state_dict()
        return state

    def load_training_state_dict(self, state: dict) -> None:
        """Continue from :meth:`training_state_dict` (saved with the same ``outer_trainer``)."""
        if state["outer_trainer"] != self.config.outer_trainer:
            raise ValueError(f"the training state was saved with outer_trainer {state['outer_trainer']!r}, this "
                             f"optimizer uses {self.config.outer_trainer!r}; build it with the same outer_trainer")
        if "outer_trainer_state" in state:  # first: its checks refuse a state before anything is loaded
            self.outer_trainer.load_state_dict(state["outer_trainer_state"])
        self.rule.load_state_dict(state["rule"])
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])

    def _apply(self, fn, *args, **kwargs):
        """``to``, ``double``, ``cuda``...: the rule moves as a module's parameters do, and what
        is kept for it follows: its optimizer's moments, the state of :meth:`compute_update`,
        PES's particle pairs, Warp-Grad's replay buffer. The base model is the caller's to move
        (first, for ``warp_grad``, whose rule is the base model's warp layers)."""
        before = list(self.rule.parameters())
        super()._apply(fn, *args, **kwargs)
        follow_parameters(self.meta_optimizer, before, list(self.rule.parameters()))
        if self.state is not None:
            self.state = mapped_tree(fn, self.state)
        if hasattr(self.outer_trainer, "state_dict"):
            self.outer_trainer.load_state_dict(mapped_tree(fn, self.outer_trainer.state_dict()))
        if self.warp_trainer is not None:
            warp = self.warp_trainer.warp
            warp.load_state_dict(mapped_tree(fn, warp.state_dict()))
            adapted = self.warp_trainer.init_optimizer.param_groups[0]["params"]
            follow_parameters(self.warp_trainer.init_optimizer, adapted, adapted)
        return self

    def distribute(self, group: "MetaBatchGroup | None") -> "MetaOptimizer":
        """Share each ``meta_train_step``'s episodes over ``group`` and average the rule's
        meta-gradients across it (see :mod:`fewshot_metaopt.distributed`)."""
        self.tbptt.group = self.outer_trainer.group = group
        if self.warp_trainer is not None:
            self.warp_trainer.group = self.warp_trainer.warp.group = group
        return self


# The facade's own truncated-BPTT trainer, which ``base_model`` and ``distribute`` also reach.
OUTER_TRAINERS.register("tbptt", lambda mo: mo.tbptt)
OUTER_TRAINERS.register("pes", lambda mo: PersistentES(mo.rule, mo.meta_optimizer, mo.config, mo.base_model))
