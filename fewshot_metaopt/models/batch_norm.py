"""Batch norm for meta-learning: the ``batch_norm`` mode of conv4, ResNet-12 and WRN-28-10.

``"transductive"`` (the default, MAML's reference code): ``nn.BatchNorm2d`` without running
statistics. Every forward pass, meta-training or evaluation, normalises with the statistics of
the batch it sees, so a query example's logits depend on the other query examples of its
batch, and adaptation never writes buffers.

``"per_step"`` (MAML++, Antoniou et al. 2019, "How to train your MAML": BNRS and BNWB):
:class:`PerStepBatchNorm2d` keeps running statistics, a weight and a bias for every inner
step. While meta-training it normalises with the batch's statistics and folds them into the
running statistics of the step (momentum 0.1, as ``nn.BatchNorm2d``); a task adapted to be
scored (``learner.evaluate``, ``learner.adapt``) or a model in ``eval()`` mode normalises with
the running statistics of the step instead, so a query example's logits do not depend on the
rest of its batch. The step comes from :mod:`.inner_step`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import checks
from ..registry import Registry
from .inner_step import current_inner_step

TRANSDUCTIVE = "transductive"
PER_STEP = "per_step"
# Reduced-precision activations are normalised in float32: a variance over bf16 values loses
# what the meta-gradient reads back (the functional engine does the same for nn.BatchNorm2d).
_REDUCED = (torch.bfloat16, torch.float16)
_functorch = torch._C._functorch


class PerStepBatchNorm2d(nn.Module):
    """Batch norm over ``(N, C, H, W)`` with running statistics, weight and bias per inner step
    (MAML++'s BNRS + BNWB): rows ``0 .. inner_steps - 1`` of ``weight``, ``bias``,
    ``running_mean`` and ``running_var``, each ``(inner_steps, num_features)``.

    The support pass of inner step ``k`` and the query pass after it use row ``k``, as in
    MAML++'s code; a step past the last row (evaluating with more steps than meta-training
    took) uses the last row. The weight and bias are parameters like any other: MAML adapts
    them in the inner loop too (row ``k`` only moves at step ``k``), ANIL does not.

    The running statistics are written in place on this module's own buffers even when the
    forward pass runs on copies of them (``torch.func.functional_call`` with copied buffers,
    higher's patched modules), so that meta-training through either engine accumulates them.
    Under ``torch.func`` transforms (``vmap_tasks``) nothing can be written in place: a
    meta-training forward pass there is refused.
    """

    def __init__(self, num_features: int, inner_steps: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        owner = "PerStepBatchNorm2d"
        self.num_features = checks.integer("num_features", num_features, least=1, owner=owner)
        self.inner_steps = checks.integer("inner_steps", inner_steps, least=1, owner=owner)
        self.eps = checks.positive("eps", eps, owner=owner)
        self.momentum = checks.real("momentum", momentum, 0.0, 1.0, owner=owner)
        self.weight = nn.Parameter(torch.ones(inner_steps, num_features))
        self.bias = nn.Parameter(torch.zeros(inner_steps, num_features))
        self.register_buffer("running_mean", torch.zeros(inner_steps, num_features))
        self.register_buffer("running_var", torch.ones(inner_steps, num_features))
        self.register_buffer("num_batches_tracked", torch.zeros(inner_steps, dtype=torch.long))
        self._keep_statistics()

    def _keep_statistics(self) -> None:
        # A plain attribute, not a buffer: functional_call and higher swap or copy buffers for
        # the length of a call, but share plain attributes, so the statistics written through
        # this reference land on the module itself. It follows the buffers when they are
        # replaced (``to()``, ``load_state_dict(assign=True)``).
        self._statistics = (self.running_mean, self.running_var, self.num_batches_tracked)

    def _apply(self, fn, recurse=True):
        module = super()._apply(fn, recurse)
        self._keep_statistics()
        return module

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._keep_statistics()

    def reset_running_stats(self) -> None:
        mean, var, count = self._statistics
        with torch.no_grad():
            mean.zero_()
            var.fill_(1.0)
            count.zero_()

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"PerStepBatchNorm2d needs (N, C, H, W) inputs, got shape {tuple(x.shape)}")
        now = current_inner_step()
        row = min(now.step, self.inner_steps - 1)
        if now.evaluating or not self.training:
            return self._normalise(x, self.running_mean[row], self.running_var[row], row)
        if _functorch.is_functorch_wrapped_tensor(x):
            raise ValueError("batch_norm 'per_step' writes its running statistics in place while meta-training, "
                             "which torch.func transforms cannot do: use vmap_tasks=False (the task loop) or "
                             "batch_norm 'transductive'")
        out = self._normalise(x, None, None, row)
        self._record(x, row)
        return out

    def _normalise(self, x: Tensor, mean: Tensor | None, var: Tensor | None, row: int) -> Tensor:
        weight, bias = self.weight[row], self.bias[row]
        batch_statistics = mean is None
        if x.dtype not in _REDUCED:
            return F.batch_norm(x, mean, var, weight, bias, batch_statistics, 0.0, self.eps)
        with torch.autocast(x.device.type, enabled=False):
            return F.batch_norm(x.float(), mean, var, weight.float(), bias.float(), batch_statistics, 0.0,
                                self.eps).to(x.dtype)

    @torch.no_grad()
    def _record(self, x: Tensor, row: int) -> None:
        """Fold the batch's statistics into row ``row`` (the variance unbiased, as ``nn.BatchNorm2d``)."""
        running_mean, running_var, count = self._statistics
        var, mean = torch.var_mean(x.detach().float(), dim=(0, 2, 3), correction=1)
        running_mean[row].lerp_(mean.to(running_mean.dtype), self.momentum)
        running_var[row].lerp_(var.to(running_var.dtype), self.momentum)
        count[row] += 1

    def extra_repr(self) -> str:
        return f"{self.num_features}, inner_steps={self.inner_steps}, eps={self.eps}, momentum={self.momentum}"


# batch_norm mode -> builder(num_features, inner_steps).
BATCH_NORMS: Registry[Callable[[int, int], nn.Module]] = Registry("batch_norm")
BATCH_NORMS.register(TRANSDUCTIVE, lambda features, inner_steps: nn.BatchNorm2d(features, track_running_stats=False))
BATCH_NORMS.register(PER_STEP, PerStepBatchNorm2d)


def batch_norm_2d(mode: str, num_features: int, inner_steps: int = 1) -> nn.Module:
    """The batch norm layer of ``mode`` (see the module docstring) over ``num_features`` channels;
    ``inner_steps`` is how many steps ``per_step`` keeps (the learner's ``inner_steps``)."""
    builder = BATCH_NORMS[mode]
    checks.integer("inner_steps", inner_steps, least=1, owner=f"batch_norm {mode!r}")
    return builder(num_features, inner_steps)
