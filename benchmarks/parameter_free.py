"""The parameter-free optimizers the control meta-optimizer's paper compares with, built from
their own packages at the settings their documentation gives (``pip install
"fewshot-metaopt[parameter-free]"``; never a core dependency).

Each entry builds ``torch.optim`` optimizers from a module's parameters and says how to drive
it: ``averaged`` evaluates the package's iterate average (DoG's documentation calls averaging
crucial), ``schedule_free`` switches the optimizer between train and eval modes around
evaluation (its documentation requires it), ``closure`` calls ``step(closure)`` (the ``dowg``
package only steps when given a closure).

DoWG has no package from its authors: ``dog-optimizer`` ships DoG and LDoG only, and the
PyPI ``dowg`` package (0.3.1; its README says its author is "unsure if the implementation is
correct") starts its distance estimate at ``1 - eps`` instead of a small ``r_eps`` and clips
gradients at 0.5. Both are here: that package as published, and :class:`DoWG`, Algorithm 1
of Khaled, Mishchenko & Jin (2023), written out from the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn


class DoWG(torch.optim.Optimizer):
    """Distance over Weighted Gradients (Khaled, Mishchenko & Jin 2023, Algorithm 1), one
    step size for all parameters:

        r_t = max(r_{t-1}, ||x_t - x_0||),  v_t = v_{t-1} + r_t^2 ||g_t||^2,
        x_{t+1} = x_t - r_t^2 / sqrt(v_t) g_t,

    with ``r_0 = reps_rel (1 + ||x_0||)`` as DoG's package sets its initial distance.
    """

    def __init__(self, params: Any, reps_rel: float = 1e-4, eps: float = 1e-8) -> None:
        super().__init__(params, {"reps_rel": reps_rel, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        group = self.param_groups[0]
        state = self.state["dowg"]
        if not state:
            state["x0"] = [p.detach().clone() for p in params]
            x0_norm = torch.sqrt(sum((p.double() ** 2).sum() for p in params))
            state["r"] = group["reps_rel"] * (1.0 + x0_norm)
            state["v"] = torch.zeros((), dtype=torch.float64)
        distance = torch.sqrt(sum(((p.double() - p0.double()) ** 2).sum() for p, p0 in zip(params, state["x0"])))
        state["r"] = torch.maximum(state["r"], distance)
        grad_sq = sum((p.grad.double() ** 2).sum() for p in params)
        state["v"] = state["v"] + state["r"] ** 2 * grad_sq
        step = float(state["r"] ** 2 / (torch.sqrt(state["v"]) + group["eps"]))
        for p in params:
            p.add_(p.grad, alpha=-step)
        return loss


@dataclass(frozen=True)
class ParameterFree:
    """One parameter-free optimizer: how to build it and how it is driven."""

    package: str
    build: Callable[[nn.Module], Any]
    averaged: bool = False
    schedule_free: bool = False
    closure: bool = False


def _dog(model: nn.Module) -> Any:
    from dog import DoG

    # reps_rel 1e-4: the package's documented value for networks with batch normalisation.
    return DoG(model.parameters(), reps_rel=1e-4)


def _dowg_package(model: nn.Module) -> Any:
    from dowg import ScalarDoWG

    return ScalarDoWG(model.parameters())


def _dadapt_adam(model: nn.Module) -> Any:
    from dadaptation import DAdaptAdam

    return DAdaptAdam(model.parameters(), lr=1.0)


def _dadapt_sgd(model: nn.Module) -> Any:
    from dadaptation import DAdaptSGD

    return DAdaptSGD(model.parameters(), lr=1.0)


def _prodigy(model: nn.Module) -> Any:
    from prodigyopt import Prodigy

    return Prodigy(model.parameters(), lr=1.0)


def _mechanic_sgd(model: nn.Module) -> Any:
    from mechanic_pytorch import mechanize

    return mechanize(torch.optim.SGD)(model.parameters(), lr=1.0)


def _mechanic_adam(model: nn.Module) -> Any:
    from mechanic_pytorch import mechanize

    return mechanize(torch.optim.Adam)(model.parameters(), lr=1e-3)


def _schedule_free_adamw(model: nn.Module) -> Any:
    from schedulefree import AdamWScheduleFree

    return AdamWScheduleFree(model.parameters())


def _schedule_free_sgd(model: nn.Module) -> Any:
    from schedulefree import SGDScheduleFree

    return SGDScheduleFree(model.parameters())


PARAMETER_FREE: dict[str, ParameterFree] = {
    "DoG (+ averaging)": ParameterFree("dog-optimizer", _dog, averaged=True),
    "DoWG (paper, Alg. 1)": ParameterFree("(written out here)", lambda model: DoWG(model.parameters())),
    "DoWG (dowg package)": ParameterFree("dowg", _dowg_package, closure=True),
    "D-Adapt Adam": ParameterFree("dadaptation", _dadapt_adam),
    "D-Adapt SGD": ParameterFree("dadaptation", _dadapt_sgd),
    "Prodigy": ParameterFree("prodigyopt", _prodigy),
    "Mechanic SGD": ParameterFree("mechanic-pytorch", _mechanic_sgd),
    "Mechanic Adam": ParameterFree("mechanic-pytorch", _mechanic_adam),
    "Schedule-free AdamW": ParameterFree("schedulefree", _schedule_free_adamw, schedule_free=True),
    "Schedule-free SGD": ParameterFree("schedulefree", _schedule_free_sgd, schedule_free=True),
}


def averager(model: nn.Module) -> Any:
    """DoG's package's polynomial-decay iterate average of ``model``."""
    from dog import PolynomialDecayAverager

    return PolynomialDecayAverager(model)
