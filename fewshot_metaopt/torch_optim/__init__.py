"""Update rules as ``torch.optim`` optimizers: the one adapter (:class:`RuleOptimizer`) and
the three optimizers built on it that learn something of their own while they train."""

from .adaptive_sgd_with_tape import AdaptiveSGDWithTape
from .control_meta_optimizer import ControlMetaOptimizer
from .meta_nn_combiner import MetaNNCombiner
from .rule_optimizer import RuleOptimizer

__all__ = ["AdaptiveSGDWithTape", "ControlMetaOptimizer", "MetaNNCombiner", "RuleOptimizer"]
