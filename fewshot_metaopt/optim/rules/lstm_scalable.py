"""A coordinatewise learned optimizer with an LSTM per tensor: the scalable variant of
:class:`~.lstm_faithful.LSTMRule`, in the spirit of Wichrowska et al. (2017), "Learned
Optimizers that Scale and Generalize" (ICML): cheap per-coordinate recurrence, and the LSTM
moved up to one hidden state per parameter tensor.

For each tensor with gradient ``g`` at its ``t``-th update (decays ``beta = sigmoid(logit)``
are meta-learned, initialised at 0.9 and 0.999)::

    m   = beta1 m + (1 - beta1) g                                   per coordinate
    v   = beta2 v + (1 - beta2) (g^2 + eps1)                        per coordinate if the tensor
                                                                     is 0-/1-D, else factored as
    row = beta2 row + (1 - beta2) mean_cols(g^2 + eps1)              in Adafactor (Shazeer & Stern
    col = beta2 col + (1 - beta2) mean_rows(g^2 + eps1)              2018): v ~ row col^T / mean(row)
    v^  = v / (1 - beta2^t)   m^ = m / (1 - beta1^t)   r = 1 / sqrt(v^ + eps)
    x_i = (log/sign preprocess(g_i) [2],  m^_i r_i,  g_i r_i)        4 features per coordinate
    s   = (mean_i x_i, std_i x_i, log(numel) / 10)                  9 summary features per tensor
    h   = LSTM(s, h)                                                 per tensor; all tensors batched
    y_i = w2 . tanh(W1 x_i + b1 + U h) + b2 + n . x_i                coordinatewise MLP, context bias
    theta_i' = theta_i + output_scale * exp(a . h + a0) * y_i        context log-scale per tensor

Initialisation (``init``). ``descent`` (default) starts the MLP's readout ``(w2, b2)`` and the
context's scale weights ``a`` at zero, the nominal ``n`` at ``(0, 0, -1, 0)`` (it reads
``m^ r``) and ``a0`` at ``log(init_lr / output_scale)``: the untrained rule is Adam with lr
``init_lr`` (with Adafactor's factored second moment for matrices), and meta-training learns
per-tensor step scales, the decays and a coordinatewise correction. ``random`` keeps PyTorch's
random initialisation and ``n = 0`` (not learned): the untrained rule then takes steps of about
``output_scale`` in directions unrelated to descent.

The tensor's LSTM state conditions every coordinate's step (a per-tensor bias inside the MLP
and a per-tensor step scale), so the rule can still learn schedules and per-layer behaviour.

Memory trade-off. The recurrent state per coordinate is ``m`` plus, for 0-/1-D tensors, ``v``:
at most 2 floats; matrices and conv kernels (the bulk of any large model, reshaped to
``(shape[0], rest)``) keep ``rows + cols`` floats of ``v`` instead, so the state is about 1x the
model (measured 1.006x at 1M and 1.002x at 12M parameters, see ``tests/test_rules.py``) plus
``2 * num_layers * hidden_size`` floats per tensor. The faithful variant keeps
``2 * num_layers * hidden_size`` floats per coordinate (80x the model at the defaults). What is
given up: the per-coordinate recurrence is a fixed form (two exponential averages with learned
decays) rather than a learned LSTM, so coordinatewise memory beyond momentum and scale must come
through the shared per-tensor context. (Transient memory during an update is separate: about
``4 + mlp_hidden`` floats per coordinate of features and activations, which autograd keeps
until the meta-gradient is taken; the faithful variant's gates make that ``~10 * hidden_size``.)

Gradients enter as constants by default (``second_order=False``), as in the faithful variant.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Dict, List, NamedTuple, Tuple, Union

import torch
from torch import Tensor, nn

from ... import checks
from .base import Params, UpdateRule
from .lstm_faithful import lstm_cell
from .coordinate_chunks import (
    DEFAULT_CHUNK_SIZE, CompiledKernels, Moments, check_chunking, linear, map_chunks, plain_values, spans,
)
from .preprocess import (
    check_grads, check_init, log_sign_clamped, log_sign_preprocess, record_effective_lr, records_to_floats,
)

COORD_FEATURES = 4
TENSOR_FEATURES = 2 * COORD_FEATURES + 1
# The coordinate network's hidden activation: tanh as published; relu costs a fraction of a
# tanh per unit, which is most of a step at 10M+ parameters (docs/benchmarks.md).
ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


class ScalableSlot(NamedTuple):
    """State of one tensor: updates taken, first moment (parameter-shaped), second moment
    (parameter-shaped, or a ``(row, col)`` pair for tensors of 2+ dimensions), and the tensor's
    LSTM state (a list over layers of ``(h, c)``, each ``(hidden_size,)``)."""

    step: int
    m: Tensor
    v: Union[Tensor, Tuple[Tensor, Tensor]]
    context: List[Tuple[Tensor, Tensor]]


ScalableState = Dict[str, ScalableSlot]


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class ScalableLSTMRule(UpdateRule):
    """The scalable LSTM optimizer (see the module docstring for the math and the trade-off).

    Args:
        hidden_size, num_layers: the per-tensor LSTM (defaults as the faithful variant).
        mlp_hidden: width of the coordinatewise network's hidden layer.
        betas: initial decays of the two accumulators; ``learn_decays`` makes them
            meta-parameters (through a logit).
        preprocess_p: ``p`` of the log/sign gradient preprocessing.
        output_scale: factor on the step (as the faithful variant's 0.1).
        init: ``descent`` (untrained rule = Adam at ``init_lr``) or ``random``.
        init_lr: the lr of the untrained rule under ``init="descent"``.
        eps: added to the bias-corrected second moment; eps1: added to ``g^2`` (Adafactor).
        second_order: keep the incoming gradients in the graph (default: detach them).
        check_finite: raise on NaN/Inf gradients (one device sync per step).
        chunk_size, compile, network_precision: how the coordinate network is evaluated
            (:mod:`.coordinate_chunks`): coordinates per chunk, ``torch.compile`` for steps
            without autograd, and ``fp32`` or ``bf16`` matrix products.
        activation: the coordinate network's hidden activation, ``tanh`` or ``relu``.
    """

    variant = "scalable"

    def __init__(
        self,
        hidden_size: int = 20,
        num_layers: int = 2,
        mlp_hidden: int = 16,
        betas: tuple[float, float] = (0.9, 0.999),
        learn_decays: bool = True,
        preprocess_p: float = 10.0,
        output_scale: float = 0.1,
        eps: float = 1e-8,
        eps1: float = 1e-30,
        second_order: bool = False,
        check_finite: bool = True,
        init: str = "descent",
        init_lr: float = 1e-3,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        compile: bool = False,
        network_precision: str = "fp32",
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        check_init(init, init_lr)
        self.activation = checks.choose("activation", activation, tuple(ACTIVATIONS))
        self.chunk_size = check_chunking(chunk_size, network_precision, "ScalableLSTMRule")
        self.compile, self.network_precision = bool(compile), network_precision
        self._compiled = CompiledKernels()
        if hidden_size < 1 or num_layers < 1 or mlp_hidden < 1:
            raise ValueError(
                f"ScalableLSTMRule needs positive sizes, got hidden_size={hidden_size}, "
                f"num_layers={num_layers}, mlp_hidden={mlp_hidden}"
            )
        if not all(0.0 < b < 1.0 for b in betas):
            raise ValueError(f"ScalableLSTMRule betas must lie in (0, 1), got {tuple(betas)}")
        self.hidden_size, self.num_layers, self.mlp_hidden = hidden_size, num_layers, mlp_hidden
        self.preprocess_p, self.output_scale = float(preprocess_p), float(output_scale)
        self.eps, self.eps1 = float(eps), float(eps1)
        self.second_order, self.check_finite = second_order, check_finite
        logits = torch.tensor([_logit(betas[0]), _logit(betas[1])])
        if learn_decays:
            self.decay_logits = nn.Parameter(logits)
        else:
            self.register_buffer("decay_logits", logits)
        self.cells = nn.ModuleList(
            nn.LSTMCell(TENSOR_FEATURES if i == 0 else hidden_size, hidden_size) for i in range(num_layers)
        )
        self.context_bias = nn.Linear(hidden_size, mlp_hidden)
        self.context_scale = nn.Linear(hidden_size, 1)
        self.coord_in = nn.Linear(COORD_FEATURES, mlp_hidden)
        self.coord_out = nn.Linear(mlp_hidden, 1)
        self.init_mode = init
        if init == "descent":
            for weight in (self.coord_out.weight, self.coord_out.bias, self.context_scale.weight):
                nn.init.zeros_(weight)
            nn.init.constant_(self.context_scale.bias, math.log(init_lr / output_scale))
            self.nominal = nn.Parameter(torch.tensor([0.0, 0.0, -1.0, 0.0]))
        else:
            self.register_buffer("nominal", torch.zeros(COORD_FEATURES))
        self._effective: dict[str, Tensor] = {}

    def _zeros(self, *shape: int, device: Any) -> Tensor:
        return torch.zeros(shape, dtype=self.coord_out.weight.dtype, device=device)

    def init(self, params: Params) -> ScalableState:
        state = {}
        for name, p in params.items():
            if p.dim() >= 2:
                rows, cols = p.shape[0], math.prod(p.shape[1:])
                v: Any = (self._zeros(rows, device=p.device), self._zeros(cols, device=p.device))
            else:
                v = self._zeros(*p.shape, device=p.device)
            context = [
                (self._zeros(self.hidden_size, device=p.device), self._zeros(self.hidden_size, device=p.device))
                for _ in range(self.num_layers)
            ]
            state[name] = ScalableSlot(0, self._zeros(*p.shape, device=p.device), v, context)
        return state

    def _second_moment(self, g2: Tensor, v: Any, beta2: Tensor) -> tuple[Any, Tensor]:
        """The new accumulator and the (not yet bias-corrected) estimate of ``E[g^2]``."""
        if g2.dim() < 2:
            v = beta2 * v + (1 - beta2) * g2
            return v, v
        row, col = v
        flat = g2.reshape(g2.shape[0], -1)
        row = beta2 * row + (1 - beta2) * flat.mean(1)
        col = beta2 * col + (1 - beta2) * flat.mean(0)
        estimate = (row[:, None] * col[None, :] / row.mean()).reshape(g2.shape)
        return (row, col), estimate

    def update(
        self, params: Params, grads: Params, state: ScalableState, step: int, loss: Tensor | None = None
    ) -> tuple[Params, ScalableState]:
        if grads and self._fused(list(params.values()) + list(grads.values())):
            return self._update_fused(params, grads, state)
        check_grads(params, grads, self.check_finite)
        new, new_state = dict(params), dict(state)
        if not grads:
            return new, new_state
        dtype = self.coord_out.weight.dtype
        beta1, beta2 = torch.sigmoid(self.decay_logits).unbind()
        names = list(grads)
        columns, stats, accumulators = [], [], []
        for name in names:
            g = grads[name] if self.second_order else grads[name].detach()
            g = g.to(dtype)
            slot = state[name]
            t = slot.step + 1
            m = beta1 * slot.m + (1 - beta1) * g
            v, estimate = self._second_moment(g * g + self.eps1, slot.v, beta2)
            inv = torch.rsqrt(estimate / (1 - beta2**t) + self.eps)
            flat = (g.reshape(-1), m.reshape(-1), inv.reshape(-1))
            debias = 1 - beta1**t
            # One row of (mean, summed squared deviations) per chunk, checkpointed like the
            # network so that the features are not kept for the backward pass either.
            rows = map_chunks(partial(_moment_row, debias=debias, p=self.preprocess_p), flat, self.chunk_size)
            moments = Moments()
            for row, (start, stop) in zip(rows, spans(g.numel(), self.chunk_size)):
                moments.add(row[:COORD_FEATURES], row[COORD_FEATURES:], stop - start)
            stats.append(self._tensor_summary(moments.mean, moments.variance(), g))
            columns.append((flat, debias))
            accumulators.append((t, m, v))
        context, biases, scales = self._context(stats, state, names)
        for i, name in enumerate(names):
            p = params[name]
            (g, m, inv), debias = columns[i]
            chunk = partial(
                _scalable_chunk, debias=debias, p=self.preprocess_p, w_in=self.coord_in.weight, b_in=biases[i],
                w_out=self.coord_out.weight, b_out=self.coord_out.bias, nominal=self.nominal, scale=scales[i],
                activation=self.activation, precision=self.network_precision,
            )
            stepped = map_chunks(chunk, (g, m, inv, p.reshape(-1)), self.chunk_size)
            new[name] = stepped.reshape(p.shape)
            t, m, v = accumulators[i]
            new_state[name] = ScalableSlot(t, m, v, [context[layer][i] for layer in range(self.num_layers)])
            record_effective_lr(self._effective, name, new[name] - p, grads[name])
        return new, new_state

    def _tensor_summary(self, mean: Tensor, variance: Tensor, g: Tensor) -> Tensor:
        """The per-tensor LSTM's input: feature means, spreads and the tensor's log size."""
        size = torch.full((1,), math.log(g.numel()) / 10, dtype=mean.dtype, device=mean.device)
        return torch.cat([mean, torch.sqrt(variance + 1e-8), size])

    def _context(self, stats: list, state: ScalableState, names: list) -> tuple[list, Tensor, Tensor]:
        """One step of the per-tensor LSTM over every tensor at once: its new states, and each
        tensor's first-layer bias and step scale."""
        h_in = torch.stack(stats)
        context: list[list[tuple[Tensor, Tensor]]] = []
        for layer, cell in enumerate(self.cells):
            h = torch.stack([state[n].context[layer][0] for n in names])
            c = torch.stack([state[n].context[layer][1] for n in names])
            h, c = lstm_cell(cell, h_in, (h, c))
            context.append(list(zip(h.unbind(), c.unbind())))
            h_in = h
        # The tensor's context enters the coordinate network as a bias: folded into the first
        # layer's, it costs nothing per coordinate.
        biases = self.context_bias(h_in) + self.coord_in.bias
        scales = torch.exp(self.context_scale(h_in).squeeze(-1)) * self.output_scale
        return context, biases, scales

    def _fused(self, tensors: list) -> bool:
        """Whether this step runs the compiled kernels: ``compile=True``, no autograd, plain
        tensors."""
        return self.compile and not torch.is_grad_enabled() and plain_values(tensors)

    def _update_fused(self, params: Params, grads: Params, state: ScalableState) -> tuple[Params, ScalableState]:
        """The same step as the eager path in two compiled passes per tensor, each reading the
        tensor's arrays once: one makes the new accumulators and the feature statistics, the
        other the new weights (the second moment's estimate, the features and the network are
        recomputed inside it instead of stored). The kernels write the network out unit by unit,
        which vectorises across coordinates; finiteness and the effective lr come out of the
        same passes."""
        check_grads(params, grads, check_finite=False)
        dtype = self.coord_out.weight.dtype
        beta1, beta2 = torch.sigmoid(self.decay_logits).unbind()
        names = list(grads)
        prepared, stats, flags = [], [], []
        for name in names:
            g, slot = grads[name].to(dtype), state[name]
            t = slot.step + 1
            constants = (beta1, beta2, 1 - beta1**t, 1 - beta2**t, self.eps1, self.eps, self.preprocess_p)
            if g.dim() < 2:
                m, v, mean, squares, finite, g_abs = self._compiled(_vector_prepare)(g, slot.m, slot.v, *constants)
            else:
                rows = g.reshape(g.shape[0], -1)
                m, row, col, mean, squares, finite, g_abs = self._compiled(_matrix_prepare)(
                    rows, slot.m.reshape(rows.shape), *slot.v, *constants)
                m, v = m.reshape(g.shape), (row, col)
            stats.append(self._tensor_summary(mean, squares / g.numel(), g))
            prepared.append((g, t, m, v, constants, g_abs))
            flags.append(finite)
        if self.check_finite and not bool(torch.stack(flags).all()):
            bad = next(n for n, ok in zip(names, flags) if not bool(ok))
            raise ValueError(f"gradient of {bad!r} has non-finite values (NaN or Inf)")
        context, biases, scales = self._context(stats, state, names)
        new, new_state = dict(params), dict(state)
        for i, name in enumerate(names):
            p = params[name]
            g, t, m, v, constants, g_abs = prepared[i]
            network = (self.coord_in.weight, biases[i].clone(), self.coord_out.weight, self.coord_out.bias,
                       self.nominal, scales[i].clone(), self.activation)
            if g.dim() < 2:
                stepped, delta_abs = self._compiled(_vector_apply)(g, m, v, p, *constants[2:], *network)
            else:
                rows = g.reshape(g.shape[0], -1)
                stepped, delta_abs = self._compiled(_matrix_apply)(
                    rows, m.reshape(rows.shape), *v, p.reshape(rows.shape), *constants[2:], *network)
            new[name] = stepped.reshape(p.shape)
            new_state[name] = ScalableSlot(t, m, v, [context[layer][i] for layer in range(self.num_layers)])
            self._effective[name] = delta_abs / g_abs
        return new, new_state

    def get_learned_lr(self) -> dict[str, float]:
        """Effective learning rate per tensor of the last update: ``mean|delta| / mean|grad|``
        (the SGD lr that would move the tensor as far); empty before the first update."""
        return records_to_floats(self._effective)


def _coordinate_features(g: Tensor, m: Tensor, inv: Tensor, debias: Tensor, p: float) -> Tensor:
    """The 4 features of each coordinate of a flat chunk: ``(log/sign g [2], m^ r, g r)``."""
    return torch.cat(
        [log_sign_preprocess(g, p), (m / debias * inv).unsqueeze(1), (g * inv).unsqueeze(1)], dim=1
    )


def _moment_row(g: Tensor, m: Tensor, inv: Tensor, debias: Tensor, p: float) -> Tensor:
    """``(1, 8)``: per-feature mean and summed squared deviations of one chunk's features."""
    x = _coordinate_features(g, m, inv, debias, p)
    mean = x.mean(0)
    return torch.cat([mean, (x - mean).square().sum(0)]).unsqueeze(0)


def _scalable_chunk(g: Tensor, m: Tensor, inv: Tensor, param: Tensor, debias: Tensor, p: float, w_in: Tensor,
                    b_in: Tensor, w_out: Tensor, b_out: Tensor, nominal: Tensor, scale: Tensor, activation: str,
                    precision: str) -> Tensor:
    """The new values of one chunk of a tensor's coordinates."""
    x = _coordinate_features(g, m, inv, debias, p)
    hidden = ACTIVATIONS[activation](linear(x, w_in, b_in, precision))
    y = linear(hidden, w_out, b_out, precision).squeeze(-1) + x @ nominal
    return param + (scale * y).to(param.dtype)



def _feature_columns(g: Tensor, m: Tensor, inv: Tensor, debias: Tensor, p: float) -> tuple[Tensor, ...]:
    """:func:`_coordinate_features` as four arrays of ``g``'s shape (what a fused kernel vectorises)."""
    return (*log_sign_clamped(g, p), m / debias * inv, g * inv)


def _column_statistics(columns: tuple, g: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    means = [c.mean() for c in columns]
    squares = [(c - mean).square().sum() for c, mean in zip(columns, means)]
    return torch.stack(means), torch.stack(squares), torch.isfinite(g).all(), g.abs().sum()


def _unit_network(x: tuple, param: Tensor, w_in: Tensor, b_in: Tensor, w_out: Tensor, b_out: Tensor,
                  nominal: Tensor, scale: Tensor, activation: str) -> tuple[Tensor, Tensor]:
    """:func:`_scalable_chunk`'s network written unit by unit; the new values and ``sum|delta|``."""
    y = b_out[0] + sum(x[k] * nominal[k] for k in range(COORD_FEATURES))
    for unit in range(w_in.shape[0]):
        pre = b_in[unit] + sum(x[k] * w_in[unit, k] for k in range(COORD_FEATURES))
        y = y + w_out[0, unit] * ACTIVATIONS[activation](pre)
    delta = (scale * y).to(param.dtype)
    return param + delta, delta.abs().sum()


def _vector_prepare(g, m_old, v_old, beta1, beta2, debias1, debias2, eps1, eps, p):
    m = beta1 * m_old + (1 - beta1) * g
    v = beta2 * v_old + (1 - beta2) * (g * g + eps1)
    inv = torch.rsqrt(v / debias2 + eps)
    return (m, v, *_column_statistics(_feature_columns(g, m, inv, debias1, p), g))


def _factored_inverse(row: Tensor, col: Tensor, debias2: Tensor, eps: float) -> Tensor:
    return torch.rsqrt(row[:, None] * col[None, :] / row.mean() / debias2 + eps)


def _matrix_prepare(g, m_old, row_old, col_old, beta1, beta2, debias1, debias2, eps1, eps, p):
    m = beta1 * m_old + (1 - beta1) * g
    squares = g * g + eps1
    row = beta2 * row_old + (1 - beta2) * squares.mean(1)
    col = beta2 * col_old + (1 - beta2) * squares.mean(0)
    inv = _factored_inverse(row, col, debias2, eps)
    return (m, row, col, *_column_statistics(_feature_columns(g, m, inv, debias1, p), g))


def _vector_apply(g, m, v, param, debias1, debias2, eps1, eps, p, *network):
    inv = torch.rsqrt(v / debias2 + eps)
    return _unit_network(_feature_columns(g, m, inv, debias1, p), param, *network)


def _matrix_apply(g, m, row, col, param, debias1, debias2, eps1, eps, p, *network):
    inv = _factored_inverse(row, col, debias2, eps)
    return _unit_network(_feature_columns(g, m, inv, debias1, p), param, *network)
