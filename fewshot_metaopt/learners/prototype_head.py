"""Proto-MAML's head (Triantafillou et al. 2020): each task's linear head starts from the class
prototypes of its support set, and the inner loop adapts from there.

With ``c_k`` the mean embedding (the head's input) of the support examples of class ``k``, the
head ``W_k = 2 c_k``, ``b_k = -||c_k||^2`` scores an embedding ``z`` by ``-||z - c_k||^2 +
||z||^2``: a prototypical network's squared-distance classifier, up to a term that is the same
for every class. The prototypes are computed from the meta-learned body in the graph, so the
meta-gradient reaches the body through the head's starting point as well as through the
inner loop; the model's own head parameters are never used and get no meta-gradient.

Any backbone works whose last layer with parameters (the last registered) is an
``nn.Linear`` with a bias: conv4, mlp, :class:`~fewshot_metaopt.models.ResidualConvNet`. The
embedding is whatever that layer receives, caught by a forward pre-hook, so the body needs no
method of its own. The pass that computes it runs as the support pass of inner step 0 does
(:mod:`fewshot_metaopt.models.inner_step`: per-step batch norm normalises with the batch's
statistics while meta-training, with step 0's running ones when a task is scored) and leaves
the model's buffers as they were, so that the running statistics see each support set once.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.inner_step import inner_step


def linear_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """The name and module of ``model``'s last registered layer with parameters, which must be
    an ``nn.Linear`` with a bias (the layer Proto-MAML initialises)."""
    owners = [(name, module) for name, module in model.named_modules()
              if any(True for _ in module.parameters(recurse=False))]
    if not owners:
        raise ValueError("proto_maml needs a model with parameters; this one has none")
    name, head = owners[-1]
    if not isinstance(head, nn.Linear) or head.bias is None:
        what = "an nn.Linear without a bias" if isinstance(head, nn.Linear) else type(head).__name__
        raise ValueError(f"proto_maml initialises a linear head from class prototypes: the model's last layer with "
                         f"parameters ({name or 'the model itself'}) must be an nn.Linear with a bias, got {what}; "
                         "end the model with nn.Linear(features, ways)")
    return name, head


class PrototypeHead:
    """``head(support_x, support_y, task)``: the starting weights of ``model``'s head for one
    task, ``{"<head>.weight": 2 C, "<head>.bias": -||C||^2}`` with ``C`` the ``(ways,
    features)`` class prototypes, computed by ``forward`` (``model`` itself, or it under a
    precision's autocast) in the graph of the model's parameters."""

    def __init__(self, model: nn.Module, forward: Callable[[Tensor], Tensor] | None = None) -> None:
        self.model = model
        self.forward = model if forward is None else forward
        name, self.head = linear_head(model)
        prefix = f"{name}." if name else ""
        self.weight_name, self.bias_name = f"{prefix}weight", f"{prefix}bias"

    @property
    def ways(self) -> int:
        return self.head.out_features

    def embed(self, x: Tensor, evaluating: bool = False) -> Tensor:
        """What the head receives when the model runs on ``x`` at inner step 0 (``evaluating``:
        a task adapted to be scored); the model's buffers are left as they were."""
        caught: list[Tensor] = []
        buffers = list(self.model.buffers())
        saved = [b.clone() for b in buffers]
        handle = self.head.register_forward_pre_hook(lambda module, args: caught.append(args[0]))
        try:
            with inner_step(0, evaluating):
                self.forward(x)
        finally:
            handle.remove()
            with torch.no_grad():
                for buffer, value in zip(buffers, saved):
                    buffer.copy_(value)
        return caught[0]

    def __call__(self, support_x: Tensor, support_y: Tensor, task: int, evaluating: bool = False) -> dict[str, Tensor]:
        ways = self.ways
        if support_y.is_floating_point():
            raise ValueError(f"task {task}: proto_maml builds its head from class prototypes and needs integer class "
                             f"labels, got {support_y.dtype} targets (a regression task); use maml")
        if support_y.numel() and (int(support_y.min()) < 0 or int(support_y.max()) >= ways):
            raise ValueError(f"task {task}: support labels must lie in 0..{ways - 1} for a head of {ways} outputs, "
                             f"got {int(support_y.min())}..{int(support_y.max())}")
        embedding = self.embed(support_x, evaluating).to(self.head.weight.dtype)
        if embedding.dim() != 2:
            raise ValueError(f"proto_maml needs the head's input to be (examples, features), got shape "
                             f"{tuple(embedding.shape)}; flatten before the head")
        members = F.one_hot(support_y, ways).to(embedding.dtype)
        counts = members.sum(0)
        if bool((counts == 0).any()):
            missing = [k for k in range(ways) if counts[k] == 0]
            raise ValueError(f"task {task}: proto_maml needs a support example of every class 0..{ways - 1}; "
                             f"classes {missing} have none")
        prototypes = (members.T @ embedding) / counts[:, None]
        return {self.weight_name: 2 * prototypes, self.bias_name: -prototypes.pow(2).sum(1)}

