"""iMAML's proximal inner objective (Rajeswaran et al. 2019): the support loss plus
``lambda/2 ||phi - theta||^2``, which keeps the adapted weights ``phi`` near the initialisation
``theta``. Its minimiser ``phi*(theta)`` is what the implicit meta-gradient differentiates
(:mod:`.implicit_gradient`), whatever path the inner rule took to it."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import Tensor, nn


def proximal_term(model: nn.Module, adapted: Sequence[str], lam: float,
                  differentiable: bool) -> Callable[[Any], Tensor]:
    """``fmodel -> lam/2 * sum ||phi_n - theta_n||^2`` over the ``adapted`` parameters, where
    ``phi`` are ``fmodel.fast_params`` (in ``model.named_parameters()`` order, as both engines
    list them) and ``theta`` are ``model``'s own. ``differentiable`` keeps ``theta`` in the
    graph (an unrolled meta-gradient reaches the initialisation through the anchor as well as
    through the start of the loop); otherwise the anchor is a constant."""
    wanted = set(adapted)
    anchors = [(index, p if differentiable else p.detach())
               for index, (name, p) in enumerate(model.named_parameters()) if name in wanted]
    half = 0.5 * lam

    def term(fmodel: Any) -> Tensor:
        fast = fmodel.fast_params
        return half * sum((fast[index] - anchor).pow(2).sum() for index, anchor in anchors)

    return term
