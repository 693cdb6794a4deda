"""Inner-loop drivers for update rules: the torch.func engine and the higher engine, with the
same ``inner_loop``; one rule step from a loss for the drivers that use plain autograd."""

from ..torch_optim.rule_optimizer import RuleOptimizer
from .choice import ENGINES
from .func_engine import AdaptedModel, FuncEngine, VmappedRun, unused_parameters_error
from .functional_model import functional_forward
from .higher_engine import DifferentiableRuleOptimizer, HigherEngine, detach_grads
from .loss_step import step_on_loss

__all__ = [
    "AdaptedModel",
    "DifferentiableRuleOptimizer",
    "ENGINES",
    "FuncEngine",
    "HigherEngine",
    "RuleOptimizer",
    "VmappedRun",
    "detach_grads",
    "functional_forward",
    "step_on_loss",
    "unused_parameters_error",
]
