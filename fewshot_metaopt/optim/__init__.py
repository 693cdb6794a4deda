"""Update rules, learned learning rates and the Phase 50.4 MetaOptimizer."""

from .learned_lr import GRANULARITIES, LearnedLR
from .meta_optimizer import MetaOptimizer, MetaOptimizerConfig, MetaOptTrainResult, OptimizerState
from .rules import AdamRule, L2ORule, LSTMRule, ScalableLSTMRule, SGDRule, UpdateRule, lstm_rule
from .schedules import Constant, Cosine, Cyclical, Learned, ScheduledRule, Warmup, schedule_optimizer

__all__ = [
    "AdamRule",
    "Constant",
    "Cosine",
    "Cyclical",
    "Learned",
    "ScheduledRule",
    "Warmup",
    "schedule_optimizer",
    "GRANULARITIES",
    "L2ORule",
    "LSTMRule",
    "LearnedLR",
    "MetaOptTrainResult",
    "MetaOptimizer",
    "MetaOptimizerConfig",
    "OptimizerState",
    "SGDRule",
    "ScalableLSTMRule",
    "UpdateRule",
    "lstm_rule",
]
