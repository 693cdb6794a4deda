"""Update rules, learned learning rates and (later) learned optimizers."""

from .learned_lr import GRANULARITIES, LearnedLR
from .rules import SGDRule, UpdateRule

__all__ = ["GRANULARITIES", "LearnedLR", "SGDRule", "UpdateRule"]
