"""Warp-Grad's inner rule and the machinery that meta-trains warp layers.

:class:`WarpGradRule` is the inner loop of a :class:`~.layers.WarpedModel`: a base rule (SGD
at the inner lr by default, or any update rule) applied to the task-adapted parameters only;
its meta-parameters are the model's warp layers, registered here so that an optimizer over
``rule.parameters()`` trains the warps.

:class:`WarpGradTrainer` runs inner trajectories without building a graph, stores every point
in a :class:`~.replay.ReplayBuffer`, and turns sampled points into the warp meta-gradient
(:func:`~.objective.warp_meta_loss`); it also returns each trajectory for the Leap update of
the initialisation. Meta-training cost per update: the inner steps themselves (first-order
forward/backward passes) plus ``points`` second-order steps, whatever the number of inner
steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..engines.loss_step import step_on_loss
from ..engines.precision import FP32, Precision
from ..episodes.episode import Episode
from ..losses import task_loss
from ..optim.rules.base import Params, UpdateRule
from ..optim.tree import detached_tree
from .layers import WarpedModel
from .objective import BATCHES, warp_meta_loss
from .replay import ReplayBuffer, TrajectoryPoint


def require_warped(model: nn.Module, who: str) -> WarpedModel:
    if not isinstance(model, WarpedModel):
        raise ValueError(
            f"{who} needs a WarpedModel (see fewshot_metaopt.warp: warp_conv4, warp_mlp, "
            f"WarpedModel.interleave), got {type(model).__name__}"
        )
    return model


class WarpGradRule(UpdateRule):
    """``inner`` on the adapted parameters of ``model``; gradients of warp parameters are ignored."""

    def __init__(self, model: WarpedModel, inner: UpdateRule) -> None:
        super().__init__()
        require_warped(model, "WarpGradRule")
        self.inner = inner
        self.warps = nn.ModuleList(model.warp_layers())
        self.adapted = tuple(model.adapted_parameter_names())

    def init(self, params: Params) -> Any:
        return self.inner.init({n: params[n] for n in self.adapted if n in params})

    def update(
        self, params: Params, grads: Params, state: Any, step: int, loss: Tensor | None = None
    ) -> tuple[Params, Any]:
        adapted = set(self.adapted)
        return self.inner.update(params, {n: g for n, g in grads.items() if n in adapted}, state, step, loss=loss)


@dataclass
class TaskRun:
    """One inner trajectory: weights ``theta_0 .. theta_K`` of the adapted parameters, and the
    query loss (and accuracy, for classification) after the last step."""

    trajectory: List[Dict[str, Tensor]]
    query_loss: float
    query_accuracy: float | None


class WarpGradTrainer:
    """Trajectories into a replay buffer, sampled points into the warp meta-gradient.

    Args:
        model: the warped model (its warps and the adapted parameters' initialisation are read
            from it, never written here).
        rule: the inner rule, e.g. a :class:`WarpGradRule` or the learner's SGD rule.
        buffer_size: points kept (the most recent); points: points per warp update.
        loss: the task loss; step_batch / eval_batch: which set of a point's episode the
            objective's inner step and its evaluation use.
        seed: of the buffer's sampling generator.
    """

    def __init__(self, model: WarpedModel, rule: UpdateRule, buffer_size: int = 100, points: int = 16,
                 loss: str = "auto", step_batch: str = "support", eval_batch: str = "query", seed: int = 0,
                 precision: Precision = FP32) -> None:
        self.model = require_warped(model, "WarpGradTrainer")
        if points < 1:
            raise ValueError(f"points per warp update must be >= 1, got {points}")
        for name, value in (("step_batch", step_batch), ("eval_batch", eval_batch)):
            if value not in BATCHES:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(BATCHES)}")
        self.rule, self.points, self.loss = rule, points, loss
        self.step_batch, self.eval_batch = step_batch, eval_batch
        self.buffer = ReplayBuffer(buffer_size, seed)
        self.adapted = model.adapted_parameter_names()
        self.precision = precision
        self.call = precision.wrap(lambda params, x: functional_call(model, params, (x,)),
                                   next(model.parameters()).device)
        # fp16: the current scale of the outer loss, applied to every inner loss too (see engines.precision).
        self.loss_scale = 1.0
        # Distributed (fewshot_metaopt.distributed), each rank's points wait here until every
        # rank's are gathered into every buffer, in the ranks' order: the buffers stay identical,
        # so every rank samples the points a single process would.
        self.group: Any = None
        self._pending: list[TrajectoryPoint] = []

    def run_task(self, episode: Episode, steps: int, task: int = 0, record: bool = True) -> TaskRun:
        """``steps`` inner steps from the model's initialisation, no graph kept; every point
        goes into the buffer when ``record``."""
        model = self.model
        fixed = {n: p.detach() for n, p in model.named_parameters() if n not in self.adapted}
        # Copies, not views: the points stored from these weights must not follow the model when
        # an outer step later updates it in place.
        params = {n: p.detach().clone() for n, p in model.named_parameters() if n in self.adapted}
        state = self.rule.init(params)
        trajectory = [params]
        for step in range(steps):
            if record:
                self._add(TrajectoryPoint(params, detached_tree(state), step, episode))
            live = {n: p.requires_grad_() for n, p in ((n, p.detach()) for n, p in params.items())}
            where = f"task {task}: support at inner step {step}"
            loss = task_loss(self.call({**fixed, **live}, episode.support_x), episode.support_y, self.loss, where)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{where}: loss is {loss.item()}; lower the inner lr")
            with torch.no_grad():
                params, state = step_on_loss(self.rule, live, loss, state, step, scale=self.loss_scale)
            params = {n: p.detach() for n, p in params.items()}
            trajectory.append(params)
        with torch.no_grad():
            out = self.call({**fixed, **params}, episode.query_x)
            query_loss = float(task_loss(out, episode.query_y, self.loss, f"task {task}: query"))
            accuracy = None
            if not episode.query_y.is_floating_point():
                accuracy = float((out.argmax(-1) == episode.query_y).float().mean())
        return TaskRun(trajectory, query_loss, accuracy)

    def state_dict(self) -> dict:
        """The replay buffer (points and sampling generator), for bit-exact resumption."""
        return {"buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])

    def record_point(self, params: Params, rule_state: Any, step: int, episode: Episode) -> None:
        """Store a point of a trajectory run elsewhere (e.g. the learner's higher inner loop).
        ``rule_state=None`` before the first step means "not created yet": the rule's initial
        state is stored, which is what its first update would create."""
        # A copy: the first step's weights are the model's own, which the outer step updates in place.
        adapted = {n: params[n].detach().clone() for n in self.adapted}
        if rule_state is None:
            rule_state = self.rule.init(adapted)
        self._add(TrajectoryPoint(adapted, detached_tree(rule_state), step, episode))

    def _add(self, point: TrajectoryPoint) -> None:
        if self.group is None:
            self.buffer.add(point)
        else:
            self._pending.append(point)

    def share_points(self) -> None:
        """Distributed: add every rank's points recorded since the last call to every rank's
        buffer, rank by rank (rank r's tasks are the meta-batch's r-th share)."""
        if self.group is None:
            return
        for share in self.group.gather_all(self._pending):
            for point in share:
                self.buffer.add(point)
        self._pending = []

    def accumulate_warp_gradient(self, inputs: List[Tensor],
                                 backward: Callable[[Tensor, List[Tensor]], None] | None = None) -> float:
        """Add ``d J / d inputs`` to the inputs' ``.grad`` (``inputs``: the warp parameters, plus
        whatever else should learn from the warp objective), through ``backward(J, inputs)``
        when given (a learner's, which scales it under fp16); returns ``J``."""
        if not inputs:
            raise ValueError("the warp update has no parameters to train")
        self.share_points()
        objective = warp_meta_loss(self.model, self.rule, self.buffer.sample(self.points), loss=self.loss,
                                   step_batch=self.step_batch, eval_batch=self.eval_batch, call=self.call,
                                   scale=self.loss_scale)
        if not torch.isfinite(objective):
            raise FloatingPointError(f"the warp objective is {objective.item()}; lower the inner lr or the meta lr")
        if backward is None:
            objective.backward(inputs=inputs)
        else:
            backward(objective, inputs)
        return float(objective.detach())
