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

from ..engines.loss_step import step_on_loss
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

    def train_step(self, model: nn.Module, episodes: List[Episode]) -> MetaOptTrainResult:
        cfg = self.config
        start = {n: p.detach() for n, p in model.named_parameters()}
        runs = [(dict(start), self.rule.init(start)) for _ in episodes]
        window_losses, grad_norm, windows, done = [], float("nan"), 0, 0
        while done < cfg.inner_steps:
            length = min(cfg.unroll_steps, cfg.inner_steps - done)
            self.optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for task, (episode, (params, state)) in enumerate(zip(episodes, runs)):
                params, state, loss = self.unroll(model, episode, params, state, done, length, task)
                (loss / len(episodes)).backward()
                total += loss.item()
                runs[task] = (detached_tree(params), detached_tree(state))
            grad_norm = clipped_step(
                self.optimizer, self.rule.parameters(), cfg.gradient_clipping,
                lambda norm, done=done: FloatingPointError(
                    f"meta-gradient norm is {norm} in the window starting at inner step {done}; "
                    "nothing was updated (lower meta_lr or unroll_steps, or clip)"),
            )
            window_losses.append(total / (len(episodes) * length))
            windows += 1
            done += length
        final = 0.0
        with torch.no_grad():
            for episode, (params, _) in zip(episodes, runs):
                x, y = meta_batch(episode, cfg.meta_loss)
                final += task_loss(functional_call(model, params, (x,)), y, cfg.loss).item() / len(episodes)
        return MetaOptTrainResult(
            meta_loss=sum(window_losses) / len(window_losses), final_loss=final,
            grad_norm=grad_norm, windows=windows, inner_steps=cfg.inner_steps,
        )

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
            loss = task_loss(functional_call(model, params, (episode.support_x,)), episode.support_y, cfg.loss, where)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{where} loss is {loss.item()}; lower the rule's step size or clip")
            # Keep the graph: the window's meta-loss backpropagates through earlier updates.
            params, state = step_on_loss(self.rule, params, loss, state, step,
                                         create_graph=cfg.second_order, retain_graph=True)
            meta = task_loss(functional_call(model, params, (meta_x,)), meta_y, cfg.loss,
                             f"task {task}: {cfg.meta_loss}")
            window_loss = window_loss + meta
        return params, state, window_loss
