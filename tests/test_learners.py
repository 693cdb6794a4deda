import gc
import math
import warnings

import higher
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_metaopt import (
    Episode,
    GradientMetaLearner,
    GradientMetaLearnerConfig,
    TaskDistributionSampler,
)
from fewshot_metaopt.datasets import Glyphs, Sinusoid
from fewshot_metaopt.engines import RuleOptimizer
from fewshot_metaopt.learners import EvaluationResult, NonFiniteLossError, head_parameter_names
from fewshot_metaopt.models import conv4, mlp
from fewshot_metaopt.optim import LearnedLR, SGDRule
from learner_fixtures import classification_episodes, tiny_convnet, tiny_mlp


def snapshot(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_adaptation_leaves_parameters_and_buffers_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double()
    before = snapshot(model)
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(inner_lr=0.5, inner_steps=3))
    episode = classification_episodes(1, (3,))[0]
    fmodel = learner.adapt(episode)
    adapted = fmodel(episode.query_x)
    for key, value in snapshot(model).items():
        assert torch.equal(value, before[key]), key
    assert not torch.allclose(adapted, model(episode.query_x))
    # the adapted weights differ from the originals
    assert any(not torch.equal(f, p) for f, p in zip(fmodel.fast_params, model.parameters()))


def test_anil_adapts_only_the_head():
    model = tiny_convnet()
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(algorithm="anil", inner_lr=0.5))
    assert learner.adapted == ["5.weight", "5.bias"] == head_parameter_names(model)
    fmodel = learner.adapt(classification_episodes(1, (1, 4, 4))[0])
    names = [n for n, _ in model.named_parameters()]
    for name, fast, orig in zip(names, fmodel.fast_params, model.parameters()):
        assert torch.equal(fast, orig) == (name not in learner.adapted), name
    assert set(learner.get_learned_lr()) == {"5.weight", "5.bias"}


def test_head_of_a_bare_module_is_all_of_it():
    assert head_parameter_names(nn.Linear(2, 2)) == ["weight", "bias"]


def test_explicit_adapted_parameters():
    model = tiny_mlp()
    learner = GradientMetaLearner(model, adapted_parameters=["0.bias"])
    assert learner.adapted == ["0.bias"]
    with pytest.raises(ValueError, match=r"names no parameter of the model: \['nope'\]"):
        GradientMetaLearner(model, adapted_parameters=["nope"])
    with pytest.raises(ValueError, match="no parameters to meta-learn"):
        GradientMetaLearner(nn.ReLU())


def test_evaluation_is_repeatable_and_reports_a_ci():
    sampler = TaskDistributionSampler(Glyphs("val", num_characters=30, samples_per_class=6), ways=3, shots=1, queries=2)
    torch.manual_seed(0)
    learner = GradientMetaLearner(conv4(3, hidden=8), GradientMetaLearnerConfig(inner_steps_eval=2))
    manifest = sampler.fixed(10)
    a, b = learner.evaluate(manifest), learner.evaluate(manifest)
    assert a.values == b.values and a.metric == "accuracy" and len(a.accuracies) == 10
    assert 0.0 <= a.mean <= 1.0 and a.ci95 > 0
    assert "% ±" in str(a) and "10 episodes" in str(a)
    unadapted = learner.evaluate(manifest, steps=0)
    assert unadapted.losses != a.losses


def test_evaluation_result_statistics():
    r = EvaluationResult("accuracy", [1.0, 0.0, 1.0, 0.0], [0.1] * 4)
    assert r.mean == 0.5
    assert r.ci95 == pytest.approx(1.96 * (1 / 3) ** 0.5 / 2)
    assert EvaluationResult("mse", [2.0], [2.0]).ci95 == 0.0
    with pytest.raises(AttributeError, match="measured mse"):
        EvaluationResult("mse", [2.0], [2.0]).accuracies
    assert "mse 2.00" in str(EvaluationResult("mse", [2.0], [2.0]))
    with pytest.raises(ValueError, match="at least one episode"):
        GradientMetaLearner(tiny_mlp()).evaluate([])


def test_meta_train_step_updates_meta_parameters_and_reports():
    model = tiny_mlp()
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(algorithm="meta_sgd", inner_lr=0.1, meta_lr=0.01))
    before = snapshot(model)
    alpha_before = [p.detach().clone() for p in learner.rule.parameters()]
    result = learner.meta_train_step(classification_episodes(4, (3,)))
    assert result.tasks == 4 and result.skipped_tasks == 0 and 0.0 <= result.accuracy <= 1.0
    assert result.grad_norm > 0 and result.loss > 0
    assert any(not torch.equal(v, before[k]) for k, v in snapshot(model).items())
    assert any(not torch.equal(a, p) for a, p in zip(alpha_before, learner.rule.parameters()))
    assert learner.iteration == 1
    lrs = learner.learned_lr_tensors()
    assert lrs["0.weight"].shape == (4, 3)
    assert learner.get_learned_lr()["0.weight"] == pytest.approx(float(lrs["0.weight"].mean()))


def test_meta_gradient_clipping():
    learner = GradientMetaLearner(tiny_mlp(), GradientMetaLearnerConfig(meta_grad_clip=1e-3, meta_optimizer="sgd", meta_lr=1.0))
    before = snapshot(learner.model)
    result = learner.meta_train_step(classification_episodes(2, (3,)))
    assert result.grad_norm > 1e-3
    moved = sum(float((v - before[k]).pow(2).sum()) for k, v in snapshot(learner.model).items()) ** 0.5
    assert moved == pytest.approx(1e-3, rel=1e-4)


def test_maml_reports_its_fixed_lr_and_granularities():
    learner = GradientMetaLearner(tiny_mlp(), GradientMetaLearnerConfig(inner_lr=0.25))
    assert set(learner.get_learned_lr().values()) == {0.25}
    assert list(learner.rule.parameters()) == []
    per_step = GradientMetaLearner(
        tiny_mlp(), GradientMetaLearnerConfig(inner_lr=0.2, inner_steps=3, lr_granularity="per_step_per_layer")
    )
    assert per_step.learned_lr_tensors()["0.weight"].shape == (3,)
    assert per_step.rule.lrs.lr("0.weight", step=10) is not None  # later steps reuse the last row
    for granularity in ("scalar", "per_layer"):
        g = GradientMetaLearner(tiny_mlp(), GradientMetaLearnerConfig(inner_lr=0.2, lr_granularity=granularity))
        assert all(v == pytest.approx(0.2) for v in g.get_learned_lr().values())


def test_custom_rule_without_learned_lrs():
    learner = GradientMetaLearner(tiny_mlp(), inner_optimizer=SGDRule.for_params({"0.weight": (4, 3)}, 0.1), adapted_parameters=["0.weight"])
    assert learner.get_learned_lr() == {"0.weight": pytest.approx(0.1)}

    class Stateless(nn.Module):
        def init(self, params):
            return None

        def update(self, params, grads, state, step, loss=None):
            return {n: p - 0.1 * grads[n] if n in grads else p for n, p in params.items()}, state

        def get_learned_lr(self):
            return {"all": 0.1}

    other = GradientMetaLearner(tiny_mlp(), inner_optimizer=Stateless())
    assert other.get_learned_lr() == {"all": 0.1} and other.learned_lr_tensors() == {}
    other.meta_train_step(classification_episodes(1, (3,)))
    bare = GradientMetaLearner(tiny_mlp(), inner_optimizer=nn.Module())
    assert bare.get_learned_lr() == {}


def test_multi_step_weights_anneal_to_the_last_step():
    learner = GradientMetaLearner(
        tiny_mlp(), GradientMetaLearnerConfig(inner_steps=4, multi_step_loss=True, multi_step_anneal_iters=10)
    )
    assert learner.step_weights(4).tolist() == [0.25] * 4
    learner.iteration = 5
    assert learner.step_weights(4).tolist() == pytest.approx([0.125, 0.125, 0.125, 0.625])
    learner.iteration = 50
    assert learner.step_weights(4).tolist() == [0.0, 0.0, 0.0, 1.0]
    assert learner.step_weights(1).tolist() == [1.0]
    learner.meta_train_step(classification_episodes(2, (3,)))


def test_state_dict_round_trip():
    a = GradientMetaLearner(tiny_mlp(), GradientMetaLearnerConfig(algorithm="meta_sgd", inner_lr=0.1))
    a.meta_train_step(classification_episodes(2, (3,)))
    b = GradientMetaLearner(tiny_mlp(), GradientMetaLearnerConfig(algorithm="meta_sgd", inner_lr=0.1))
    b.load_state_dict(a.state_dict())
    episodes = classification_episodes(2, (3,), seed=5)
    assert a.meta_train_step(episodes).loss == b.meta_train_step(episodes).loss
    assert b.iteration == 2


def test_no_graph_is_kept_across_meta_steps():
    learner = GradientMetaLearner(tiny_mlp(), GradientMetaLearnerConfig(inner_steps=2))
    episodes = classification_episodes(2, (3,))

    def live_tensors() -> int:
        gc.collect()
        with warnings.catch_warnings():  # deprecated torch objects warn when inspected
            warnings.simplefilter("ignore")
            return sum(1 for o in gc.get_objects() if torch.is_tensor(o))

    for _ in range(20):
        learner.meta_train_step(episodes)
    baseline = live_tensors()
    for _ in range(200):
        learner.meta_train_step(episodes)
    assert live_tensors() <= baseline + 5


def test_sinusoid_meta_training_beats_the_untrained_initialisation():
    sampler = TaskDistributionSampler(Sinusoid(), shots=10, queries=10, seed=0)
    torch.manual_seed(0)
    learner = GradientMetaLearner(
        mlp(1, 1), GradientMetaLearnerConfig(algorithm="meta_sgd", inner_lr=0.01, inner_steps=1, meta_lr=0.003)
    )
    test = sampler.fixed(50)
    before = learner.evaluate(test)
    for _ in range(200):
        learner.meta_train_step(sampler.sample_batch(4))
    after = learner.evaluate(test)
    assert before.metric == after.metric == "mse"
    assert after.mean < 0.7 * before.mean, (before, after)


def test_rule_optimizer_as_plain_optimizer_and_in_user_higher_loops():
    model = tiny_mlp()
    rule = SGDRule.for_params({n: p.shape for n, p in model.named_parameters()}, lr=0.1, dtype=torch.float64)
    opt = RuleOptimizer(model.named_parameters(), rule)
    ep = classification_episodes(1, (3,))[0]
    w = model[0].weight.detach().clone()

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(ep.support_x), ep.support_y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss is not None and opt.step_count == 1
    assert torch.allclose(model[0].weight, w - 0.1 * model[0].weight.grad)
    opt.step()
    with pytest.raises(ValueError, match="got no parameters"):
        RuleOptimizer([], rule)

    # a user's own higher loop picks up our rule and its meta-gradient
    learned = SGDRule.for_params({n: p.shape for n, p in model.named_parameters()}, lr=0.1,
                                 granularity="scalar", dtype=torch.float64)
    twin = RuleOptimizer(model.named_parameters(), learned)
    with higher.innerloop_ctx(model, twin, copy_initial_weights=False) as (fmodel, diffopt):
        diffopt.step(F.cross_entropy(fmodel(ep.support_x), ep.support_y))
        F.cross_entropy(fmodel(ep.query_x), ep.query_y).backward()
    assert learned.lrs.values[0].grad is not None and float(learned.lrs.values[0].grad) != 0.0


# ---------------------------------------------------------------------------------- bad input


def test_labels_out_of_range_name_the_task():
    learner = GradientMetaLearner(tiny_mlp())
    episodes = classification_episodes(3, (3,))
    episodes[2] = Episode(episodes[2].support_x, episodes[2].support_y + 1, episodes[2].query_x, episodes[2].query_y)
    with pytest.raises(ValueError, match="task 2: support label 2 is out of range for a model with 2 outputs"):
        learner.meta_train_step(episodes)
    bad = Episode(episodes[0].support_x, episodes[0].support_y - 1, episodes[0].query_x, episodes[0].query_y)
    with pytest.raises(ValueError, match="task 0: support label -1 is out of range"):
        learner.meta_train_step([bad])


def test_shape_mismatches_name_the_task():
    learner = GradientMetaLearner(tiny_mlp())
    ep = classification_episodes(2, (5,))
    with pytest.raises(ValueError, match=r"task 0: support inputs of shape \(4, 5\) do not fit the model"):
        learner.meta_train_step(ep)
    reg = GradientMetaLearner(mlp(1, 1).double())
    wrong = Episode(torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64),
                    torch.zeros(2, 1, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"task 0: support targets of shape \(4, 2\) do not match the model's output \(4, 1\)"):
        reg.meta_train_step([wrong])


def test_nonfinite_losses_raise_with_task_and_step_or_are_skipped():
    episodes = classification_episodes(3, (3,))
    poisoned = episodes[1].support_x.clone()
    poisoned[0, 0] = float("nan")
    episodes[1] = Episode(poisoned, episodes[1].support_y, episodes[1].query_x, episodes[1].query_y)
    learner = GradientMetaLearner(tiny_mlp())
    with pytest.raises(NonFiniteLossError, match="task 1: support loss is nan at inner step 0"):
        learner.meta_train_step(episodes)
    skipping = GradientMetaLearner(tiny_mlp(), GradientMetaLearnerConfig(skip_nonfinite_tasks=True))
    result = skipping.meta_train_step(episodes)
    assert (result.tasks, result.skipped_tasks) == (2, 1)
    # the kept tasks' mean gradient, not diluted by the skipped one
    reference = GradientMetaLearner(tiny_mlp())
    reference.accumulate_meta_gradient([episodes[0], episodes[2]])
    skipping2 = GradientMetaLearner(tiny_mlp(), GradientMetaLearnerConfig(skip_nonfinite_tasks=True))
    skipping2.accumulate_meta_gradient(episodes)
    for a, b in zip(reference.model.parameters(), skipping2.model.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    with pytest.raises(FloatingPointError, match="all 1 tasks had non-finite losses"):
        skipping.meta_train_step([episodes[1]])
    with pytest.raises(ValueError, match="at least one episode"):
        learner.meta_train_step([])


def test_nonfinite_meta_gradient_updates_nothing():
    model = tiny_mlp()
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(inner_lr=1e300))
    ep = classification_episodes(1, (3,))
    before = snapshot(model)
    with pytest.raises(FloatingPointError):
        learner.meta_train_step(ep)
    assert all(torch.equal(v, before[k]) for k, v in snapshot(model).items())


def test_unused_parameters_are_named_unless_allowed():
    class Partly(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(3, 2)
            self.unused = nn.Linear(3, 2)

        def forward(self, x):
            return self.used(x)

    model = Partly().double()
    with pytest.raises(ValueError, match=r"parameters \['unused.weight', 'unused.bias'\] get no gradient"):
        GradientMetaLearner(model).meta_train_step(classification_episodes(1, (3,)))
    result = GradientMetaLearner(model, GradientMetaLearnerConfig(allow_unused=True)).meta_train_step(
        classification_episodes(1, (3,))
    )
    assert result.tasks == 1
    fo = GradientMetaLearner(model, GradientMetaLearnerConfig(algorithm="fomaml", allow_unused=True))
    assert fo.meta_train_step(classification_episodes(1, (3,))).tasks == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"algorithm": "leo"}, "unknown algorithm 'leo'; choose one of maml, fomaml, meta_sgd, anil"),
        ({"inner_steps": 0}, "inner_steps must be >= 1 for meta-training, got 0"),
        ({"inner_steps_eval": -1}, "inner_steps_eval must be >= 0"),
        ({"meta_optimizer": "rmsprop"}, "unknown meta_optimizer 'rmsprop'"),
        ({"lr_granularity": "per_row"}, "unknown lr_granularity 'per_row'"),
        ({"batch_norm": "running"}, "unknown batch_norm 'running'"),
        ({"loss": "hinge"}, "unknown loss 'hinge'"),
        ({"inner_lr": float("nan")}, "inner_lr must be finite"),
        ({"inner_lr": -0.4}, r"^inner_lr must be positive, got -0.4$"),
        ({"inner_lr": 0.0}, "inner_lr must be positive"),
        ({"algorithm": "meta_sgd", "inner_lr": -0.1}, "inner_lr must be positive"),
        ({"inner_steps": math.inf}, "inner_steps must be an integer"),
        ({"meta_lr": -1.0}, r"^meta_lr must be >= 0, got -1.0$"),
        ({"meta_lr": math.inf}, "meta_lr must be >= 0 and finite, got inf"),
        ({"meta_grad_clip": math.nan}, "meta_grad_clip must be finite"),
        ({"vmap_tasks": True, "vmap_chunk_size": math.nan}, "vmap_chunk_size must be >= 1 and finite"),
        ({"meta_grad_clip": 0.0}, "meta_grad_clip must be positive"),
        ({"multi_step_anneal_iters": -1}, "multi_step_anneal_iters must be >= 0"),
        ({"algorithm": "fomaml", "first_order": False}, "contradicts"),
        ({"algorithm": "meta_sgd", "first_order": True}, "need second-order meta-gradients"),
        ({"algorithm": "fomaml", "lr_granularity": "scalar"}, "need second-order meta-gradients"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradientMetaLearnerConfig(**kwargs)


def test_a_zero_meta_lr_is_an_untrained_baseline():
    assert GradientMetaLearnerConfig(meta_lr=0).meta_lr == 0


def test_config_from_dict_names_unknown_keys():
    with pytest.raises(ValueError, match="unknown learner key 'inner_lrr' in tasks/x.toml"):
        GradientMetaLearnerConfig.from_dict({"inner_lrr": 0.1}, "tasks/x.toml")
    cfg = GradientMetaLearnerConfig.from_dict({"algorithm": "meta_sgd"})
    assert cfg.granularity == "per_parameter" and cfg.eval_steps == 1 and not cfg.uses_first_order


def test_learned_lr_errors_and_fixed_loss_kinds():
    with pytest.raises(ValueError, match="unknown lr granularity 'x'"):
        LearnedLR({}, granularity="x")
    with pytest.raises(ValueError, match="needs steps >= 1"):
        LearnedLR({}, granularity="per_step_per_layer", steps=0)
    ce = GradientMetaLearner(tiny_mlp(), GradientMetaLearnerConfig(loss="cross_entropy"))
    assert ce.meta_train_step(classification_episodes(1, (3,))).accuracy is not None


def test_learned_lr_tensors_are_found_through_schedule_and_meta_optimizer_wrappers():
    from fewshot_metaopt import MetaOptimizer, MetaOptimizerConfig
    from fewshot_metaopt.optim import Cosine, ScheduledRule

    model = tiny_mlp()
    shapes = {n: p.shape for n, p in model.named_parameters()}
    scheduled = ScheduledRule(SGDRule.for_params(shapes, 0.1, granularity="per_parameter"), Cosine(total_steps=5))
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(), inner_optimizer=scheduled)
    assert learner.learned_lr_tensors()["0.weight"].shape == (4, 3)
    facade = MetaOptimizer(model, MetaOptimizerConfig(method="meta_sgd", inner_lr=0.3))
    wrapped = GradientMetaLearner(model, GradientMetaLearnerConfig(), inner_optimizer=facade)
    assert float(wrapped.learned_lr_tensors()["2.bias"].mean()) == pytest.approx(0.3)
