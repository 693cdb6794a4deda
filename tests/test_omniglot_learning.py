"""A short MAML run on real Omniglot 5-way 1-shot gets far above chance (20%)."""

import pytest
import torch

from conftest import needs_real
from fewshot_metaopt import GradientMetaLearner, GradientMetaLearnerConfig, TaskDistributionSampler
from fewshot_metaopt.models import conv4


@pytest.mark.real_data
@needs_real
def test_short_maml_run_on_omniglot_5way_1shot(real):
    train = TaskDistributionSampler(real["splits"]["train"], ways=5, shots=1, queries=5, seed=0)
    test = TaskDistributionSampler(real["splits"]["test"], ways=5, shots=1, queries=5, seed=0).fixed(100)
    torch.manual_seed(0)
    learner = GradientMetaLearner(
        conv4(5, hidden=32), GradientMetaLearnerConfig(inner_lr=0.4, inner_steps_eval=3, meta_lr=3e-3)
    )
    before = learner.evaluate(test)
    for _ in range(200):
        learner.meta_train_step(train.sample_batch(4))
    after = learner.evaluate(test)
    assert before.mean < 0.5
    assert after.mean > 0.8, after
