"""``ControlMetaOptimizer``: meta-optimization by nonstochastic control as a ``torch.optim``
optimizer (Chen & Hazan 2023, "Online Control for Meta-optimization", NeurIPS; the public
implementation, ``edogariu/meta_opt``, is JAX only).

It learns ``M`` by replaying past steps on their batches, so it needs the loss as a function
of the parameters and a batch, not only a closure:

>>> def loss_fn(params, batch):
...     x, y = batch
...     return F.mse_loss(torch.func.functional_call(model, params, (x,)), y)
>>> opt = ControlMetaOptimizer(model, loss_fn, lr=0.1)
>>> for episode in range(5):
...     reset(model)                 # a fresh training run ...
...     opt.start_episode()          # ... with the M learned so far
...     for batch in loader:
...         loss = opt.step(batch)

Each ``step(batch)``: the loss and gradients at the current parameters; from episode step
``warmup`` on (``H + HH`` by default, as in the reference: every replayed window then holds
real disturbances), one counterfactual rollout and one step of the M-optimizer
(:mod:`~fewshot_metaopt.torch_optim.counterfactual_replay`); then the update of
:class:`~fewshot_metaopt.optim.rules.control.ControlRule` with the new ``M``. ``M`` and its
optimizer persist across episodes; :meth:`start_episode` clears the rest.
``freeze=True`` plays the learned ``M`` without learning (no ``loss_fn`` needed): ``step()``
then also takes the ``.grad`` the caller computed, in an ordinary loop.

The defaults rescale disturbances as Adam does (betas 0.9, 0.999, as in the reference's
Adam-scaled configurations) and clip M's gradient elementwise at 10 (the reference's
``meta_grad_clip``): with raw gradients as disturbances the base step is SGD at ``lr`` and M's
gradient grows with the squared gradient norm, which diverged on the benchmark's sinusoid MLP
at both M step sizes measured (1e-5 and 1e-3; see docs/torch_optim.md).
``adam_betas=None, m_grad_clip=None, warmup=HH`` is the optimizer as it was before.

Memory, fixed however long it runs (``P`` coordinates): ``(H + HH - 1) P`` disturbances,
``HH P`` replay parameters, ``HH`` batches, ``M`` (``H``, ``H P`` or ``H P^2`` numbers), and
``2 (HH + 1) P`` for the Adam rescaler's moments (``replay="reference"``: ``(H + HH) P``
disturbances and ``2 P`` moments); :meth:`memory_bytes` measures it.
Checkpoints hold the stored batches too, so they must be picklable for ``torch.save``.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from .. import checks
from ..optim.outer_step import OUTER_OPTIMIZERS
from ..optim.rules.base import step_rule
from ..optim.rules.control import ControlRule
from ..optim.rules.preprocess import state_bytes
from ..optim.tree import detached_tree
from .counterfactual_replay import LossFn, ReplayRecord, counterfactual_loss
from .rule_optimizer import RuleOptimizer


class ControlMetaOptimizer(RuleOptimizer):
    """Meta-optimization by nonstochastic control (see the module docstring).

    Args:
        params: named parameters or a module (``loss_fn`` receives them by these names).
        loss_fn: ``loss_fn(params, batch) -> loss`` for a dict of parameters; needed to learn.
        lr, weight_decay, history (H), rollout (HH), m_shape, grad_clip, adam_betas: the
            played update (:class:`ControlRule`). lr 0.1, wd 1e-4, H 16, HH 2, a scalar M and
            SGD 1e-5 for M are the reference's configuration for its SGD-based runs; the
            Adam-scaled disturbances come from its Adam-scaled runs (see docs/torch_optim.md).
        m_lr, m_optimizer: the optimizer of ``M`` (``sgd`` or ``adam``).
        m_grad_clip: clip M's gradient elementwise (``None``: off).
        warmup: episode steps before M first learns (``None``: ``H + HH``, as in the
            reference; at least ``HH``, the steps a replay needs).
        replay: ``exact`` (a replay with M unchanged is the played trajectory) or
            ``reference`` (the authors' replay; see
            :mod:`~fewshot_metaopt.torch_optim.counterfactual_replay`).
        freeze: play ``M`` without learning it.
        check_finite: raise on NaN/Inf gradients.
    """

    def __init__(
        self,
        params: Iterable[Any] | nn.Module,
        loss_fn: LossFn | None = None,
        lr: float = 0.1,
        weight_decay: float = 1e-4,
        history: int = 16,
        rollout: int = 2,
        m_shape: str = "scalar",
        m_lr: float = 1e-5,
        m_optimizer: str = "sgd",
        m_grad_clip: float | None = 10.0,
        grad_clip: float | None = None,
        adam_betas: Sequence[float] | None = (0.9, 0.999),
        warmup: int | None = None,
        replay: str = "exact",
        freeze: bool = False,
        check_finite: bool = True,
    ) -> None:
        super().__init__(params, owner="ControlMetaOptimizer")
        owner = "ControlMetaOptimizer"
        params = self.named_params()
        reference = next(iter(params.values()))
        for name, p in params.items():
            if p.dtype != reference.dtype or p.device != reference.device:
                raise ValueError(
                    f"{owner} keeps all parameters in one vector: {name!r} is {p.dtype} on {p.device}, "
                    f"the first is {reference.dtype} on {reference.device}"
                )
        self.rule = ControlRule(
            {name: p.shape for name, p in params.items()}, lr=lr, weight_decay=weight_decay, history=history,
            rollout=rollout, m_shape=m_shape, grad_clip=grad_clip,
            adam_betas=None if adam_betas is None else tuple(adam_betas), replay=replay, check_finite=check_finite,
        ).to(device=reference.device, dtype=reference.dtype)
        rollout = self.rule.rollout
        if warmup is None:
            self.warmup = self.rule.history + rollout
        else:
            self.warmup = checks.integer("warmup", warmup, rollout, owner)
        m_lr = checks.real("m_lr", m_lr, 0.0, math.inf, owner=owner)
        self.m_optimizer_name = checks.choose(f"{owner} m_optimizer", m_optimizer, OUTER_OPTIMIZERS.names())
        self.m_optimizer = OUTER_OPTIMIZERS[m_optimizer]([self.rule.M], lr=m_lr)
        self.m_grad_clip = checks.optional_positive("m_grad_clip", m_grad_clip, owner=owner)
        self.freeze = bool(freeze)
        if loss_fn is None and not self.freeze:
            raise ValueError(f"{owner} learns M by replaying past batches: give loss_fn(params, batch), or freeze=True")
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError(f"{owner} loss_fn must be callable, got {type(loss_fn).__name__}")
        self.loss_fn = loss_fn
        self.records: deque[ReplayRecord] = deque(maxlen=self.rule.rollout)
        self.last_counterfactual_loss: Tensor | None = None

    def start_episode(self) -> None:
        """Forget the histories (a new training run starts); keep ``M`` and its optimizer."""
        super().start_episode()
        self.records.clear()

    def _gradients(self, batch: Any) -> tuple[Tensor | None, dict[str, Tensor]]:
        params = self.named_params()
        if batch is None:
            if not self.freeze:
                raise ValueError(
                    "ControlMetaOptimizer.step needs the batch to learn M (step(batch)); use freeze=True to "
                    "play M on the .grad of an ordinary loop"
                )
            loss, grads = None, {n: p.grad for n, p in params.items()}
        else:
            if self.loss_fn is None:
                raise ValueError("ControlMetaOptimizer.step(batch) needs the loss_fn given at construction")
            with torch.enable_grad():
                loss = self.loss_fn(params, batch)
                loss_value = self.checked_loss(loss)
                found = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            loss, grads = loss_value, dict(zip(params, found))
        missing = [name for name, g in grads.items() if g is None]
        if missing:
            raise ValueError(
                f"ControlMetaOptimizer: parameter {missing[0]!r} has no gradient; its replays would diverge from "
                "its updates, so leave it out of the optimizer"
            )
        return loss, grads

    @torch.no_grad()
    def step(self, batch: Any = None) -> Tensor | None:
        loss, grads = self._gradients(batch)
        params = {name: p.detach() for name, p in self.named_params().items()}
        state = self.rule_state if self.rule_state is not None else self.rule.init(params)
        if not self.freeze and self.episode_steps >= self.warmup:
            self._learn(state, batch)
        if not self.freeze:
            # The reference replay continues the current rescaler state: the recorded one is unused.
            rescaler = state.rescaler if self.rule.replay == "exact" else None
            self.records.append(ReplayRecord(self.rule.flatten(params), batch, rescaler))
        new, state = step_rule(self.rule, params, grads, state, self.episode_steps, loss)
        self.write(new)
        self.rule_state = detached_tree(state)
        self.steps_taken += 1
        self.episode_steps += 1
        return loss

    def _learn(self, state: Any, batch: Any) -> None:
        """One counterfactual rollout and one step of the M-optimizer."""
        with torch.enable_grad():
            cost = counterfactual_loss(self.rule, self.loss_fn, list(self.records), state, batch)
            value = float(cost.detach())
            if not math.isfinite(value):
                raise ValueError(
                    f"ControlMetaOptimizer: the counterfactual loss is {value} at step {self.steps_taken}; "
                    "M was not updated (lower m_lr or set m_grad_clip)"
                )
            (grad,) = torch.autograd.grad(cost, [self.rule.M])
        # Checked before clipping, which would turn an infinite slope into a finite step.
        if not bool(torch.isfinite(grad).all()):
            raise ValueError(f"ControlMetaOptimizer: M's gradient has non-finite values at step {self.steps_taken}")
        if self.m_grad_clip is not None:
            grad = grad.clamp(-self.m_grad_clip, self.m_grad_clip)
        self.rule.M.grad = grad
        self.m_optimizer.step()
        self.rule.M.grad = None
        self.last_counterfactual_loss = cost.detach()

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held now: ``M``, the disturbance history, the replay parameters, the rescaler
        states and the stored batches' tensors."""
        state = self.rule_state
        records = list(self.records)
        rescalers = [r.rescaler for r in records] + ([state.rescaler] if state is not None else [])
        return {
            "M": state_bytes(self.rule.M),
            "disturbances": state_bytes(state.history) if state is not None else 0,
            "parameters": state_bytes([r.theta for r in records]),
            "rescaler": state_bytes(rescalers),
            "batches": state_bytes([r.batch for r in records]),
        }

    # ------------------------------------------------------------------------- saving

    def hyperparameters(self) -> dict[str, Any]:
        rule = self.rule
        return {
            "lr": rule.lr,
            "weight_decay": rule.weight_decay,
            "history": rule.history,
            "rollout": rule.rollout,
            "m_shape": rule.m_shape,
            "grad_clip": rule.grad_clip,
            "adam_betas": None if rule.rescaler is None else list(rule.rescaler.betas),
            "m_optimizer": self.m_optimizer_name,
            "warmup": self.warmup,
            "replay": rule.replay,
        }

    def extra_state(self) -> dict[str, Any]:
        return {
            "rule": self.rule.state_dict(),
            "m_optimizer": self.m_optimizer.state_dict(),
            "rule_state": self.rule_state,
            "records": list(self.records),
            "episode_steps": self.episode_steps,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.rule.load_state_dict(state["rule"])
        self.m_optimizer.load_state_dict(state["m_optimizer"])
        self.rule_state = state["rule_state"]
        self.records = deque(state["records"], maxlen=self.rule.rollout)
        self.episode_steps = int(state["episode_steps"])
