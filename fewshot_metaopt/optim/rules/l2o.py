"""A per-coordinate MLP learned optimizer in the family of google's ``learned_optimization``
``MLPLOpt`` (Metz et al. 2019, "Understanding and correcting pathologies in the training of
learned optimizers", https://arxiv.org/abs/1810.10180), as a pure update rule.

For each tensor with gradient ``g`` and value ``theta`` (one row per coordinate ``i``)::

    m_k = beta_k m_k + (1 - beta_k) g         momenta, beta_k in decays (0.5, 0.9, 0.99)
    v   = rho v + (1 - rho) g^2                RMS accumulator, rho = 0.999
    f_i = (g_i, theta_i, m_1i, m_2i, m_3i, sqrt(v_i), g_i / sqrt(v_i + eps),
           m_1i / sqrt(v_i + eps), m_2i / sqrt(v_i + eps), m_3i / sqrt(v_i + eps))
    f   = f / sqrt(norm_eps + mean_i f_i^2)    second-moment normalisation, per tensor and feature
    z_i = (f_i, tanh(step / tau - 1) for tau in timescales)     step-count embedding
    (d_i, s_i) = MLP(z_i) + (n . f_i, 0)       hidden_layers x hidden_size, ReLU, 2 outputs
    theta_i' = theta_i - d_i * exp(s_i * exp_mult) * step_mult

Initialisation (``init``). ``descent`` (default) starts the MLP's last layer at zero and the
nominal ``n`` on the normalised Adam direction ``m_2 / sqrt(v + eps)`` (momentum 0.9): the
untrained rule steps ``step_mult`` times that direction scaled to unit RMS per tensor, and
meta-training learns corrections. ``random`` keeps PyTorch's random initialisation and ``n = 0``
(not learned), as ``MLPLOpt``.

The MLP's weights are shared by every coordinate of every tensor. ``exp_mult`` and
``step_mult`` default to ``MLPLOpt``'s 0.001; for the few inner steps of few-shot learning a
larger ``step_mult`` (e.g. 0.01-0.1) lets the rule move the weights before it has learned to
scale its outputs. The gradient enters with its graph by default (``second_order=True``: the
driver decides, e.g. first-order MAML detaches it); ``second_order=False`` detaches it here.

The momentum/RMS features (Adam's direction at each decay) follow ``MLPLOpt``'s inputs.

State: the momenta and the RMS accumulator, ``len(decays) + 1`` floats per coordinate (4x the
model at the defaults).
"""

from __future__ import annotations

from functools import partial
from typing import Dict, NamedTuple, Sequence, Tuple

import torch
from torch import Tensor, nn

from .base import Params, UpdateRule
from .coordinate_chunks import (
    DEFAULT_CHUNK_SIZE, CompiledKernels, check_chunking, linear, map_chunks, plain_values,
)
from .preprocess import check_grads, check_init, record_effective_lr, records_to_floats, safe_sqrt

COORD_FEATURES = 4  # gradient, parameter, RMS, RMS-normalised gradient (plus two per momentum)
NOMINAL_DECAY = 0.9


class L2OSlot(NamedTuple):
    """State of one tensor: a momentum per decay, and the RMS accumulator (all parameter-shaped)."""

    momenta: Tuple[Tensor, ...]
    v: Tensor


L2OState = Dict[str, L2OSlot]


class L2ORule(UpdateRule):
    """Per-coordinate MLP optimizer (see the module docstring).

    Args:
        hidden_size, hidden_layers: the MLP (MLPLOpt: 32, 2).
        decays: momentum decays; rms_decay: decay of the squared-gradient accumulator.
        timescales: of the ``tanh(step / tau - 1)`` step embedding.
        exp_mult, step_mult: the step is ``d * exp(s * exp_mult) * step_mult``.
        eps: inside ``1 / sqrt(v + eps)``; norm_eps: of the per-tensor normalisation.
        second_order: keep the incoming gradients in the graph (default) or detach them.
        check_finite: raise on NaN/Inf gradients (one device sync per step).
        init: ``descent`` (untrained rule = normalised Adam direction, step ``step_mult``) or
            ``random`` (MLPLOpt); ``descent`` needs 0.9 among the decays.
        chunk_size, compile, network_precision: how the network is evaluated
            (:mod:`.coordinate_chunks`); ``compile=True`` takes at most one hidden layer.
    """

    def __init__(
        self,
        hidden_size: int = 32,
        hidden_layers: int = 2,
        decays: Sequence[float] = (0.5, 0.9, 0.99),
        rms_decay: float = 0.999,
        timescales: Sequence[float] = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000),
        exp_mult: float = 0.001,
        step_mult: float = 0.001,
        eps: float = 1e-8,
        norm_eps: float = 1e-5,
        second_order: bool = True,
        check_finite: bool = True,
        init: str = "descent",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        compile: bool = False,
        network_precision: str = "fp32",
    ) -> None:
        super().__init__()
        check_init(init, step_mult, "step_mult")
        self.chunk_size = check_chunking(chunk_size, network_precision, "L2ORule")
        if compile and hidden_layers > 1:
            raise ValueError(
                f"L2ORule compile=True writes the network out unit by unit, for at most one hidden layer; "
                f"got hidden_layers={hidden_layers} (use compile=False, which runs chunked matrix products)"
            )
        self.compile, self.network_precision = bool(compile), network_precision
        self._compiled = CompiledKernels()
        if hidden_size < 1 or hidden_layers < 0:
            raise ValueError(
                f"L2ORule needs hidden_size >= 1 and hidden_layers >= 0, got {hidden_size}, {hidden_layers}"
            )
        if not all(0.0 <= b < 1.0 for b in (*decays, rms_decay)):
            raise ValueError(f"L2ORule decays must lie in [0, 1), got {tuple(decays)} and {rms_decay}")
        self.decays, self.rms_decay = tuple(float(b) for b in decays), float(rms_decay)
        self.timescales = tuple(float(t) for t in timescales)
        self.exp_mult, self.step_mult = float(exp_mult), float(step_mult)
        self.eps, self.norm_eps = float(eps), float(norm_eps)
        self.second_order, self.check_finite = second_order, check_finite
        if init == "descent" and NOMINAL_DECAY not in self.decays:
            raise ValueError(f"L2ORule init='descent' reads the momentum of decay {NOMINAL_DECAY}; decays are {self.decays}")
        self.num_features = COORD_FEATURES + 2 * len(self.decays) + len(self.timescales)
        layers: list[nn.Module] = []
        width = self.num_features
        for _ in range(hidden_layers):
            layers += [nn.Linear(width, hidden_size), nn.ReLU()]
            width = hidden_size
        layers.append(nn.Linear(width, 2))
        self.mlp = nn.Sequential(*layers)
        self.init_mode = init
        coordinate_features = COORD_FEATURES + 2 * len(self.decays)
        if init == "descent":
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)
            nominal = torch.zeros(coordinate_features)
            nominal[COORD_FEATURES + len(self.decays) + self.decays.index(NOMINAL_DECAY)] = 1.0
            self.nominal = nn.Parameter(nominal)
        else:
            self.register_buffer("nominal", torch.zeros(coordinate_features))
        self._effective: dict[str, Tensor] = {}

    def init(self, params: Params) -> L2OState:
        dtype = self.mlp[-1].weight.dtype
        zeros = lambda p: torch.zeros(p.shape, dtype=dtype, device=p.device)  # noqa: E731
        return {n: L2OSlot(tuple(zeros(p) for _ in self.decays), zeros(p)) for n, p in params.items()}

    def step_embedding(self, step: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """``tanh(step / tau - 1)`` for each timescale ``tau``."""
        taus = torch.tensor(self.timescales, dtype=dtype, device=device)
        return torch.tanh(step / taus - 1.0)

    def update(
        self, params: Params, grads: Params, state: L2OState, step: int, loss: Tensor | None = None
    ) -> tuple[Params, L2OState]:
        if grads and self._fused(list(params.values()) + list(grads.values())):
            return self._update_fused(params, grads, state, step)
        check_grads(params, grads, self.check_finite)
        new, new_state = dict(params), dict(state)
        dtype = self.mlp[-1].weight.dtype
        layers = self._folded_layers(step, dtype)
        for name, grad in grads.items():
            p, slot = params[name], state[name]
            g = (grad if self.second_order else grad.detach()).to(dtype)
            momenta = tuple(b * m + (1 - b) * g for b, m in zip(self.decays, slot.momenta))
            v = self.rms_decay * slot.v + (1 - self.rms_decay) * g * g
            columns = tuple(c.reshape(-1) for c in (g, p.to(dtype), v, *momenta))
            # Checkpointed per chunk like the network: the features are not kept for backward.
            squares = map_chunks(partial(_feature_squares, eps=self.eps), columns, self.chunk_size).sum(0)
            norm = torch.rsqrt(self.norm_eps + squares / g.numel())
            chunk = partial(_l2o_chunk, eps=self.eps, norm=norm, nominal=self.nominal, exp_mult=self.exp_mult,
                            step_mult=self.step_mult, precision=self.network_precision, layers=layers)
            delta = map_chunks(chunk, columns, self.chunk_size)
            delta = delta.reshape(p.shape).to(p.dtype)
            new[name] = p - delta
            new_state[name] = L2OSlot(momenta, v)
            record_effective_lr(self._effective, name, delta, grad)
        return new, new_state

    def _folded_layers(self, step: int, dtype: torch.dtype) -> list[Tensor]:
        """The MLP's weights and biases in order, the first layer's step-embedding columns
        folded into its bias: the embedding is the same for every coordinate."""
        linears = [layer for layer in self.mlp if isinstance(layer, nn.Linear)]
        first = linears[0]
        embedding = self.step_embedding(step, dtype, first.weight.device)
        features = self.num_features - len(self.timescales)
        tensors = [first.weight[:, :features], first.bias + first.weight[:, features:] @ embedding]
        for layer in linears[1:]:
            tensors += [layer.weight, layer.bias]
        return tensors

    def _fused(self, tensors: list) -> bool:
        """Whether this step runs the compiled kernels (``compile=True``, no autograd, plain tensors)."""
        return self.compile and not torch.is_grad_enabled() and plain_values(tensors)

    def _update_fused(self, params: Params, grads: Params, state: L2OState, step: int) -> tuple[Params, L2OState]:
        """The eager step in two compiled passes per tensor (one for the new accumulators and
        the features' scale, one for the new weights, recomputing the features instead of
        storing them), the network written out unit by unit; finiteness and the effective lr
        come out of the same passes."""
        check_grads(params, grads, check_finite=False)
        dtype = self.mlp[-1].weight.dtype
        layers = [t.contiguous() for t in self._folded_layers(step, dtype)]
        constants = (self.decays, self.rms_decay, self.eps)
        prepared, flags = [], []
        for name, grad in grads.items():
            p, slot = params[name], state[name]
            g = grad.to(dtype)
            momenta, v, squares, finite, g_abs = self._compiled(_fused_prepare)(g, p.to(dtype), slot.v, *constants,
                                                                                 *slot.momenta)
            prepared.append((name, p, g, momenta, v, torch.rsqrt(self.norm_eps + squares / g.numel()), g_abs))
            flags.append(finite)
        if self.check_finite and not bool(torch.stack(flags).all()):
            bad = next(name for (name, *_), ok in zip(prepared, flags) if not bool(ok))
            raise ValueError(f"gradient of {bad!r} has non-finite values (NaN or Inf)")
        new, new_state = dict(params), dict(state)
        for name, p, g, momenta, v, norm, g_abs in prepared:
            stepped, delta_abs = self._compiled(_fused_apply)(
                g, p, v, self.eps, norm, self.nominal, self.exp_mult, self.step_mult, len(momenta), *momenta, *layers)
            new[name] = stepped
            new_state[name] = L2OSlot(momenta, v)
            self._effective[name] = delta_abs / g_abs
        return new, new_state

    def get_learned_lr(self) -> dict[str, float]:
        """Effective learning rate per tensor of the last update: ``mean|delta| / mean|grad|``
        (the SGD lr that would move the tensor as far); empty before the first update."""
        return records_to_floats(self._effective)


def _features(g: Tensor, p: Tensor, v: Tensor, *momenta: Tensor, eps: float) -> Tensor:
    """The ``(coordinates, 4 + 2 * len(decays))`` coordinate features before scaling."""
    inv = torch.rsqrt(v + eps)
    return torch.stack([g, p, *momenta, safe_sqrt(v), g * inv, *(m * inv for m in momenta)], dim=1)


def _feature_squares(g: Tensor, p: Tensor, v: Tensor, *momenta: Tensor, eps: float) -> Tensor:
    """``(1, features)``: each feature's summed square over one chunk."""
    return _features(g, p, v, *momenta, eps=eps).square().sum(0, keepdim=True)


def _l2o_chunk(g: Tensor, p: Tensor, v: Tensor, *momenta: Tensor, eps: float, norm: Tensor, nominal: Tensor,
               exp_mult: float, step_mult: float, precision: str, layers: list) -> Tensor:
    """The step (to subtract) of one chunk of coordinates; ``layers`` alternates weights and biases."""
    f = _features(g, p, v, *momenta, eps=eps) * norm
    x = f
    for k in range(0, len(layers), 2):
        x = linear(x, layers[k], layers[k + 1], precision)
        if k + 2 < len(layers):
            x = torch.relu(x)
    direction, magnitude = x[:, 0] + f @ nominal, x[:, 1]
    return direction * torch.exp(magnitude * exp_mult) * step_mult


def _fused_prepare(g, p, v_old, decays, rms_decay, eps, *momenta_old):
    momenta = tuple(b * m + (1 - b) * g for b, m in zip(decays, momenta_old))
    v = rms_decay * v_old + (1 - rms_decay) * g * g
    inv = torch.rsqrt(v + eps)
    columns = [g, p, *momenta, torch.sqrt(v), g * inv, *(m * inv for m in momenta)]
    squares = torch.stack([c.square().sum() for c in columns])
    return momenta, v, squares, torch.isfinite(g).all(), g.abs().sum()


def _fused_apply(g, p, v, eps, norm, nominal, exp_mult, step_mult, count, *rest):
    momenta, layers = rest[:count], rest[count:]
    inv = torch.rsqrt(v + eps)
    raw = [g, p.to(g.dtype), *momenta, torch.sqrt(v), g * inv, *(m * inv for m in momenta)]
    f = [c * norm[k] for k, c in enumerate(raw)]
    direction = sum(c * nominal[k] for k, c in enumerate(f))
    if len(layers) == 2:  # no hidden layer: the readout reads the features
        weight, bias = layers
        direction = direction + bias[0] + sum(c * weight[0, k] for k, c in enumerate(f))
        magnitude = bias[1] + sum(c * weight[1, k] for k, c in enumerate(f))
    else:
        w_in, b_in, w_out, b_out = layers
        magnitude = b_out[1]
        direction = direction + b_out[0]
        for unit in range(w_in.shape[0]):
            h = torch.relu(b_in[unit] + sum(c * w_in[unit, k] for k, c in enumerate(f)))
            direction = direction + w_out[0, unit] * h
            magnitude = magnitude + w_out[1, unit] * h
    delta = (direction * torch.exp(magnitude * exp_mult) * step_mult).to(p.dtype)
    return p - delta, delta.abs().sum()
