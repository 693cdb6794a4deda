"""``ModelAgnosticMetaLearning`` and ``train_maml`` (defined in :mod:`fewshot_metaopt.learners.maml_api`)."""

from ..learners.maml_api import ModelAgnosticMetaLearning, train_maml

__all__ = ["ModelAgnosticMetaLearning", "train_maml"]
