"""Mixed precision for the model's forward passes: ``fp32`` (none), ``bf16`` or ``fp16``.

Only the network's forward passes run under ``torch.autocast``; everything else stays float32:
the losses (outputs are cast back to float32 before the loss), batch-norm statistics (the
lowered forward normalises in float32, see :mod:`.functional_model`), the update rules with
their learned learning rates and learned-optimizer states (they run outside autocast), and
the meta-gradients, which accumulate in the float32 ``.grad`` of float32 parameters.

``fp16`` has five bits of exponent, so small gradients underflow to zero. Losses are scaled
before differentiation and gradients unscaled after, in float32: the outer loss by a
``torch.amp.GradScaler`` (whose dynamic scale halves when a step overflows, and that step is
skipped), and every inner loss by the same current scale, so the inner gradients, which the
meta-gradient differentiates through, are kept from underflowing the same way.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

import torch
from torch import Tensor

from ..registry import Registry
from .functional_model import LOWERINGS


@dataclass(frozen=True)
class Precision:
    name: str
    dtype: torch.dtype | None  # the autocast dtype; None: plain float32
    scaled: bool = False  # losses are scaled (fp16)
    # The CPU forms of the lowered forward that are faster at this precision (functional_model).
    lowerings: frozenset = LOWERINGS

    def autocast(self, device: torch.device) -> ContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def wrap(self, forward: Callable[..., Tensor], device: torch.device) -> Callable[..., Tensor]:
        """``forward`` run under autocast, its output back in float32 (for the loss)."""
        if self.dtype is None:
            return forward

        def run(*args: Any) -> Tensor:
            with self.autocast(device):
                out = forward(*args)
            return out.float() if out.is_floating_point() else out

        return run

    def wrap_batched(self, forward: Callable[[dict, Tensor], Tensor], device: torch.device) -> Callable[..., Tensor]:
        """:meth:`wrap` for a forward run inside ``torch.func.vmap``: the weights and the input
        are cast explicitly, because there autocast leaves an op at float32 when both its
        operands are batched (seen: the query pass after vmapped inner steps ran in float32)."""
        if self.dtype is None:
            return forward
        dtype = self.dtype

        def run(params: dict, x: Tensor) -> Tensor:
            cast = {n: p.to(dtype) if p.is_floating_point() else p for n, p in params.items()}
            with self.autocast(device):
                out = forward(cast, x.to(dtype) if x.is_floating_point() else x)
            return out.float() if out.is_floating_point() else out

        return run

    def scaler(self, device: torch.device) -> "torch.amp.GradScaler | None":
        return torch.amp.GradScaler(device.type) if self.scaled else None


def lower_scale_after_overflow(scaler: "torch.amp.GradScaler | None") -> bool:
    """After non-finite losses in a step: when the loss scale can explain them (an inner
    gradient overflowed float16 at a scale above 1), lower the scale as an overflowing outer
    step does and say the step may be skipped; otherwise (no scaler, or a scale already at or
    below 1, where scaling overflows nothing) they are real and the caller raises."""
    if scaler is None or scaler.get_scale() <= 1.0:
        return False
    if scaler._scale is None:
        # Every task overflowed before the first scaled backward: the scaler makes its scale
        # tensor lazily, on its first scale(), and update() refuses to run before that.
        scaler.scale(torch.zeros((), device=scaler._device))
    scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
    return True


PRECISIONS: Registry[Precision] = Registry("precision")
PRECISIONS.register("fp32", Precision("fp32", None))
PRECISIONS.register("bf16", Precision("bf16", torch.bfloat16))
PRECISIONS.register("fp16", Precision("fp16", torch.float16, scaled=True))
FP32 = PRECISIONS["fp32"]

_warned_slow_bf16 = False


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere it is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def resolve_precision(name: str, device: torch.device | str) -> Precision:
    """The precision ``name`` on ``device``; a one-line error for what cannot work there, a
    warning (once per process) for what works but slowly."""
    global _warned_slow_bf16
    precision = PRECISIONS[name]
    device = torch.device(device)
    if precision.name == "fp16" and device.type == "cpu":
        raise ValueError("precision 'fp16' needs a CUDA device: on the CPU float16 has no fast kernels "
                         "(use 'bf16' or 'fp32')")
    if precision.name == "bf16" and device.type == "cpu" and not native_cpu_bf16() and not _warned_slow_bf16:
        _warned_slow_bf16 = True
        warnings.warn("precision 'bf16': this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 is "
                      "emulated and runs slower than fp32; use precision 'fp32' here", stacklevel=3)
    return precision
