"""Inner-loop drivers for update rules: higher's differentiable optimizers and the torch.func engine."""

from .func_engine import AdaptedModel, FuncEngine, VmappedRun, unused_parameters_error
from .functional_model import functional_forward
from .higher_engine import DifferentiableRuleOptimizer, RuleOptimizer, detach_grads, functional_inner_loop

__all__ = [
    "AdaptedModel",
    "DifferentiableRuleOptimizer",
    "FuncEngine",
    "RuleOptimizer",
    "VmappedRun",
    "detach_grads",
    "functional_forward",
    "functional_inner_loop",
    "unused_parameters_error",
]
