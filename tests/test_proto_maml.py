"""Proto-MAML: the head built from the support prototypes, its exact meta-gradient against float64
finite differences on both engines, the engines and the vmapped loop against each other, the
backbones it runs on, its errors, task files and a bit-exact resume."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_metaopt import Episode, GradientMetaLearner, GradientMetaLearnerConfig
from fewshot_metaopt.learners.prototype_head import PrototypeHead, linear_head
from fewshot_metaopt.models import ResidualConvNet, conv4, mlp
from fewshot_metaopt.runs.errors import RunError
from fewshot_metaopt.runs.task_config import load_task
from learner_fixtures import classification_episodes, tiny_convnet, tiny_mlp
from test_cli import TINY_TASK, write_task
from test_cli_resume import assert_same_run, train_whole_and_interrupted_then_resumed
from test_meta_gradients import autograd_meta_gradient, finite_difference

CASES = [("mlp", tiny_mlp, (3,)), ("conv_bn", tiny_convnet, (1, 4, 4))]


def proto(model: nn.Module, **settings) -> GradientMetaLearner:
    return GradientMetaLearner(model, GradientMetaLearnerConfig(algorithm="proto_maml", inner_lr=0.3, **settings))


@pytest.mark.parametrize("engine", ["func", "higher"])
@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("name, make_model, input_shape", CASES)
def test_the_meta_gradient_matches_finite_differences(name, make_model, input_shape, steps, engine):
    model = make_model()
    learner = proto(model, inner_steps=steps, engine=engine)
    episodes = classification_episodes(2, input_shape)
    tensors = list(model.parameters())
    exact = autograd_meta_gradient(learner, episodes, tensors)
    for ti, i, numeric in finite_difference(learner, episodes, tensors):
        assert float(exact[ti].view(-1)[i]) == pytest.approx(numeric, rel=1e-5, abs=1e-8), (ti, i)
    head = linear_head(model)[1]
    # The head starts from the prototypes: the model's own head is never used and never learns.
    assert head.weight.grad is None and head.bias.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters()
               if p is not head.weight and p is not head.bias)
