"""``MetaNNCombiner``: SGD and Adam (or any pool of rules) mixed per coordinate by a small
MLP that learns online from the loss after each update.

>>> opt = MetaNNCombiner(model.parameters(), sgd_lr=0.05, adam_lr=1e-3)
>>> for x, y in batches:
...     def closure():
...         opt.zero_grad()
...         loss = F.mse_loss(model(x), y)
...         loss.backward()
...         return loss
...     opt.step(closure)

One ``step(closure)`` runs in this order: the primary forward, loss and gradients (the
closure); the pool rules preprocess the gradient into their proposals; the MLP combines them
(:class:`~fewshot_metaopt.optim.rules.combiner.CombinerRule`); the parameters take the update;
the meta-loss is the loss of the same batch after the update (the closure again), whose
gradient reaches the MLP through the update — exactly, since
``d L(theta + delta(phi)) / d phi = grad L(theta')^T d delta / d phi`` and ``theta`` does not
depend on ``phi``; then the meta-gradient is clipped, Adam steps the MLP, and the meta and
primary gradients are cleared (the look-ahead's gradients are not the next step's).
Each step costs two forward and backward passes of the model.

``learn=False`` keeps the MLP as it is (the fixed 0.5/0.5 mix when untrained, or a trained
combiner deployed); ``step()`` then also works without a closure, on the ``.grad`` the
caller computed. Parameters without a gradient are skipped, as ``torch.optim`` does.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from .. import checks
from ..optim.outer_step import clipped_step
from ..optim.rules.adam import AdamRule
from ..optim.rules.base import UpdateRule, step_rule
from ..optim.rules.combiner import CombinerRule
from ..optim.rules.sgd import SGDRule
from ..optim.tree import detached_tree
from ..registry import Registry
from .rule_optimizer import RuleOptimizer

# The rules a pool names, built from the combiner's own learning rates.
PoolBuilder = Callable[["MetaNNCombiner", dict, torch.dtype], UpdateRule]
POOL_RULES: Registry[PoolBuilder] = Registry("MetaNNCombiner pool entry")
POOL_RULES.register("sgd", lambda opt, shapes, dtype: SGDRule.for_params(shapes, lr=opt.sgd_lr, dtype=dtype))
# The combiner checks the gradients once for the whole pool.
POOL_RULES.register("adam", lambda opt, shapes, dtype: AdamRule(lr=opt.adam_lr, check_finite=False))
POOL_NAMES = POOL_RULES.names()


class MetaNNCombiner(RuleOptimizer):
    """The Meta-NN optimizer combiner (see the module docstring).

    Args:
        params: parameters, named parameters or a module.
        pool: the rules whose updates are mixed: ``"sgd"``, ``"adam"`` (built with ``sgd_lr``
            and ``adam_lr``) or any :class:`UpdateRule`; two or more.
        sgd_lr, adam_lr: learning rates of the named pool rules.
        mix: initial weight of each pool rule (default equal weights: 0.5/0.5 for two).
        hidden: the MLP's hidden widths.
        meta_lr: Adam's learning rate for the MLP.
        meta_clip: max global norm of the meta-gradient (``None``: no clipping).
        learn: train the MLP online (needs ``step(closure)``).
        check_finite: raise on NaN/Inf gradients.
    """

    def __init__(
        self,
        params: Iterable[Any] | nn.Module,
        pool: Sequence[str | UpdateRule] = POOL_NAMES,
        sgd_lr: float = 0.01,
        adam_lr: float = 1e-3,
        mix: Sequence[float] | None = None,
        hidden: Sequence[int] = (16,),
        meta_lr: float = 1e-3,
        meta_clip: float | None = 1.0,
        learn: bool = True,
        check_finite: bool = True,
    ) -> None:
        super().__init__(params, owner="MetaNNCombiner")
        self.sgd_lr = checks.positive("sgd_lr", sgd_lr, owner="MetaNNCombiner")
        self.adam_lr = checks.positive("adam_lr", adam_lr, owner="MetaNNCombiner")
        meta_lr = checks.real("meta_lr", meta_lr, 0.0, math.inf, owner="MetaNNCombiner")
        self.meta_clip = checks.optional_positive("meta_clip", meta_clip, owner="MetaNNCombiner")
        self.learn = bool(learn)
        params = self.named_params()
        reference = next(iter(params.values()))
        shapes = {name: p.shape for name, p in params.items()}
        self.pool_spec = [entry if isinstance(entry, str) else type(entry).__name__ for entry in pool]
        rules = [self._pool_rule(entry, shapes, reference.dtype) for entry in pool]
        self.rule = CombinerRule(rules, mix=mix, hidden=hidden, check_finite=check_finite)
        self.rule.to(device=reference.device, dtype=reference.dtype)
        self.meta_optimizer = torch.optim.Adam(self.rule.parameters(), lr=meta_lr)
        self.last_meta_loss: Tensor | None = None

    def _pool_rule(self, entry: str | UpdateRule, shapes, dtype: torch.dtype) -> UpdateRule:
        if isinstance(entry, UpdateRule):
            return entry
        if not isinstance(entry, str) or entry not in POOL_RULES:
            raise ValueError(
                f"MetaNNCombiner pool entries are {', '.join(map(repr, POOL_NAMES))} or update rules, got {entry!r}"
            )
        return POOL_RULES[entry](self, shapes, dtype)

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        if closure is None and self.learn:
            raise ValueError(
                "MetaNNCombiner.step needs a closure (zero_grad, forward, backward, return the loss): it learns "
                "from the loss after the update; pass learn=False to use it without learning"
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = self.checked_loss(closure())
        grads = self.gradients()
        if not grads:
            return loss
        # A copy, not the parameters themselves: they are overwritten before the meta backward
        # pass, which must not see them change.
        before = {name: p.detach().clone() for name, p in self.named_params().items()}
        with torch.set_grad_enabled(self.learn):
            new, state = step_rule(self.rule, before, {n: g.detach() for n, g in grads.items()}, self.rule_state,
                                   self.episode_steps, loss)
        updated = {name: new[name] for name in grads}
        self.write(updated)
        if self.learn:
            self._meta_step(closure, updated, before)
        self.rule_state = detached_tree(state)
        self.steps_taken += 1
        self.episode_steps += 1
        return loss

    def _meta_step(self, closure: Callable[[], Tensor], updated: dict[str, Tensor], before: dict[str, Tensor]) -> None:
        """Backpropagate the loss after the update into the MLP and take one Adam step on it."""
        with torch.enable_grad():
            after = closure()
        try:
            self.last_meta_loss = self.checked_loss(after)
        except ValueError as err:
            self.write(before)
            raise ValueError(f"{err} after the update, which was undone (lower sgd_lr/adam_lr or meta_lr)") from None
        lookahead = self.gradients()
        names = [name for name in updated if name in lookahead]
        self.meta_optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward([updated[n] for n in names], [lookahead[n] for n in names])
        clipped_step(self.meta_optimizer, self.rule.parameters(), self.meta_clip, lambda norm: ValueError(
            f"MetaNNCombiner: the meta-gradient norm is {norm} at step {self.steps_taken}"))
        self.meta_optimizer.zero_grad(set_to_none=True)
        self.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------------- saving

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "pool": list(self.pool_spec),
            "sgd_lr": self.sgd_lr,
            "adam_lr": self.adam_lr,
            "mix": self.rule.mix.tolist(),
            "hidden": [m.out_features for m in self.rule.mlp if isinstance(m, nn.Linear)][:-1],
        }

    def extra_state(self) -> dict[str, Any]:
        return {
            "rule": self.rule.state_dict(),
            "meta_optimizer": self.meta_optimizer.state_dict(),
            "rule_state": self.rule_state,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.rule.load_state_dict(state["rule"])
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.rule_state = state["rule_state"]

