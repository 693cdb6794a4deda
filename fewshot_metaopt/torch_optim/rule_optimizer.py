"""An update rule as a ``torch.optim.Optimizer``: the one adapter every front end shares.

:class:`RuleOptimizer` steps a pure rule (:func:`~fewshot_metaopt.optim.rules.base.step_rule`)
over *named* parameters, in place, without a meta-gradient: ``opt.step(closure)`` like any
torch optimizer. Rules key their state by name, so the names travel in
``param_groups[0]["param_names"]`` (torch's own key, filled here for every torch version) in
one group. The higher engine registers a differentiable twin of it, so
``higher.innerloop_ctx(model, RuleOptimizer(model.named_parameters(), rule))`` runs the rule
with its meta-gradients in a user's own loop. The rule (and its learnable tensors) is an
attribute, never in ``param_groups``: higher deep-copies the groups, which would cut the
meta-gradient to anything stored there.

The three optimizers that learn something of their own while they train (a network, a tape,
control matrices) subclass it; what torch's per-parameter ``state`` cannot hold is saved under
one extra key of :meth:`state_dict`, deep-copied, so a checkpoint is a snapshot even of tensors
the optimizer later updates in place. Hyperparameters are fixed at construction and stored
with the checkpoint; loading one saved with other hyperparameters is an error naming the first
that differs.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from ..optim.rules.base import Params, UpdateRule, step_rule
from ..optim.tree import detached_tree

# The key keeps the name checkpoints were first saved under, so they still load.
EXTRA = "seed_optimizer"

def named_tensors(params: Any, owner: str) -> list[tuple[str, Tensor]]:
    """``(name, tensor)`` pairs from a module, from such pairs, or from bare tensors (named
    ``"0"``, ``"1"``, ...). One group only: a list of group dicts is refused."""
    if isinstance(params, nn.Module):
        named = list(params.named_parameters())
    elif isinstance(params, Tensor):
        raise ValueError(f"{owner} takes an iterable of parameters or a module, got a single tensor")
    else:
        items = list(params)
        if any(isinstance(item, Mapping) for item in items):
            raise ValueError(f"{owner} takes one group of parameters, not parameter-group dicts")
        if all(isinstance(item, tuple) and len(item) == 2 for item in items):
            named = [(str(name), tensor) for name, tensor in items]
        else:
            named = [(str(i), tensor) for i, tensor in enumerate(items)]
    if not named:
        raise ValueError(f"{owner} got no parameters to optimise")
    for name, tensor in named:
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{owner}: parameter {name!r} is a {type(tensor).__name__}, not a tensor")
    names = [name for name, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"{owner}: parameter names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    if len({id(t) for _, t in named}) != len(named):
        raise ValueError(f"{owner}: the same tensor is given twice")
    return named


class RuleOptimizer(torch.optim.Optimizer):
    """``rule`` over one group of named parameters (see the module docstring).

    Args:
        params: a module, ``(name, tensor)`` pairs, or bare tensors (named ``"0"``, ``"1"``, ...).
        rule: the update rule; subclasses that build their own pass it later.
    """

    def __init__(self, params: Iterable[Any] | nn.Module, rule: UpdateRule | None = None,
                 owner: str = "RuleOptimizer") -> None:
        named = named_tensors(params, owner)
        group = {"params": [t for _, t in named], "param_names": [n for n, _ in named]}
        super().__init__([group], defaults={})
        self.owner = owner
        self.rule = rule
        self.rule_state: Any = None
        self.steps_taken = 0
        # Steps of the current training run (start_episode restarts it): the rule's step index,
        # which drives bias corrections and schedules; steps_taken counts every step.
        self.episode_steps = 0

    @property
    def step_count(self) -> int:
        """Steps taken so far (``OptimizerState``'s name for it)."""
        return self.steps_taken

    # ------------------------------------------------------------------------- parameters

    def named_params(self) -> Params:
        group = self.param_groups[0]
        return dict(zip(group["param_names"], group["params"]))

    def gradients(self) -> Params:
        """The ``.grad`` of every parameter that has one (the others are skipped, as
        ``torch.optim`` skips them)."""
        return {name: p.grad for name, p in self.named_params().items() if p.grad is not None}

    @torch.no_grad()
    def write(self, new: Params) -> None:
        """Copy the rule's new values into the parameters, in place (the model keeps them)."""
        for name, p in self.named_params().items():
            if name in new:
                p.copy_(new[name])

    def checked_loss(self, loss: Any) -> Tensor:
        """The loss, detached, or a one-line ``ValueError`` naming a non-scalar or non-finite value."""
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"{self.owner}: the loss must be a one-element tensor, got {_shown(loss)}")
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ValueError(f"{self.owner}: the loss is {value} at step {self.steps_taken}")
        return loss.detach().reshape(())

    def start_episode(self) -> None:
        """Start a new training run on the same parameters (re-initialised by the caller): the
        per-run state (moments, memories, the step count) is cleared, what the optimizer has
        learned (the rule's weights, their optimizer) is kept."""
        self.rule_state = None
        self.episode_steps = 0

    # ------------------------------------------------------------------------- stepping

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, loss: Tensor | None = None) -> Tensor | None:
        """One rule step on the current ``.grad``; ``closure`` (zero_grad, forward, backward,
        return the loss) runs first when given, and its loss, or ``loss``, goes to the rule."""
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.apply_rule(self.gradients(), loss)
        return loss

    @torch.no_grad()
    def apply_rule(self, grads: Params, loss: Tensor | None) -> None:
        """One rule step on ``grads``, written into the parameters; the state is kept detached."""
        params = self.named_params()
        new, state = step_rule(self.rule, params, grads, self.rule_state, self.episode_steps, loss)
        self.write({name: new[name] for name in grads})
        self.rule_state = detached_tree(state)
        self.steps_taken += 1
        self.episode_steps += 1

    # ------------------------------------------------------------------------- saving

    def hyperparameters(self) -> dict[str, Any]:
        """What must match for a saved state to load (the subclasses' constructor choices)."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        return {"rule": self.rule.state_dict(), "rule_state": self.rule_state}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.rule.load_state_dict(state["rule"])
        self.rule_state = state["rule_state"]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        extra = {"hyperparameters": self.hyperparameters(), "steps_taken": self.steps_taken,
                 "episode_steps": self.episode_steps}
        extra.update(self.extra_state())
        state[EXTRA] = copy.deepcopy(extra)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if EXTRA not in state_dict:
            raise ValueError(f"{self.owner}: this state dict was not saved by a {self.owner}")
        state_dict = dict(state_dict)
        extra = copy.deepcopy(state_dict.pop(EXTRA))
        mine = self.hyperparameters()
        for key, value in extra["hyperparameters"].items():
            if mine.get(key) != value:
                raise ValueError(
                    f"{self.owner}: the state was saved with {key}={value!r}, this optimizer has {key}={mine.get(key)!r}"
                )
        super().load_state_dict(state_dict)
        self.steps_taken = int(extra["steps_taken"])
        # States saved before episodes existed were all one run.
        self.episode_steps = int(extra.get("episode_steps", self.steps_taken))
        self.load_extra_state(extra)


def _shown(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__
