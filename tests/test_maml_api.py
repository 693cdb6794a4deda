import pytest
import torch

from fewshot_metaopt import ModelAgnosticMetaLearning, TaskDistributionSampler, stack_episodes, train_maml
from fewshot_metaopt.datasets import Sinusoid
from fewshot_metaopt.learners import tensors_to_episodes
from fewshot_metaopt.models import mlp
from learner_fixtures import classification_episodes, tiny_mlp


def test_meta_sgd_with_first_order_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="meta_sgd=True with first_order=True: learned inner learning rates"):
        ModelAgnosticMetaLearning(tiny_mlp(), meta_sgd=True, first_order=True)


def test_algorithm_follows_the_flags():
    assert ModelAgnosticMetaLearning(tiny_mlp()).learner.config.algorithm == "maml"
    assert ModelAgnosticMetaLearning(tiny_mlp(), first_order=True).learner.config.algorithm == "fomaml"
    maml = ModelAgnosticMetaLearning(tiny_mlp(), inner_lr=0.05, outer_lr=0.01, inner_steps=2, meta_sgd=True)
    cfg = maml.learner.config
    assert maml.meta_sgd and (cfg.inner_lr, cfg.meta_lr, cfg.inner_steps) == (0.05, 0.01, 2)
    assert all(v == pytest.approx(0.05) for v in maml.get_learned_lr().values())


def test_extra_config_keywords_are_validated():
    m = ModelAgnosticMetaLearning(tiny_mlp(), meta_grad_clip=1.0)
    assert m.learner.config.meta_grad_clip == 1.0
    with pytest.raises(ValueError, match="unknown learner key 'clip'"):
        ModelAgnosticMetaLearning(tiny_mlp(), clip=1.0)
    with pytest.raises(ValueError, match="set 'meta_lr' through the named arguments"):
        ModelAgnosticMetaLearning(tiny_mlp(), meta_lr=0.2)


def test_one_task_or_a_batch_gives_the_same_update():
    episodes = classification_episodes(3, (3,))
    batch = stack_episodes(episodes)
    a = ModelAgnosticMetaLearning(tiny_mlp(), inner_lr=0.1, inner_steps=1)
    b = ModelAgnosticMetaLearning(tiny_mlp(), inner_lr=0.1, inner_steps=1)
    loss_batched = a.meta_train_step(batch.support_x, batch.support_y, batch.query_x, batch.query_y)
    expected = b.learner.meta_train_step(episodes).loss
    assert loss_batched == pytest.approx(expected)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q)
    single = a.meta_train_step(episodes[0].support_x, episodes[0].support_y, episodes[0].query_x, episodes[0].query_y)
    assert isinstance(single, float)


def test_tensor_batches_are_recognised():
    ep = TaskDistributionSampler(Sinusoid(), shots=3, queries=2).sample()
    assert len(tensors_to_episodes(ep.support_x, ep.support_y, ep.query_x, ep.query_y)) == 1
    b = stack_episodes([ep, ep])
    assert len(tensors_to_episodes(b.support_x, b.support_y, b.query_x, b.query_y)) == 2
    with pytest.raises(ValueError, match=r"disagree on the number of tasks: \[1, 2\]"):
        tensors_to_episodes(b.support_x, b.support_y, b.query_x[:1], b.query_y[:1])


def test_adapt_and_evaluate_pass_through():
    maml = ModelAgnosticMetaLearning(tiny_mlp(), inner_lr=0.5, inner_steps=2)
    ep = classification_episodes(1, (3,))[0]
    fmodel = maml.adapt(ep.support_x, ep.support_y)
    assert not torch.allclose(fmodel(ep.query_x), maml.model(ep.query_x))
    assert len(maml.evaluate([ep]).values) == 1


def test_train_maml_with_a_sampler_and_with_tensor_batches():
    sampler = TaskDistributionSampler(Sinusoid(), shots=5, queries=5, seed=0)
    torch.manual_seed(0)
    model, maml, losses = train_maml(
        model=mlp(1, 1), task_dataloader=sampler, inner_lr=0.01, outer_lr=0.01, inner_steps=1,
        meta_sgd=True, num_iterations=6, meta_batch_size=2, progress=False,
    )
    assert len(losses) == 6 and maml.model is model and maml.meta_sgd
    loader = []
    for _ in range(3):
        b = stack_episodes(sampler.sample_batch(2))
        loader.append((b.support_x, b.support_y, b.query_x, b.query_y))
    _, _, losses = train_maml(mlp(1, 1), loader, inner_steps=1, progress=True)
    assert len(losses) == 3
    mixed = [sampler.sample(), sampler.sample_batch(2), tuple(loader[0])]
    _, _, losses = train_maml(mlp(1, 1), mixed, inner_steps=1, num_iterations=2, progress=False)
    assert len(losses) == 2


def test_train_maml_classification_progress_and_epochs():
    episodes = classification_episodes(4, (3,))
    _, _, losses = train_maml(tiny_mlp(), [episodes[:2], episodes[2:]], inner_steps=1, progress=True)
    assert len(losses) == 2
    finite = TaskDistributionSampler(Sinusoid(), shots=2, queries=2, episodes_per_epoch=6)
    _, _, losses = train_maml(mlp(1, 1), finite, inner_steps=1, meta_batch_size=3, progress=False)
    assert len(losses) == 2


def test_train_maml_errors():
    endless = TaskDistributionSampler(Sinusoid(), shots=2, queries=2)
    with pytest.raises(ValueError, match="the sampler is endless: pass num_iterations"):
        train_maml(mlp(1, 1), endless, progress=False)
    with pytest.raises(ValueError, match="task_dataloader item 0 is a str"):
        train_maml(mlp(1, 1), ["nope"], progress=False)
    with pytest.raises(ValueError, match="yielded no tasks"):
        train_maml(mlp(1, 1), [], progress=False)
    with pytest.raises(ValueError, match="meta_batch_size must be >= 1"):
        train_maml(mlp(1, 1), endless, meta_batch_size=0)


def test_the_seed_module_path_and_its_meta_sgd_attributes():
    from fewshot_metaopt.algorithms.maml import ModelAgnosticMetaLearning as FromAlgorithms
    from fewshot_metaopt.algorithms.maml import train_maml as train_from_algorithms

    assert FromAlgorithms is ModelAgnosticMetaLearning and train_from_algorithms is train_maml
    model = tiny_mlp()
    maml = FromAlgorithms(model, inner_lr=0.05, meta_sgd=True)
    lrs = maml.meta_sgd_lrs
    assert isinstance(lrs, torch.nn.ParameterList)
    assert [p.shape for p in lrs] == [p.shape for p in model.parameters()]
    assert all(torch.all(p == 0.05) for p in lrs)
    trained = {id(p) for group in maml.meta_optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in model.parameters()} | {id(p) for p in lrs} == trained
    assert FromAlgorithms(tiny_mlp(), meta_sgd=False).meta_sgd_lrs is None
