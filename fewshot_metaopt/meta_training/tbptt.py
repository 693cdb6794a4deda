"""Truncated backpropagation through time: how a learned rule is meta-trained on episodes
(Andrychowicz et al. 2016).

From the model's current weights the rule runs ``inner_steps`` steps on each episode's
support set, in windows of ``unroll_steps``; the meta-loss of a window is the sum of the
losses after each of its steps (the query loss by default), backpropagated through the
window's updates into the rule's parameters; then the meta-gradient is clipped, the rule's
parameters take one step of their optimizer, and the weights and rule state are detached
before the next window.
"""

from __future__ import annotations

from typing import Any, List

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..distributed import MetaBatchGroup
from ..engines.loss_step import step_on_loss
from ..engines.precision import lower_scale_after_overflow, resolve_precision
from ..episodes.episode import Episode
from ..losses import task_loss
from ..optim.outer_step import clipped_step
from ..optim.rules.base import Params, UpdateRule
from ..optim.tree import detached_tree
from .config import MetaOptimizerConfig
from .results import MetaOptTrainResult


def meta_batch(episode: Episode, which: str) -> tuple[Tensor, Tensor]:
    """The set of ``episode`` the meta-loss reads: ``query`` or ``support``."""
    if which == "query":
        return episode.query_x, episode.query_y
    return episode.support_x, episode.support_y


class TruncatedBPTT:
    """Trains ``rule``'s parameters with ``optimizer`` by truncated BPTT (module docstring);
    ``model`` is the base model it trains on unless a step names another."""

    def __init__(self, rule: UpdateRule, optimizer: torch.optim.Optimizer, config: MetaOptimizerConfig,
                 model: nn.Module) -> None:
        self.rule, self.optimizer, self.config, self.model = rule, optimizer, config, model
        self.group: MetaBatchGroup | None = None
        device = next(model.parameters()).device
        self.precision = resolve_precision(config.precision, device)
        self.scaler = self.precision.scaler(device)
        self.call = self.precision.wrap(lambda model, params, x: functional_call(model, params, (x,)), device)

    @property
    def loss_scale(self) -> float:
        return 1.0 if self.scaler is None else float(self.scaler.get_scale())

    def train_step(self, model: nn.Module, episodes: List[Episode]) -> MetaOptTrainResult:
        cfg = self.config
        start = {n: p.detach() for n, p in model.named_parameters()}
        runs = [(dict(start), self.rule.init(start)) for _ in episodes]
        window_losses, grad_norm, windows, done = [], float("nan"), 0, 0
        while done < cfg.inner_steps:
            length = min(cfg.unroll_steps, cfg.inner_steps - done)
            self.optimizer.zero_grad(set_to_none=True)
            try:
                total, after = self._window(model, episodes, runs, done, length)
            except FloatingPointError:
                # fp16: an inner gradient may have overflowed at this loss scale; the window
                # runs again from where it started, at a lower scale.
                if not lower_scale_after_overflow(self.scaler):
                    raise
                continue
            runs = after
            if self.group is not None:
                _, (total,) = self.group.reduce_mean_gradient(self.rule.parameters(), len(episodes), [total])
                total /= self.group.world_size
            grad_norm = clipped_step(
                self.optimizer, self.rule.parameters(), cfg.gradient_clipping,
                lambda norm, done=done: FloatingPointError(
                    f"meta-gradient norm is {norm} in the window starting at inner step {done}; "
                    "nothing was updated (lower meta_lr or unroll_steps, or clip)"),
                self.scaler,
            )
            window_losses.append(total / (len(episodes) * length))
            windows += 1
            done += length
        final = 0.0
        with torch.no_grad():
            for episode, (params, _) in zip(episodes, runs):
                x, y = meta_batch(episode, cfg.meta_loss)
                final += task_loss(self.call(model, params, x), y, cfg.loss).item() / len(episodes)
        return MetaOptTrainResult(
            meta_loss=sum(window_losses) / len(window_losses), final_loss=final,
            grad_norm=grad_norm, windows=windows, inner_steps=cfg.inner_steps,
        )

    def _window(self, model: nn.Module, episodes: List[Episode], runs: list, first: int,
                length: int) -> tuple[float, list]:
        """One window of every task, its meta-gradient accumulated; the total meta-loss and
        each task's (detached) weights and state after it."""
        total, after = 0.0, []
        for task, (episode, (params, state)) in enumerate(zip(episodes, runs)):
            params, state, loss = self.unroll(model, episode, params, state, first, length, task)
            objective = loss / len(episodes)
            (objective if self.scaler is None else self.scaler.scale(objective)).backward()
            total += loss.item()
            after.append((detached_tree(params), detached_tree(state)))
        return total, after

    def unroll(self, model: nn.Module, episode: Episode, params: Params, state: Any, first: int, length: int,
               task: int) -> tuple[Params, Any, Tensor]:
        """``length`` rule steps from ``params``; returns the new weights and state and the sum
        of the meta-losses after each step, differentiable into the rule's parameters."""
        cfg = self.config
        meta_x, meta_y = meta_batch(episode, cfg.meta_loss)
        params = {n: p.requires_grad_() if not p.requires_grad else p for n, p in params.items()}
        window_loss = 0.0
        for step in range(first, first + length):
            where = f"task {task}: support at inner step {step}:"
            loss = task_loss(self.call(model, params, episode.support_x), episode.support_y, cfg.loss, where)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{where} loss is {loss.item()}; lower the rule's step size or clip")
            # Keep the graph: the window's meta-loss backpropagates through earlier updates.
            params, state = step_on_loss(self.rule, params, loss, state, step, create_graph=cfg.second_order,
                                         retain_graph=True, scale=self.loss_scale)
            meta = task_loss(self.call(model, params, meta_x), meta_y, cfg.loss, f"task {task}: {cfg.meta_loss}")
            window_loss = window_loss + meta
        return params, state, window_loss
