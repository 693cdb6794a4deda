"""Meta-training an update rule by unrolling it over tasks (the tape rule's training).

For each task the rule runs ``inner_steps`` updates from the task's starting point; the
meta-loss is the task loss after the last update, averaged over the tasks of a meta-step,
backpropagated through the whole unroll into the rule's parameters; the meta-gradient's norm is
clipped and Adam steps the rule. The meta-loss is the loss *after* the last update (a loss
taken before it would never judge the last update), and tasks come from a family, not one
fixed problem.

The gradients fed to the rule keep their graph by default (``second_order=True``);
``second_order=False`` feeds them as constants (cheaper; the Andrychowicz et al. convention).
Any update rule works; features a rule computes from detached values (the tape's) are
constants of the meta-gradient, as the rule intends.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import checks
from ..engines.loss_step import step_on_loss
from ..optim.outer_step import clipped_step
from ..optim.rules.base import UpdateRule


def unrolled_loss(rule: UpdateRule, task: Any, inner_steps: int, second_order: bool = True) -> Tensor:
    """The task loss after ``inner_steps`` updates of ``rule``, differentiable into the rule."""
    params = {name: p.detach().clone().requires_grad_() for name, p in task.params.items()}
    state = rule.init(params)
    for step in range(inner_steps):
        loss = task.loss(params)
        if not torch.isfinite(loss):
            raise ValueError(f"the task loss is {loss.item()} at inner step {step}; lower the rule's lr")
        params, state = step_on_loss(rule, params, loss, state, step, create_graph=second_order, retain_graph=True)
    return task.loss(params)


def meta_train_on_tasks(
    rule: UpdateRule,
    family: Any,
    meta_steps: int = 50,
    inner_steps: int = 10,
    tasks_per_step: int = 1,
    meta_lr: float = 1e-3,
    clip: float | None = 1.0,
    seed: int = 0,
    second_order: bool = True,
) -> list[float]:
    """Train ``rule`` in place on tasks of ``family``; returns the meta-loss of each meta-step.

    Tasks are drawn from a generator seeded with ``seed``: the same call trains the same rule.
    A non-finite meta-gradient raises before the rule is touched.
    """
    meta_steps = checks.integer("meta_steps", meta_steps, 1, owner="meta_train_on_tasks")
    inner_steps = checks.integer("inner_steps", inner_steps, 1, owner="meta_train_on_tasks")
    tasks_per_step = checks.integer("tasks_per_step", tasks_per_step, 1, owner="meta_train_on_tasks")
    meta_lr = checks.positive("meta_lr", meta_lr, owner="meta_train_on_tasks")
    clip = checks.optional_positive("clip", clip, owner="meta_train_on_tasks")
    parameters = list(rule.parameters())
    if not parameters:
        raise ValueError(f"{type(rule).__name__} has no parameters to meta-train")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(parameters, lr=meta_lr)
    history = []
    for meta_step in range(meta_steps):
        tasks = [family.sample(generator) for _ in range(tasks_per_step)]
        optimizer.zero_grad(set_to_none=True)
        meta_loss = sum(unrolled_loss(rule, task, inner_steps, second_order) for task in tasks) / len(tasks)
        meta_loss.backward()
        clipped_step(optimizer, parameters, clip, lambda norm: ValueError(
            f"the meta-gradient norm is {norm} at meta-step {meta_step}; nothing was updated"))
        history.append(float(meta_loss.detach()))
    return history
