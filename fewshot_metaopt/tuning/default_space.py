"""The space searched when a task file has no ``[search]`` table: what its configs publish.

The learner's :meth:`~fewshot_metaopt.learners.GradientMetaLearnerConfig.default_search_space`
under ``learner.``; with a learned inner optimizer, the rule's
:meth:`~fewshot_metaopt.meta_training.MetaOptimizerConfig.default_search_space` under
``inner_optimizer.`` instead of ``learner.inner_lr`` (the rule takes the steps, so the
learner's inner lr is not used), keeping only the keys a task's ``[inner_optimizer]`` has.
"""

from __future__ import annotations

from ..runs.search_space import SearchSpace
from ..runs.settings import InnerOptimizerSettings
from ..runs.task_config import ALL_SECTIONS, TaskConfig


def default_space(task: TaskConfig) -> SearchSpace:
    table = {f"learner.{key}": spec for key, spec in task.learner.default_search_space().items()}
    rule = task.meta_optimizer_config()
    if rule is not None:
        del table["learner.inner_lr"]
        table.update({f"inner_optimizer.{key}": spec for key, spec in rule.default_search_space().items()
                      if key in InnerOptimizerSettings.RULE_KEYS})
    return SearchSpace.parse(table, ALL_SECTIONS)
