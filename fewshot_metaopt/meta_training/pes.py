"""Persistent evolution strategies (PES): meta-gradients of a learned rule from truncated
unrolls, unbiased across truncations, without backpropagation through time.

Reference: Vicol, Metz & Sohl-Dickstein 2021, "Unbiased Gradient Estimation in Unrolled
Computation Graphs with Persistent Evolution Strategies" (ICML); the learned_optimization
library's ``TruncatedPES`` is the JAX implementation.

Truncated BPTT (:mod:`.tbptt`) differentiates each window from detached weights, so it never
sees how the rule's parameters shaped the weights a window starts from, and over long inner
loops its meta-gradient is biased towards short horizons. PES keeps ``pes_particles``
antithetic pairs of inner runs alive across truncations instead. A pair holds two copies of
the optimisee's weights and the rule's state: one run with the rule's parameters at
``theta + eps``, the other at ``theta - eps``. Each truncation draws a fresh
``eps ~ N(0, pes_sigma^2 I)`` per pair, adds it to the pair's running sum ``xi``, and runs both
copies ``unroll_steps`` inner steps under ``torch.no_grad()`` (each step takes the support
gradient of the weights, but nothing backpropagates through an update). ``L+`` and ``L-``
are the sums of the meta-loss after each of the truncation's steps, as truncated BPTT's
meta-loss is, and the estimate is::

    g = mean over pairs of  xi * (L+ - L-) / (2 pes_sigma^2)

with ``xi`` taken after this truncation's ``eps`` was added: it is every perturbation that
shaped the states the truncation ran from and through since the pair's episode began, which
is what makes ``g`` unbiased for the gradient of the truncation's losses through the whole
unroll so far (of the Gaussian-smoothed objective, which differs from the true one by
O(pes_sigma^2)). Summed over an episode's truncations it estimates the gradient of the full
unroll's losses. Plain truncated ES uses ``eps`` alone and has truncated BPTT's bias.

A pair whose episode has taken its ``inner_steps`` steps restarts at the next call: both copies
take the model's current weights and a fresh rule state (made on the first step, under the
perturbed parameters), the pair takes a new episode and ``xi`` starts again from zero.
Truncations end at episode boundaries (an episode's last one is shorter when ``unroll_steps``
does not divide ``inner_steps``), so no truncation mixes two episodes.

Each :meth:`PersistentES.train_step` advances every pair by one truncation and takes one
clipped step of the rule's optimizer. Its ``episodes`` are the tasks for the pairs that
restart in that call: the k-th restarting pair, in pair order, takes ``episodes[k %
len(episodes)]``; episodes beyond the restarting pairs are not used, and a call in which no
pair restarts uses none. Every pair restarts on the first call, so ``pes_particles`` episodes
give each pair its own (fewer are reused, and pairs on one episode still differ in their
perturbations). The pairs start together and stay in step, so they all restart in the same
call, every ``ceil(inner_steps / unroll_steps)`` calls.

The perturbations come from a ``torch.Generator`` of the trainer's own, seeded with
``pes_seed``. :meth:`PersistentES.state_dict` holds it with every pair's episode, weights,
rule states, ``xi`` and step counter as plain tensors and containers
(``torch.load(weights_only=True)`` reads them), so training resumes bit for bit.

Cost per truncation: ``2 * pes_particles`` forward unrolls of up to ``unroll_steps`` steps,
each step with its own support gradient, and no backward pass through the unroll; memory
holds ``2 * pes_particles`` copies of the weights and rule state, whatever ``unroll_steps`` is.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Iterator, List

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..distributed import MetaBatchGroup
from ..engines.loss_step import step_on_loss
from ..engines.precision import resolve_precision
from ..episodes.episode import Episode
from ..losses import task_loss
from ..optim.outer_step import clipped_step
from ..optim.rules.base import Params, UpdateRule
from .config import MetaOptimizerConfig
from .results import MetaOptTrainResult
from .tbptt import meta_batch


@dataclass
class InnerRun:
    """One copy of a pair: the optimisee's weights and the rule's state (``None`` before the
    first step of an episode)."""

    weights: Params
    rule_state: Any


@dataclass
class ParticlePair:
    """Two inner runs on one episode: ``plus`` took each truncation's steps with the rule at
    ``theta + eps``, ``minus`` at ``theta - eps``; ``perturbation_sum`` (``xi``) is the sum of
    those ``eps`` since the episode began, ``steps`` the inner steps taken on it."""

    episode: Episode
    steps: int
    perturbation_sum: List[Tensor]
    plus: InnerRun
    minus: InnerRun


@dataclass
class PESEstimate:
    """One truncation of every pair. ``per_pair[j]`` stacks the pairs' estimates of the
    gradient for the rule's ``j``-th parameter (leading dimension: pairs), so a caller can
    measure the estimator's spread; ``gradient`` is their mean. ``loss_plus``/``loss_minus``
    hold each pair's ``L+``/``L-``; ``meta_loss`` is their mean per inner step,
    ``final_loss`` the mean meta-loss of both copies after the truncation's last step, and
    ``steps`` the most inner steps a pair took."""

    per_pair: List[Tensor]
    loss_plus: Tensor
    loss_minus: Tensor
    meta_loss: float
    final_loss: float
    steps: int

    @property
    def gradient(self) -> List[Tensor]:
        return [estimates.mean(0) for estimates in self.per_pair]


class PersistentES:
    """Trains ``rule``'s parameters with ``optimizer`` by PES (module docstring); ``model``
    is the base model unless a step names another. ``seed`` overrides ``config.pes_seed``."""

    def __init__(self, rule: UpdateRule, optimizer: torch.optim.Optimizer, config: MetaOptimizerConfig,
                 model: nn.Module, seed: int | None = None) -> None:
        self.rule, self.optimizer, self.config, self.model = rule, optimizer, config, model
        self.parameters = list(rule.parameters())
        if not self.parameters:
            raise ValueError(f"PES perturbs a rule's parameters, and {type(rule).__name__} has none; "
                             "give the rule learnable parameters")
        self.group: MetaBatchGroup | None = None
        device = next(model.parameters()).device
        precision = resolve_precision(config.precision, device)
        self.call = precision.wrap(lambda model, params, x: functional_call(model, params, (x,)), device)
        self.generator = torch.Generator().manual_seed(config.pes_seed if seed is None else seed)
        self.pairs: List[ParticlePair | None] = [None] * config.pes_particles

    # ------------------------------------------------------------------ training

    def train_step(self, model: nn.Module, episodes: List[Episode]) -> MetaOptTrainResult:
        """One truncation of every pair, then one clipped step of the rule's optimizer; the
        result's ``windows`` is 1 and its ``inner_steps`` the truncation's length."""
        if self.group is not None:
            raise ValueError("outer_trainer 'pes' runs in one process; distribute with outer_trainer 'tbptt'")
        estimate = self.estimate(model, episodes)
        self.optimizer.zero_grad(set_to_none=True)
        for parameter, gradient in zip(self.parameters, estimate.gradient):
            parameter.grad = gradient
        grad_norm = clipped_step(self.optimizer, self.parameters, self.config.gradient_clipping, lambda norm: (
            FloatingPointError(f"the PES meta-gradient norm is {norm}; nothing was updated (raise pes_sigma)")))
        return MetaOptTrainResult(meta_loss=estimate.meta_loss, final_loss=estimate.final_loss,
                                  grad_norm=grad_norm, windows=1, inner_steps=estimate.steps)

    def estimate(self, model: nn.Module, episodes: List[Episode]) -> PESEstimate:
        """Advance every pair one truncation and estimate the meta-gradient; the rule's
        parameters are left as they were. If a loss is not finite this raises and nothing
        changes: the pairs and the generator stay where they were."""
        if not episodes:
            raise ValueError("PES needs at least one episode to start its particles on, got none")
        start = {name: p.detach() for name, p in model.named_parameters()}
        self._check_model(start)
        theta = [p.detach().clone() for p in self.parameters]
        generator_before = self.generator.get_state()
        sigma = self.config.pes_sigma
        pairs, per_pair, plus_losses, minus_losses, finals, steps = [], [], [], [], [], 0
        try:
            with torch.no_grad():
                for index, pair in enumerate(self._restarted(start, episodes)):
                    eps = [self._draw(t) for t in theta]
                    # This truncation's eps belongs in xi: its losses depend on it as on every
                    # earlier one (the paper's xi_t, not xi_{t-1}).
                    xi = [total + e for total, e in zip(pair.perturbation_sum, eps)]
                    length = min(self.config.unroll_steps, self.config.inner_steps - pair.steps)
                    runs = {}
                    for sign, run in (("+", pair.plus), ("-", pair.minus)):
                        values = [t + e if sign == "+" else t - e for t, e in zip(theta, eps)]
                        with self._rule_at(values, theta):
                            runs[sign] = self._unroll(model, pair.episode, run, pair.steps, length,
                                                      f"pair {index} ({sign})")
                    (plus, loss_plus, final_plus), (minus, loss_minus, final_minus) = runs["+"], runs["-"]
                    scale = (loss_plus - loss_minus) / (2 * sigma**2)
                    per_pair.append([x * scale.to(x.dtype) for x in xi])
                    plus_losses.append(loss_plus / length)
                    minus_losses.append(loss_minus / length)
                    finals += [final_plus, final_minus]
                    steps = max(steps, length)
                    pairs.append(ParticlePair(pair.episode, pair.steps + length, xi, plus, minus))
        except BaseException:
            self.generator.set_state(generator_before)
            raise
        self.pairs = pairs
        loss_plus, loss_minus = torch.stack(plus_losses), torch.stack(minus_losses)
        return PESEstimate(
            per_pair=[torch.stack(estimates) for estimates in zip(*per_pair)],
            loss_plus=loss_plus, loss_minus=loss_minus,
            meta_loss=float((loss_plus + loss_minus).mean() / 2), final_loss=float(torch.stack(finals).mean()),
            steps=steps,
        )

    def _check_model(self, start: Params) -> None:
        # Pairs whose episode is done restart on this call's model, so only runs still in
        # flight must match it (a mixture switches architectures between episodes).
        running = next((pair for pair in self.pairs
                        if pair is not None and pair.steps < self.config.inner_steps), None)
        if running is None:
            return
        shapes = {name: tuple(w.shape) for name, w in running.plus.weights.items()}
        if shapes != {name: tuple(p.shape) for name, p in start.items()}:
            raise ValueError("the PES particles in flight hold weights of another model; pass the model they "
                             "started on, or build a new trainer for this one")

    def _restarted(self, start: Params, episodes: List[Episode]) -> List[ParticlePair]:
        """The pairs, with a fresh one wherever a pair has not started or its episode is done."""
        pairs, handed = [], 0
        for pair in self.pairs:
            if pair is None or pair.steps >= self.config.inner_steps:
                episode = episodes[handed % len(episodes)]
                handed += 1
                pair = ParticlePair(episode, 0, [torch.zeros_like(p) for p in self.parameters],
                                    InnerRun(dict(start), None), InnerRun(dict(start), None))
            pairs.append(pair)
        return pairs

    def _draw(self, parameter: Tensor) -> Tensor:
        # Drawn on the CPU, where the generator lives, so that a seed names the same
        # perturbations on every device.
        noise = torch.randn(parameter.shape, generator=self.generator, dtype=parameter.dtype)
        return (noise * self.config.pes_sigma).to(parameter.device)

    @contextmanager
    def _rule_at(self, values: List[Tensor], theta: List[Tensor]) -> Iterator[None]:
        """The rule with its parameters set to ``values``, and back to ``theta`` exactly after
        (copied, not subtracted: ``theta + eps - eps`` need not be ``theta`` in floating point)."""
        try:
            with torch.no_grad():
                for parameter, value in zip(self.parameters, values):
                    parameter.copy_(value)
            yield
        finally:
            with torch.no_grad():
                for parameter, value in zip(self.parameters, theta):
                    parameter.copy_(value)

    def _unroll(self, model: nn.Module, episode: Episode, run: InnerRun, first: int, length: int,
                where: str) -> tuple[InnerRun, Tensor, Tensor]:
        """``length`` steps of the rule (at whatever parameters it holds now) from ``run``: the
        run after them, the sum of the meta-losses after each step and the last of them."""
        cfg = self.config
        meta_x, meta_y = meta_batch(episode, cfg.meta_loss)
        weights, state = run.weights, run.rule_state
        total = torch.zeros((), dtype=torch.float64, device=meta_x.device)
        for step in range(first, first + length):
            with torch.enable_grad():
                leaves = {name: w.detach().requires_grad_() for name, w in weights.items()}
                loss = task_loss(self.call(model, leaves, episode.support_x), episode.support_y, cfg.loss,
                                 f"{where}: support")
            weights, state = step_on_loss(self.rule, leaves, loss, state, step)
            meta = task_loss(self.call(model, weights, meta_x), meta_y, cfg.loss, f"{where}: {cfg.meta_loss}")
            total = total + meta.double()
        if not torch.isfinite(total):
            raise FloatingPointError(f"{where}: the {cfg.meta_loss} loss over inner steps {first}..{first + length - 1} "
                                     f"is {total.item()}; lower pes_sigma or the rule's step size")
        return InnerRun(weights, state), total, meta.double()

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """The pairs and the generator, as plain tensors and containers."""
        return {
            "generator": self.generator.get_state(),
            "pairs": [None if pair is None else {
                "episode": {f.name: getattr(pair.episode, f.name) for f in fields(pair.episode)},
                "steps": pair.steps,
                "perturbation_sum": list(pair.perturbation_sum),
                "plus": {"weights": dict(pair.plus.weights), "rule_state": plain_tree(pair.plus.rule_state)},
                "minus": {"weights": dict(pair.minus.weights), "rule_state": plain_tree(pair.minus.rule_state)},
            } for pair in self.pairs],
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`'s pairs and generator (the pair count must match)."""
        if len(state["pairs"]) != len(self.pairs):
            raise ValueError(f"the PES state has {len(state['pairs'])} particle pairs and this trainer "
                             f"{len(self.pairs)}; set pes_particles={len(state['pairs'])}")
        self.generator.set_state(state["generator"].cpu())
        self.pairs = [None if saved is None else ParticlePair(
            Episode(**saved["episode"]), saved["steps"], list(saved["perturbation_sum"]),
            self._run_from(saved["plus"]), self._run_from(saved["minus"]),
        ) for saved in state["pairs"]]

    def _run_from(self, saved: dict) -> InnerRun:
        weights = dict(saved["weights"])
        # A fresh state of the rule gives the structure (its NamedTuples) that the plain one lost.
        template = self.rule.init(weights)
        return InnerRun(weights, shaped_like(template, saved["rule_state"]))


def plain_tree(tree: Any) -> Any:
    """``tree`` with its NamedTuples as tuples: what ``weights_only`` loading reads."""
    if isinstance(tree, dict):
        return {key: plain_tree(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [plain_tree(value) for value in tree] if isinstance(tree, list) else tuple(plain_tree(v) for v in tree)
    return tree


def shaped_like(template: Any, tree: Any) -> Any:
    """:func:`plain_tree`'s inverse: ``tree``'s values in ``template``'s containers."""
    if tree is None or not isinstance(template, (dict, list, tuple)):
        return tree
    if isinstance(template, dict):
        return {key: shaped_like(template[key], value) for key, value in tree.items()}
    items = [shaped_like(t, value) for t, value in zip(template, tree)]
    return type(template)(*items) if hasattr(template, "_fields") else type(template)(items)
