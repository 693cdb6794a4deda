"""A network's forward pass as a function of a parameter dict, lowered once to functional ops.

The functional engine calls the network with every task's fast weights. For an
``nn.Sequential`` (nested ones included) each layer is turned into a functional op once, and
on the CPU some ops take a faster form of the same function (each kept because it measured
faster; ``docs/engines.md`` has the figures, and what was tried and dropped):

* Activations are kept in channels_last memory order. Max pooling and batch norm run several
  times faster on it with the CPU kernels of ATen, and oneDNN convolutions take it natively.
* A convolution over a single input channel (Omniglot's first layer) is one matrix product over
  unfolded 3x3 patches (im2col). The convolution kernels are slowest exactly there, mostly in
  the weight gradient. Its output is made contiguous for the batch norm that follows (see
  :func:`_unfolded_conv`).
* ReLU followed by max pooling runs as pooling followed by ReLU: ``relu(max(x)) == max(relu(x))``
  exactly, and the gradient is the same too (the pooled index is the same whenever the window's
  maximum is positive, and both orders give zero otherwise), on a quarter of the elements.

Batch norm always normalises with the statistics of the batch it sees unless the layer is in
eval mode with running statistics (in float32 under mixed precision), and never writes its buffers: the same outputs as the higher
engine, whose buffers are throw-away copies. A layer the lowering does not know is called as it
is when it holds no tensors, else through ``torch.func.functional_call`` with copies of its
buffers; a model that is not a plain ``nn.Sequential`` (or has hooks) is called whole that way.
A :class:`~fewshot_metaopt.models.Residual` inside a Sequential (ResNet-12, WRN-28-10) is
lowered branch by branch, so its layers take the forms above too (batch norm included, which
matters under vmap, see :func:`functional_forward`).
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..models import Residual

Params = Mapping[str, Tensor]
Forward = Callable[[Params, Tensor], Tensor]
REDUCED = (torch.bfloat16, torch.float16)
# The CPU forms of the module docstring, by name; a forward may leave any of them out.
LOWERINGS = frozenset({"channels_last", "im2col", "pool_before_relu"})
Op = Callable[[Params, Tensor], Tensor]


def functional_forward(model: nn.Module, for_vmap: bool = False,
                       lowerings: frozenset[str] = LOWERINGS) -> Forward:
    """``forward(params, x)``: ``model(x)`` with its parameters replaced by ``params`` (a dict
    over ``model.named_parameters()`` names).

    ``for_vmap=True`` gives the form to run under ``torch.func.vmap`` inside ``torch.func.grad``:
    plain convolutions (no memory-format tricks), and batch norm written out in elementary ops,
    because the batching rule of ``native_batch_norm_backward`` gives wrong second derivatives
    (pytorch/functorch#534; measured here: errors of 1e-3 in float64 meta-gradients).
    ``lowerings`` names the CPU forms to use (all by default; see :data:`LOWERINGS`).
    """
    names = {id(p): n for n, p in model.named_parameters()}
    leaves = _sequential_leaves(model) if not _has_hooks(model) else None
    if leaves is None:
        return _called_whole(model)
    return _chained(leaves, names, for_vmap, lowerings)


def _chained(leaves: list[nn.Module], names: Mapping[int, str], for_vmap: bool, lowerings: frozenset[str]) -> Op:
    """The layers ``leaves``, called in order, as one op."""
    ops: list[Op] = []
    i = 0
    while i < len(leaves):
        module = leaves[i]
        follower = leaves[i + 1] if i + 1 < len(leaves) else None
        if ("pool_before_relu" in lowerings and type(module) is nn.ReLU and type(follower) is nn.MaxPool2d
                and not follower.return_indices):
            ops += [_max_pool(follower), _relu]
            i += 2
            continue
        ops.append(_lowered(module, names, for_vmap, lowerings))
        i += 1

    def forward(params: Params, x: Tensor) -> Tensor:
        for op in ops:
            x = op(params, x)
        return x

    return forward


def _has_hooks(module: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def _is_plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _sequential_leaves(module: nn.Module) -> list[nn.Module] | None:
    """The layers of a plain (possibly nested) Sequential in call order; ``None`` otherwise."""
    if not _is_plain_sequential(module):
        return None
    leaves: list[nn.Module] = []
    for child in module:  # not children(): that skips a module the Sequential calls twice
        leaves += _sequential_leaves(child) if _is_plain_sequential(child) else [child]
    return leaves


def _called_whole(model: nn.Module) -> Forward:
    def forward(params: Params, x: Tensor) -> Tensor:
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        return torch.func.functional_call(model, {**params, **buffers}, (x,))

    return forward


def _relu(params: Params, x: Tensor) -> Tensor:
    return F.relu(x)


def _max_pool(m: nn.MaxPool2d) -> Op:
    def op(params: Params, x: Tensor) -> Tensor:
        return F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)

    return op


def _param(module: nn.Module, local: str, names: Mapping[int, str]) -> str | None:
    """The model-level name of ``module.<local>`` (tied weights have one name), or ``None``."""
    p = getattr(module, local, None)
    return None if p is None else names[id(p)]


def _lowered(module: nn.Module, names: Mapping[int, str], for_vmap: bool, lowerings: frozenset[str]) -> Op:
    if type(module) is Residual:
        body, shortcut = (_chained(_sequential_leaves(branch) or [branch], names, for_vmap, lowerings)
                          for branch in (module.body, module.shortcut))
        return lambda params, x: body(params, x) + shortcut(params, x)
    if type(module) is nn.Conv2d:
        return _conv2d(module, names, frozenset() if for_vmap else lowerings)
    if type(module) is nn.Linear:
        w, b = _param(module, "weight", names), _param(module, "bias", names)
        return lambda params, x: F.linear(x, params[w], None if b is None else params[b])
    if isinstance(module, _BatchNorm) and type(module) is not nn.SyncBatchNorm:
        return _batch_norm(module, names, for_vmap)
    if type(module) is nn.Flatten:
        return lambda params, x: x.flatten(module.start_dim, module.end_dim)
    if not any(True for _ in module.parameters()) and not any(True for _ in module.buffers()):
        return lambda params, x: module(x)
    local = {local: names[id(p)] for local, p in module.named_parameters()}

    def called(params: Params, x: Tensor) -> Tensor:
        tensors = {n: b.clone() for n, b in module.named_buffers()}
        tensors.update({n: params[full] for n, full in local.items()})
        return torch.func.functional_call(module, tensors, (x,))

    return called


def _conv2d(m: nn.Conv2d, names: Mapping[int, str], lowerings: frozenset[str]) -> Op:
    w, b = _param(m, "weight", names), _param(m, "bias", names)
    channels_last = "channels_last" in lowerings
    im2col = (
        "im2col" in lowerings
        and m.in_channels == 1
        and m.groups == 1
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
    )

    def op(params: Params, x: Tensor) -> Tensor:
        weight, bias = params[w], None if b is None else params[b]
        if x.device.type != "cpu" or x.dim() != 4:
            return m._conv_forward(x, weight, bias)
        if im2col:
            return _unfolded_conv(x, weight, bias, m)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return m._conv_forward(x, weight, bias)

    return op


def _unfolded_conv(x: Tensor, weight: Tensor, bias: Tensor | None, m: nn.Conv2d) -> Tensor:
    """``conv2d`` as ``patches @ weight^T``, in channels_last order. The weight is laid out
    ``(patch, out)`` before the product so that its gradient is the fast ``patches^T @ grad``
    (the transposed layout makes the gradient a skinny product that runs ~8x slower)."""
    n, _, height, width = x.shape
    kh, kw = m.kernel_size
    out_h = (height + 2 * m.padding[0] - m.dilation[0] * (kh - 1) - 1) // m.stride[0] + 1
    out_w = (width + 2 * m.padding[1] - m.dilation[1] * (kw - 1) - 1) // m.stride[1] + 1
    patches = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)  # (n, kh*kw, L)
    patches = patches.transpose(1, 2).reshape(n * out_h * out_w, kh * kw)
    kernel = weight.reshape(weight.shape[0], -1).t().contiguous()
    out = patches @ kernel if bias is None else torch.addmm(bias, patches, kernel)
    # Returned in contiguous (NCHW) order, not as the channels_last view the product gives: the
    # batch norm after the first layer, on Omniglot's white backgrounds (channels whose mean is
    # large against their spread), loses digits in ATen's channels_last CPU kernel; measured on
    # 20-way 5-step MAML: a float32 meta-gradient at cosine 0.54 to float64, 1.0000 contiguous.
    return out.view(n, out_h, out_w, weight.shape[0]).permute(0, 3, 1, 2).contiguous()


def _batch_norm(m: _BatchNorm, names: Mapping[int, str], decomposed: bool) -> Op:
    w, b = _param(m, "weight", names), _param(m, "bias", names)

    def normalise(params: Params, x: Tensor) -> Tensor:
        batch_stats = m.training or m.running_mean is None
        mean = None if batch_stats else m.running_mean
        var = None if batch_stats else m.running_var
        weight, bias = (None if w is None else params[w]), (None if b is None else params[b])
        if decomposed:
            return _elementary_batch_norm(x, mean, var, weight, bias, m.eps)
        return F.batch_norm(x, mean, var, weight, bias, batch_stats, 0.0, m.eps)

    def op(params: Params, x: Tensor) -> Tensor:
        if x.dtype not in REDUCED:
            return normalise(params, x)
        # Under mixed precision the statistics are taken in float32 (bf16 keeps 8 bits of
        # mantissa: a variance of its activations loses what the meta-gradient reads back);
        # the output goes on in the activations' own dtype.
        with torch.autocast(x.device.type, enabled=False):
            full = {n: params[n].float() for n in (w, b) if n is not None}
            return normalise({**params, **full}, x.float()).to(x.dtype)

    return op


def _elementary_batch_norm(
    x: Tensor, mean: Tensor | None, var: Tensor | None, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """``F.batch_norm`` without running-statistics updates, in ops that vmap differentiates
    correctly to any order; ``mean``/``var`` ``None`` means the batch's own statistics."""
    dims = [0, *range(2, x.dim())]
    shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
    if mean is None or var is None:
        var, mean = torch.var_mean(x, dims, correction=0, keepdim=True)
    else:
        mean, var = mean.view(shape), var.view(shape)
    y = (x - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.view(shape)
    if bias is not None:
        y = y + bias.view(shape)
    return y
