"""Families of small optimisation problems for meta-training an update rule.

A task is a starting point ``task.params`` (named tensors) and a differentiable
``task.loss(params)``; a family draws tasks from a ``torch.Generator``, so a seed names the
same tasks everywhere and the global RNG is never touched.

* :class:`QuadraticTasks` — ``f(x) = 1/2 (x - x*)^T A (x - x*)``, eigenvalues of ``A``
  log-uniform in ``[1 / condition, 1]``, random eigenbasis, ``x*`` standard normal, ``x0 = 0``.
* :class:`EpisodeTasks` — fit a freshly initialised network to the support set of one episode
  of any episode source: :class:`~fewshot_metaopt.datasets.Sinusoid` regression,
  :class:`~fewshot_metaopt.datasets.Glyphs` or :class:`~fewshot_metaopt.datasets.Omniglot`
  classifiers (the task loss is cross-entropy for labels, MSE for real targets).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .. import checks
from ..losses import LOSSES, task_loss
from ..optim.rules.base import Params


class QuadraticTask:
    """``1/2 (x - target)^T A (x - target)`` from ``x = 0``."""

    def __init__(self, matrix: Tensor, target: Tensor) -> None:
        self.matrix, self.target = matrix, target
        self.params: Params = {"x": torch.zeros_like(target)}

    def loss(self, params: Params) -> Tensor:
        d = params["x"] - self.target
        return 0.5 * d @ (self.matrix @ d)


class QuadraticTasks:
    """Random convex quadratics of ``dim`` coordinates and condition number ``condition``."""

    def __init__(self, dim: int = 10, condition: float = 10.0, dtype: torch.dtype = torch.float32) -> None:
        self.dim = checks.integer("dim", dim, 1, owner="QuadraticTasks")
        self.condition = checks.real("condition", condition, 1.0, math.inf, owner="QuadraticTasks")
        self.dtype = dtype

    def sample(self, generator: torch.Generator) -> QuadraticTask:
        basis, _ = torch.linalg.qr(torch.randn(self.dim, self.dim, generator=generator, dtype=torch.float64))
        logs = -math.log(self.condition) * torch.rand(self.dim, generator=generator, dtype=torch.float64)
        matrix = basis @ torch.diag(logs.exp()) @ basis.T
        target = torch.randn(self.dim, generator=generator, dtype=torch.float64)
        return QuadraticTask(matrix.to(self.dtype), target.to(self.dtype))


class NetworkTask:
    """The loss of ``model`` with the given parameters on fixed inputs and targets."""

    def __init__(self, model: nn.Module, inputs: Tensor, targets: Tensor, loss: str = "auto") -> None:
        self.model, self.inputs, self.targets, self.kind = model, inputs, targets, loss
        self.params: Params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(self, params: Params) -> Tensor:
        return task_loss(functional_call(self.model, params, (self.inputs,)), self.targets, self.kind)


class EpisodeTasks:
    """Train a fresh ``make_model()`` on the support set of one episode of ``source``.

    ``source`` is any episode source (``sample_episode(ways, shots, queries, generator)``);
    the network's initialisation is drawn from the family's generator too.
    """

    def __init__(
        self, source: Any, make_model: Callable[[], nn.Module], ways: int = 1, shots: int = 10, loss: str = "auto"
    ) -> None:
        self.ways = checks.integer("ways", ways, 1, owner="EpisodeTasks")
        self.shots = checks.integer("shots", shots, 1, owner="EpisodeTasks")
        if loss not in LOSSES:
            raise ValueError(f"unknown EpisodeTasks loss {loss!r}; choose one of {', '.join(LOSSES)}")
        source.validate(self.ways, self.shots, 0)
        self.source, self.make_model, self.kind = source, make_model, loss

    def sample(self, generator: torch.Generator) -> NetworkTask:
        episode = self.source.sample_episode(self.ways, self.shots, 0, generator)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.make_model()
        dtype = next(model.parameters()).dtype
        inputs = episode.support_x.to(dtype) if episode.support_x.is_floating_point() else episode.support_x
        targets = episode.support_y.to(dtype) if episode.support_y.is_floating_point() else episode.support_y
        return NetworkTask(model, inputs, targets, self.kind)
