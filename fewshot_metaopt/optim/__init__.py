"""Update rules, learned learning rates, the Phase 50.4 MetaOptimizer and the seed optimizers
(MetaNNCombiner, AdaptiveSGDWithTape, ControlMetaOptimizer) as torch.optim classes."""

from .learned_lr import GRANULARITIES, LearnedLR
from .meta_optimizer import MetaOptimizer, MetaOptimizerConfig, MetaOptTrainResult, OptimizerState
from .rules import AdamRule, L2ORule, LSTMRule, ScalableLSTMRule, SGDRule, UpdateRule, lstm_rule
from .schedules import Constant, Cosine, Cyclical, Learned, ScheduledRule, Warmup, schedule_optimizer
from .control import ControlMetaOptimizer
from .meta_nn import MetaNNCombiner
from .rules.combiner import CombinerRule
from .rules.control import ControlRule
from .rules.tape_memory import DifferentiableTape
from .rules.tape_sgd import TapeSGDRule
from .tape_sgd import AdaptiveSGDWithTape
from .task_families import EpisodeTasks, QuadraticTasks
from .task_meta_training import meta_train_on_tasks

__all__ = [
    "AdaptiveSGDWithTape",
    "CombinerRule",
    "ControlMetaOptimizer",
    "ControlRule",
    "DifferentiableTape",
    "EpisodeTasks",
    "MetaNNCombiner",
    "QuadraticTasks",
    "TapeSGDRule",
    "meta_train_on_tasks",
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
