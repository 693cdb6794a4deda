"""The coordinatewise LSTM optimizer of Andrychowicz et al. (2016), "Learning to learn by
gradient descent by gradient descent" (NeurIPS), as a pure update rule.

One small LSTM, its weights shared by every coordinate of every parameter tensor, reads each
coordinate's preprocessed gradient and writes that coordinate's step::

    x_i      = ((log|g_i| / p, sign g_i)   if |g_i| >= e^-p
                (-1, e^p g_i)              otherwise)            p = 10   (paper, appendix A)
    h_i, c_i = LSTM(x_i, (h_i, c_i))                               num_layers stacked cells
    theta_i' = theta_i + output_scale * (w . h_i^top + b) + s . x_i  output_scale = 0.1

Initialisation (``init``). The paper does not say how the readout ``(w, b)`` starts, and a
random readout makes the untrained rule move every coordinate by up to ``output_scale`` per step
whatever its gradient (measured on the sinusoid MLP: the loss went from 3.78 to 2.8e5 in 20
steps, ``benchmarks/unroll_stability.py``). ``init="descent"`` (default) starts the readout at
zero and the skip ``s`` at ``(0, -init_lr)``, so the untrained rule is sign descent with step
``init_lr`` and meta-training learns corrections to it; ``init="random"`` is the paper's rule
(random readout, ``s = 0`` and not learned).

All coordinates of all tensors run as one batch: they are flattened, concatenated, sent
through the cells once and split back. The cells' weights are ``nn.LSTMCell`` parameters, but
the cell is computed by :func:`lstm_cell` (the same equations from ``F.linear`` and pointwise
ops), which unlike the fused kernel also runs under ``torch.func.vmap``. The gradients enter as constants by default
(``second_order=False``, the paper's setting: the rule detaches them, so no second derivatives
of the task loss are taken); ``second_order=True`` keeps them in the graph.

Memory: the state is ``(h, c)`` per layer per coordinate, ``2 * num_layers * hidden_size``
floats per parameter — 80 x the model at the defaults (2 layers of 20), plus the gate
activations autograd keeps while meta-training. That is the paper's design and it does not
scale past a few million parameters; :class:`~.lstm_scalable.ScalableLSTMRule` keeps about one
float per coordinate instead (see its module for the trade-off).
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Params, UpdateRule
from .preprocess import check_grads, check_init, log_sign_preprocess, record_effective_lr, records_to_floats

LayerState = Tuple[Tensor, Tensor]
FaithfulState = Dict[str, List[LayerState]]


def lstm_cell(cell: nn.LSTMCell, x: Tensor, state: LayerState) -> LayerState:
    """``cell(x, state)`` written out: with gates ``(i, f, g, o)`` from
    ``W_ih x + b_ih + W_hh h + b_hh``, ``c' = sigmoid(f) c + sigmoid(i) tanh(g)`` and
    ``h' = sigmoid(o) tanh(c')``."""
    h, c = state
    gates = F.linear(x, cell.weight_ih, cell.bias_ih) + F.linear(h, cell.weight_hh, cell.bias_hh)
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class LSTMRule(UpdateRule):
    """The faithful coordinatewise LSTM optimizer (see the module docstring).

    Args:
        hidden_size, num_layers: the LSTM (paper: 20, 2).
        preprocess_p: ``p`` of the log/sign gradient preprocessing (paper: 10).
        output_scale: the factor on the LSTM's output (paper: 0.1).
        init: ``descent`` (untrained rule = sign descent at ``init_lr``) or ``random`` (paper).
        init_lr: the step of the untrained rule under ``init="descent"``.
        second_order: keep the incoming gradients in the graph (default: detach them).
        check_finite: raise on NaN/Inf gradients (one device sync per step).

    State: for each tensor, a list over layers of ``(h, c)``, each ``(numel, hidden_size)``,
    zero at ``init``. The network computes in its own dtype (``rule.to(dtype)``; the learner
    does this for you) and must sit on the parameters' device; updates come back in each
    parameter's dtype.
    """

    variant = "faithful"

    def __init__(
        self,
        hidden_size: int = 20,
        num_layers: int = 2,
        preprocess_p: float = 10.0,
        output_scale: float = 0.1,
        second_order: bool = False,
        check_finite: bool = True,
        init: str = "descent",
        init_lr: float = 1e-3,
    ) -> None:
        super().__init__()
        if hidden_size < 1 or num_layers < 1:
            raise ValueError(f"LSTMRule needs hidden_size >= 1 and num_layers >= 1, got {hidden_size}, {num_layers}")
        check_init(init, init_lr)
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.preprocess_p, self.output_scale = float(preprocess_p), float(output_scale)
        self.second_order, self.check_finite = second_order, check_finite
        self.cells = nn.ModuleList(
            nn.LSTMCell(2 if i == 0 else hidden_size, hidden_size) for i in range(num_layers)
        )
        self.output = nn.Linear(hidden_size, 1)
        self.init_mode = init
        if init == "descent":
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)
            self.skip = nn.Parameter(torch.tensor([0.0, -float(init_lr)]))
        else:
            self.register_buffer("skip", torch.zeros(2))
        self._effective: dict[str, Tensor] = {}

    def init(self, params: Params) -> FaithfulState:
        dtype = self.output.weight.dtype
        return {
            name: [
                (
                    torch.zeros(p.numel(), self.hidden_size, dtype=dtype, device=p.device),
                    torch.zeros(p.numel(), self.hidden_size, dtype=dtype, device=p.device),
                )
                for _ in range(self.num_layers)
            ]
            for name, p in params.items()
        }

    def update(
        self, params: Params, grads: Params, state: FaithfulState, step: int, loss: Tensor | None = None
    ) -> tuple[Params, FaithfulState]:
        check_grads(params, grads, self.check_finite)
        new, new_state = dict(params), dict(state)
        if not grads:
            return new, new_state
        names = list(grads)
        sizes = [grads[n].numel() for n in names]
        dtype = self.output.weight.dtype
        flat = torch.cat([grads[n].reshape(-1) for n in names])
        if not self.second_order:
            flat = flat.detach()
        x = inputs = log_sign_preprocess(flat.to(dtype), self.preprocess_p)
        layers: list[list[LayerState]] = []
        for layer, cell in enumerate(self.cells):
            h = torch.cat([state[n][layer][0] for n in names])
            c = torch.cat([state[n][layer][1] for n in names])
            h, c = lstm_cell(cell, x, (h, c))
            layers.append(list(zip(h.split(sizes), c.split(sizes))))
            x = h
        steps = (self.output(x).squeeze(-1) * self.output_scale + inputs @ self.skip).split(sizes)
        for i, name in enumerate(names):
            p = params[name]
            delta = steps[i].reshape(p.shape).to(p.dtype)
            new[name] = p + delta
            new_state[name] = [layers[layer][i] for layer in range(self.num_layers)]
            record_effective_lr(self._effective, name, delta, grads[name])
        return new, new_state

    def get_learned_lr(self) -> dict[str, float]:
        """Effective learning rate per tensor of the last update: ``mean|delta| / mean|grad|``
        (the SGD lr that would move the tensor as far); empty before the first update."""
        return records_to_floats(self._effective)
