"""Meta-training update rules on their own: the ``MetaOptimizer`` facade over its trainers
(truncated BPTT, persistent evolution strategies, Warp-Grad), and training a rule by unrolling
it over a family of tasks."""

from .meta_optimizer import MetaOptimizer, MetaOptimizerConfig, MetaOptTrainResult, OptimizerState
from .pes import PersistentES, PESEstimate
from .task_families import EpisodeTasks, QuadraticTasks
from .task_meta_training import meta_train_on_tasks

__all__ = [
    "EpisodeTasks",
    "MetaOptTrainResult",
    "MetaOptimizer",
    "MetaOptimizerConfig",
    "OptimizerState",
    "PESEstimate",
    "PersistentES",
    "QuadraticTasks",
    "meta_train_on_tasks",
]
