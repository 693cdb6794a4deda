"""Inner-loop drivers for update rules."""

from .higher_engine import DifferentiableRuleOptimizer, RuleOptimizer, detach_grads, functional_inner_loop

__all__ = ["DifferentiableRuleOptimizer", "RuleOptimizer", "detach_grads", "functional_inner_loop"]
