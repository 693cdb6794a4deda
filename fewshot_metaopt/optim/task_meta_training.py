"""Meta-training an update rule by unrolling it over tasks (the tape rule's training).

For each task the rule runs ``inner_steps`` updates from the task's starting point; the
meta-loss is the task loss after the last update, averaged over the tasks of a meta-step,
backpropagated through the whole unroll into the rule's parameters; the meta-gradient's norm is
clipped and Adam steps the rule. This is seed 002's loop with two changes: the meta-loss is the
loss *after* the last update (the seed took the loss before it, so its last update was never
judged), and tasks come from a family instead of one fixed quadratic.

The gradients fed to the rule keep their graph (``second_order=True``, the seed's
``create_graph=True``); ``second_order=False`` feeds them as constants (cheaper; the
Andrychowicz et al. convention). Any update rule works; features a rule computes from detached
values (the tape's) are constants of the meta-gradient, as the rule intends.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .rules.base import UpdateRule
from .rules.hyperparameters import integer, optional_positive, positive
from .rules.loss_feature import with_loss


def unrolled_loss(rule: UpdateRule, task: Any, inner_steps: int, second_order: bool = True) -> Tensor:
    """The task loss after ``inner_steps`` updates of ``rule``, differentiable into the rule."""
    params = {name: p.detach().clone().requires_grad_() for name, p in task.params.items()}
    state = rule.init(params)
    for step in range(inner_steps):
        loss = task.loss(params)
        if not torch.isfinite(loss):
            raise ValueError(f"the task loss is {loss.item()} at inner step {step}; lower the rule's lr")
        names = list(params)
        grads = torch.autograd.grad(
            loss, [params[n] for n in names], create_graph=second_order, retain_graph=True, allow_unused=True
        )
        grads = {n: g for n, g in zip(names, grads) if g is not None}
        params, state = rule.update(params, grads, with_loss(state, loss), step)
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
    meta_steps = integer("meta_train_on_tasks", "meta_steps", meta_steps, 1)
    inner_steps = integer("meta_train_on_tasks", "inner_steps", inner_steps, 1)
    tasks_per_step = integer("meta_train_on_tasks", "tasks_per_step", tasks_per_step, 1)
    meta_lr = positive("meta_train_on_tasks", "meta_lr", meta_lr)
    clip = optional_positive("meta_train_on_tasks", "clip", clip)
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
        norm = float(torch.nn.utils.clip_grad_norm_(parameters, clip if clip is not None else math.inf))
        if not math.isfinite(norm):
            raise ValueError(f"the meta-gradient norm is {norm} at meta-step {meta_step}; nothing was updated")
        optimizer.step()
        history.append(float(meta_loss.detach()))
    return history
