"""Meta-training update rules on their own: the ``MetaOptimizer`` facade over its trainers
(truncated BPTT, persistent evolution strategies, Warp-Grad), and training a rule by unrolling
it over a family of tasks or a mixture of architectures and tasks."""

from .meta_optimizer import MetaOptimizer, MetaOptimizerConfig, MetaOptTrainResult, OptimizerState
from .pes import PersistentES, PESEstimate
from .task_families import EpisodeTasks, QuadraticTasks
from .task_meta_training import meta_train_on_tasks
from .task_mixture import MixtureComponent, TaskMixture, meta_train_on_mixture

__all__ = [
    "EpisodeTasks",
    "MetaOptTrainResult",
    "MetaOptimizer",
    "MetaOptimizerConfig",
    "MixtureComponent",
    "OptimizerState",
    "PESEstimate",
    "PersistentES",
    "QuadraticTasks",
    "TaskMixture",
    "meta_train_on_mixture",
    "meta_train_on_tasks",
]
