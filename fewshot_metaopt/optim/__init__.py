"""Pure inner-loop update rules, learned learning rates, schedules and pytree helpers: what
every driver steps, and nothing that drives (see ``docs/architecture.md``)."""

from .learned_lr import GRANULARITIES, LearnedLR
from .rules import AdamRule, L2ORule, LSTMRule, ScalableLSTMRule, SGDRule, UpdateRule, lstm_rule, step_rule
from .rules.combiner import CombinerRule
from .rules.control import ControlRule
from .rules.tape_memory import DifferentiableTape
from .rules.tape_sgd import TapeSGDRule
from .schedules import Constant, Cosine, Cyclical, Learned, ScheduledRule, Warmup, schedule_optimizer

__all__ = [
    "AdamRule",
    "CombinerRule",
    "Constant",
    "ControlRule",
    "Cosine",
    "Cyclical",
    "DifferentiableTape",
    "GRANULARITIES",
    "L2ORule",
    "LSTMRule",
    "Learned",
    "LearnedLR",
    "SGDRule",
    "ScalableLSTMRule",
    "ScheduledRule",
    "TapeSGDRule",
    "UpdateRule",
    "Warmup",
    "lstm_rule",
    "schedule_optimizer",
    "step_rule",
]
