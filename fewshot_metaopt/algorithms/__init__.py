"""The seed API under the module path its documentation uses: ``from
fewshot_metaopt.algorithms.maml import ModelAgnosticMetaLearning, train_maml``."""
