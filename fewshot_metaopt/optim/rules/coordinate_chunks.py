"""Running a coordinatewise network over millions of coordinates at a bounded cost.

The learned rules (scalable LSTM, L2O, the combiner) apply one small MLP to every coordinate.
Evaluated on a whole 10M-parameter tensor at once, every hidden activation is a
``(coordinates, width)`` matrix of hundreds of MiB: each elementwise pass goes to main memory,
and under autograd all of them are kept until the meta-gradient. Here the coordinates go
through in chunks of ``chunk_size`` rows (a few MiB of activations, which stay in cache), the
per-tensor terms of the first layer are folded into its bias (one matrix product per chunk
instead of a product over constant columns), and:

* under autograd, a tensor that spans more than one chunk runs each chunk under activation
  checkpointing: only the chunk's inputs are kept, its activations are recomputed in the
  backward pass, so meta-training a 10M-parameter model through a long window keeps a few
  floats per coordinate per step instead of ``~2 * width``;
* without autograd (the step of a meta-trained rule), ``compile=True`` fuses a chunk's
  features, network and output into one ``torch.compile`` kernel where that measurably wins
  (``benchmarks/learned_step_cost.py``);
* ``network_precision="bf16"`` runs the matrix products in bfloat16 with float32 results
  (the rule, its state and the per-coordinate features stay float32), which pays on CPUs with
  AVX512-BF16 or AMX and on GPUs.

Per-tensor statistics that need every coordinate (the scalable LSTM's feature mean and
spread, L2O's feature scale) are merged across chunks with Chan et al.'s pairwise update, so
a chunked tensor gives the statistics of the whole tensor.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ... import checks

DEFAULT_CHUNK_SIZE = 1 << 16
NETWORK_PRECISIONS: Dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}

_functorch = torch._C._functorch


def check_chunking(chunk_size: int, network_precision: str, owner: str) -> int:
    checks.choose("network_precision", network_precision, tuple(NETWORK_PRECISIONS))
    return checks.integer("chunk_size", chunk_size, 1, owner=owner)


def spans(n: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of at most ``size`` covering ``range(n)`` (one empty range for ``n = 0``)."""
    return [(start, min(start + size, n)) for start in range(0, n, size)] or [(0, 0)]


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, precision: str) -> Tensor:
    """``x @ weight.T + bias``, the product in ``precision`` and the result in ``x``'s dtype."""
    dtype = NETWORK_PRECISIONS[precision]
    if dtype is None or dtype == x.dtype:
        return F.linear(x, weight, bias)
    low = F.linear(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))
    return low.to(x.dtype)


def plain_values(tensors: Sequence[Tensor]) -> bool:
    """True when none of ``tensors`` is a ``meta`` tensor or lives inside a ``torch.func``
    transform: only then may a compiled kernel see them."""
    return all(t.device.type != "meta" and not _functorch.is_functorch_wrapped_tensor(t) for t in tensors)


def map_chunks(fn: Callable[..., Tensor], columns: Sequence[Tensor], chunk_size: int) -> Tensor:
    """``fn(*column_chunks)`` over row chunks of the equally long ``columns``, results
    concatenated along the first axis. Under autograd, with more than one chunk, each chunk is
    checkpointed (module docstring); tensors ``fn`` closes over (the network's weights) get
    their gradients through the recomputation too."""
    n = columns[0].shape[0]
    ranges = spans(n, chunk_size)
    if len(ranges) == 1:
        return fn(*columns)
    out = []
    for start, stop in ranges:
        pieces = [c[start:stop] for c in columns]
        if torch.is_grad_enabled():
            out.append(checkpoint(fn, *pieces, use_reentrant=False))
        else:
            out.append(fn(*pieces))
    return torch.cat(out)


class Moments:
    """Count, mean and summed squared deviations per feature, merged chunk by chunk (Chan,
    Golub & LeVeque 1979), so the spread of a tensor split into chunks equals the spread of
    the whole."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.squares: Tensor | None = None

    def add(self, mean: Tensor, squares: Tensor, n: int) -> None:
        """Merge in a chunk of ``n`` rows with per-feature ``mean`` and summed squared deviations."""
        if self.mean is None:
            self.count, self.mean, self.squares = n, mean, squares
            return
        total = self.count + n
        delta = mean - self.mean
        self.squares = self.squares + squares + delta.square() * (self.count * n / total)
        self.mean = self.mean + delta * (n / total)
        self.count = total

    def variance(self) -> Tensor:
        return self.squares / self.count


# Each network width, activation, tensor rank and thread count is a graph of its own (the
# network is written out unit by unit); a process that compares many configurations must not
# pass dynamo's default of 8 and fall back to eager without a word.
RECOMPILE_LIMIT = 64


class CompiledKernels:
    """``torch.compile``d versions of a rule's kernels, made on first use (compiling takes
    seconds, so only rules with ``compile=True`` pay it). Dynamic shapes: tensors differ.
    Arguments should be small contiguous tensors of their own (not views), or dynamo guards
    on their storage offsets and compiles again for every tensor of a model."""

    def __init__(self) -> None:
        self._compiled: Dict[Callable, Callable] = {}

    def __call__(self, fn: Callable) -> Callable:
        if fn not in self._compiled:
            compiled = torch.compile(fn, dynamic=True)

            def run(*args: Any) -> Any:
                with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                    return compiled(*args)

            self._compiled[fn] = run
        return self._compiled[fn]
