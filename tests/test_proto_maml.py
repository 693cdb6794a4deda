"""Proto-MAML: the head built from the support prototypes, its exact meta-gradient against float64
finite differences on both engines, the engines and the vmapped loop against each other, the
backbones it runs on, its errors, task files and a bit-exact resume."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_metaopt import Episode, GradientMetaLearner, GradientMetaLearnerConfig
from fewshot_metaopt.learners.prototype_head import PrototypeHead, linear_head
from fewshot_metaopt.models import ResidualConvNet, conv4, mlp, resnet12
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


def test_the_head_starts_as_the_nearest_prototype_classifier():
    model = tiny_mlp()
    episode = classification_episodes(1, (3,), ways=2, shots=3)[0]
    learner = proto(model)
    head = learner.initial_weights(episode, 0, "second_order")
    body = model[:-1]
    z = body(episode.support_x)
    prototypes = torch.stack([z[episode.support_y == k].mean(0) for k in range(2)])
    assert torch.allclose(head["2.weight"], 2 * prototypes, rtol=1e-12)
    assert torch.allclose(head["2.bias"], -prototypes.pow(2).sum(1), rtol=1e-12)
    assert head["2.weight"].grad_fn is not None  # in the graph of the body
    # No inner step: the logits are -||z - c_k||^2 up to a term shared by every class.
    fmodel = learner.adapt(episode, steps=0)
    zq = body(episode.query_x)
    logits = fmodel(episode.query_x)
    distances = torch.cdist(zq, prototypes).pow(2)
    assert torch.allclose(logits + distances, (logits + distances)[:, :1].expand_as(logits), atol=1e-10)
    # The model's own head plays no part.
    adapted = learner.adapt(episode, steps=2)(episode.query_x)
    with torch.no_grad():
        model[-1].weight.add_(1.0)
        model[-1].bias.sub_(2.0)
    assert torch.equal(learner.adapt(episode, steps=2)(episode.query_x), adapted)


def meta_gradient(learner: GradientMetaLearner, episodes) -> list[torch.Tensor]:
    learner.meta_optimizer.zero_grad(set_to_none=True)
    learner.accumulate_meta_gradient(episodes)
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in learner.model.parameters()]


@pytest.mark.parametrize("first_order", [False, True])
def test_the_engines_and_the_vmapped_loop_agree(first_order):
    episodes = classification_episodes(3, (1, 4, 4), shots=2)
    reference = meta_gradient(proto(tiny_convnet(), inner_steps=2, first_order=first_order), episodes)
    for settings in ({"engine": "higher"}, {"vmap_tasks": True, "vmap_chunk_size": 2}):
        other = meta_gradient(proto(tiny_convnet(), inner_steps=2, first_order=first_order, **settings), episodes)
        for a, b in zip(reference, other):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), settings
    # First order keeps the path through the prototypes: the body still learns from the head's start.
    assert all(g.abs().sum() > 0 for g in reference[:-2])


@pytest.mark.parametrize("make_model, shape", [
    (lambda: conv4(3, hidden=4, image_size=16), (1, 16, 16)),
    (lambda: mlp(5, 3, hidden=(8,)), (5,)),
    (lambda: ResidualConvNet(3, width=4, blocks=1), (1, 8, 8)),
    (lambda: resnet12(3, widths=(4, 6, 8, 10)), (3, 16, 16)),
])
def test_any_backbone_whose_last_layer_is_linear(make_model, shape):
    torch.manual_seed(0)
    model = make_model()
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(algorithm="proto_maml", inner_lr=0.1))
    episodes = [Episode(e.support_x.float(), e.support_y, e.query_x.float(), e.query_y)
                for e in classification_episodes(2, shape, ways=3, shots=2)]
    result = learner.meta_train_step(episodes)
    assert result.tasks == 2 and 0.0 <= learner.evaluate(episodes).mean <= 1.0
    _, head = linear_head(model)
    assert head.weight.grad is None and all(p.grad is not None for p in model.parameters() if p.dim() > 1
                                            and p is not head.weight)


class Pooled(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(x).mean(1)


@pytest.mark.parametrize("model, message", [
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()), r"last layer with parameters \(0\) must be an nn.Linear with a "
                                                     r"bias, got Conv2d"),
    (nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2, bias=False)), "got an nn.Linear without a bias"),
    (nn.Flatten(), "needs a model with parameters"),
])
def test_a_model_without_a_linear_head_is_refused(model, message):
    with pytest.raises(ValueError, match=message):
        PrototypeHead(model)


def test_the_learner_refuses_such_a_model_when_built():
    with pytest.raises(ValueError, match="must be an nn.Linear with a bias, got Conv2d"):
        GradientMetaLearner(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()), GradientMetaLearnerConfig(algorithm="proto_maml"))


def test_tasks_a_prototype_head_cannot_be_built_for_are_named():
    learner = proto(tiny_mlp())
    ep = classification_episodes(1, (3,))[0]
    cases = [
        (Episode(ep.support_x, ep.support_x[:, :1], ep.query_x, ep.query_y), "task 0: proto_maml .* integer class labels"),
        (Episode(ep.support_x, ep.support_y + 1, ep.query_x, ep.query_y), r"support labels must lie in 0..1 .* got 1..2"),
        (Episode(ep.support_x, torch.zeros_like(ep.support_y), ep.query_x, ep.query_y), r"classes \[1\] have none"),
    ]
    for episode, message in cases:
        with pytest.raises(ValueError, match=message):
            learner.meta_train_step([episode])
    with pytest.raises(ValueError, match=r"head's input to be \(examples, features\), got shape \(4, 2, 3\)"):
        PrototypeHead(Pooled().double())(torch.zeros(4, 2, 3, dtype=torch.float64), torch.tensor([0, 1, 0, 1]), 0)


PROTO_TASK = TINY_TASK.replace('algorithm = "meta_sgd"', 'algorithm = "proto_maml"')


def test_task_files_select_proto_maml(tmp_path):
    assert load_task(write_task(tmp_path, PROTO_TASK)).learner.algorithm == "proto_maml"
    with pytest.raises(RunError, match="learner.algorithm 'proto_maml' builds each task's head from class prototypes "
                                       "and needs a classification data set, got the regression family 'sinusoid'"):
        load_task("sinusoid-5shot", ["learner.algorithm=proto_maml"])


def test_an_interrupted_proto_maml_run_resumes_bit_identically(tmp_path, capsys, monkeypatch):
    task = write_task(tmp_path, PROTO_TASK.replace("iterations = 6", "iterations = 8"))
    train_whole_and_interrupted_then_resumed(task, tmp_path, monkeypatch)
    assert_same_run(tmp_path / "whole", tmp_path / "cut")


def test_a_moved_learner_builds_its_heads_where_its_model_now_is():
    learner = proto(tiny_mlp()).to(torch.float32)
    episode = classification_episodes(1, (3,))[0]
    episode = Episode(episode.support_x.float(), episode.support_y, episode.query_x.float(), episode.query_y)
    assert all(t.dtype == torch.float32 for t in learner.initial_weights(episode, 0, "eval").values())
    assert learner.meta_train_step([episode]).tasks == 1


def test_with_per_step_batch_norm_the_prototype_pass_is_step_0_and_writes_no_statistics():
    torch.manual_seed(0)
    model = conv4(3, hidden=4, image_size=16, batch_norm="per_step", inner_steps=2)
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(algorithm="proto_maml", inner_lr=0.1, inner_steps=2))
    episodes = [Episode(e.support_x.float(), e.support_y, e.query_x.float(), e.query_y)
                for e in classification_episodes(2, (1, 16, 16), ways=3, shots=2)]

    def buffers():
        return {name: b.clone() for name, b in model.named_buffers()}

    before = buffers()
    learner.initial_weights(episodes[0], 0, "second_order")
    assert all(torch.equal(before[n], b) for n, b in model.named_buffers())
    learner.meta_train_step(episodes)                       # the support and query passes write them
    trained = buffers()
    assert any(not torch.equal(before[n], trained[n]) for n in before)
    # Scored, a task normalises with step 0's running statistics: an example's embedding does
    # not depend on the rest of the support set, and nothing is written.
    head = PrototypeHead(model)
    x = episodes[0].support_x
    alone = head.embed(x[:1], evaluating=True)
    together = head.embed(x, evaluating=True)[:1]
    assert torch.allclose(alone, together, atol=1e-5)
    learner.evaluate(episodes)
    assert all(torch.equal(trained[n], b) for n, b in model.named_buffers())
