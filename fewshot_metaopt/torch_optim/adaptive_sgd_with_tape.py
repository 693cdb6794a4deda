"""``AdaptiveSGDWithTape``: the tape rule as an ordinary ``torch.optim`` optimizer.

Meta-train the rule first on a family of tasks, then train with it like SGD:

>>> rule = TapeSGDRule(lr=0.05)
>>> meta_train_on_tasks(rule, QuadraticTasks(dim=20), meta_steps=200, inner_steps=20)
>>> opt = AdaptiveSGDWithTape(model.parameters(), rule=rule)
>>> for x, y in batches:
...     opt.zero_grad()
...     loss = F.mse_loss(model(x), y)
...     loss.backward()
...     opt.step(loss=loss)           # or opt.step(closure)

The loss is one of the tape's features, so ``step`` needs it: from a closure, or passed as
``loss=``. The rule's weights are not trained here (they are meta-trained by unrolling inner
steps over tasks: :func:`~fewshot_metaopt.meta_training.task_meta_training.meta_train_on_tasks`,
or a learner's inner loop); they, the tape's memory and each tensor's momentum are saved by
:meth:`state_dict`. Parameters without a gradient are skipped, as ``torch.optim`` does.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from ..optim.rules.tape_sgd import TapeSGDRule
from .rule_optimizer import RuleOptimizer


class AdaptiveSGDWithTape(RuleOptimizer):
    """SGD whose lr, momentum and weight decay a learned memory tape sets (see the module docstring).

    Args:
        params: parameters, named parameters or a module.
        rule: a (meta-trained) :class:`TapeSGDRule`; it is moved to the parameters' dtype and
            device. Without one, a fresh rule is built from ``rule_options`` (``lr``,
            ``momentum``, ``weight_decay``, ``slots``, ``dim``, ``decay``, ``check_finite``).
    """

    def __init__(self, params: Iterable[Any] | nn.Module, rule: TapeSGDRule | None = None, **rule_options: Any) -> None:
        super().__init__(params, owner="AdaptiveSGDWithTape")
        if rule is None:
            rule = TapeSGDRule(**rule_options)
        elif not isinstance(rule, TapeSGDRule):
            raise ValueError(f"AdaptiveSGDWithTape drives a TapeSGDRule, got {type(rule).__name__}")
        elif rule_options:
            raise ValueError(
                f"AdaptiveSGDWithTape got a rule and rule options {sorted(rule_options)}; set them on the rule"
            )
        reference = next(iter(self.named_params().values()))
        self.rule = rule.to(device=reference.device, dtype=reference.dtype)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, loss: Tensor | None = None) -> Tensor:
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if loss is None:
            raise ValueError(
                "AdaptiveSGDWithTape.step needs the loss, one of its tape's features: step(closure) or step(loss=loss)"
            )
        loss = self.checked_loss(loss)
        self.apply_rule(self.gradients(), loss)
        return loss

    def hyperparameters(self) -> dict[str, Any]:
        tape = self.rule.tape
        return {
            "lr": self.rule.lr,
            "momentum": self.rule.momentum,
            "weight_decay": self.rule.weight_decay,
            "slots": tape.slots,
            "dim": tape.dim,
            "decay": tape.decay,
        }
