"""Inner-loop learning rates, fixed or meta-learned, at the granularity a method asks for.

=====================  ========================================================  ==========
granularity            what is learned                                           used by
=====================  ========================================================  ==========
``none``               nothing: one fixed float                                  MAML
``scalar``             one lr for every tensor
``per_layer``          one lr per parameter tensor
``per_parameter``      a tensor shaped like each parameter (sign free)           Meta-SGD
``per_step_per_layer`` one lr per inner step and parameter tensor                MAML++
=====================  ========================================================  ==========
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

GRANULARITIES = ("none", "scalar", "per_layer", "per_parameter", "per_step_per_layer")


class LearnedLR(nn.Module):
    """Learning rates for named parameter tensors; ``lr(name, step)`` gives one.

    The learnable values are ordinary ``nn.Parameter``s of this module, so an outer optimizer
    over ``module.parameters()`` trains them.
    """

    def __init__(
        self,
        shapes: Mapping[str, torch.Size],
        granularity: str = "none",
        init: float = 0.01,
        steps: int = 1,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown lr granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}")
        if granularity == "per_step_per_layer" and steps < 1:
            raise ValueError(f"per_step_per_layer needs steps >= 1, got {steps}")
        self.granularity = granularity
        self.init = float(init)
        self.steps = steps
        self.names = list(shapes)
        self._index = {name: i for i, name in enumerate(self.names)}
        # Built in the parameters' own dtype: a float32 round trip would perturb a float64 lr.
        def full(shape) -> nn.Parameter:
            return nn.Parameter(torch.full(tuple(shape), self.init, dtype=dtype))

        if granularity == "scalar":
            self.values = nn.ParameterList([full(())])
        elif granularity == "per_layer":
            self.values = nn.ParameterList([full(()) for _ in self.names])
        elif granularity == "per_parameter":
            self.values = nn.ParameterList([full(shapes[n]) for n in self.names])
        elif granularity == "per_step_per_layer":
            self.values = nn.ParameterList([full((steps, len(self.names)))])
        else:
            self.values = nn.ParameterList()

    @property
    def learned(self) -> bool:
        return self.granularity != "none"

    def lr(self, name: str, step: int = 0) -> Tensor | float:
        g = self.granularity
        if g == "none":
            return self.init
        if g == "scalar":
            return self.values[0]
        if g == "per_step_per_layer":
            # Steps past the learned ones (more inner steps at test time) reuse the last row.
            return self.values[0][min(step, self.steps - 1), self._index[name]]
        return self.values[self._index[name]]

    def tensors(self) -> dict[str, Tensor]:
        """The full learned values per parameter tensor (detached copies), e.g. for histograms.

        ``per_step_per_layer`` gives each tensor its vector of per-step lrs.
        """
        out = {}
        for i, name in enumerate(self.names):
            if self.granularity == "per_step_per_layer":
                value = self.values[0][:, i]
            else:
                value = torch.as_tensor(self.lr(name))
            out[name] = value.detach().clone()
        return out

    def means(self) -> dict[str, float]:
        """Mean learned lr per parameter tensor (what ``get_learned_lr`` reports)."""
        return {name: float(t.float().mean()) for name, t in self.tensors().items()}


def learned_lr_of(rule: nn.Module) -> dict[str, float]:
    """A rule's learning rates per tensor: the means of its :class:`LearnedLR` (``rule.lrs``),
    else what its own ``get_learned_lr()`` reports, else nothing."""
    lrs = getattr(rule, "lrs", None)
    if lrs is not None:
        return lrs.means()
    getter = getattr(rule, "get_learned_lr", None)
    return getter() if getter is not None else {}


def learned_lr_tensors_of(rule: nn.Module) -> dict[str, torch.Tensor]:
    """The full learned lr tensors of a rule's :class:`LearnedLR`, looking through wrappers that
    hold the rule as ``.rule`` (:class:`~.schedules.ScheduledRule`, ``MetaOptimizer``); empty
    for rules without one."""
    while rule is not None:
        lrs = getattr(rule, "lrs", None)
        if lrs is not None:
            return lrs.tensors()
        rule = getattr(rule, "rule", None)
    return {}
