"""The torch.func engine against the higher engine: float64 meta-gradients that agree to 1e-10
of their scale (MAML, first order, Meta-SGD, several steps, batch norm, learned rules), vmapped
chunks against the loop, the lowered forward pass against the module, and the engine choice."""

import pytest
import torch
from torch import nn

from fewshot_metaopt import Episode, GradientMetaLearner, GradientMetaLearnerConfig
from fewshot_metaopt.engines import AdaptedModel, FuncEngine, functional_forward
from fewshot_metaopt.engines.functional_model import _elementary_batch_norm
from fewshot_metaopt.learners import NonFiniteLossError
from fewshot_metaopt.models import conv4
from fewshot_metaopt.optim import SGDRule
from fewshot_metaopt.optim.rules import AdamRule, ScalableLSTMRule
from learner_fixtures import classification_episodes, tiny_convnet, tiny_mlp

RTOL = 1e-10


def tiny_conv4() -> nn.Sequential:
    """conv4 itself, narrow: a one-channel first convolution (the unfolded path), batch norm,
    ReLU before max pooling (the swapped pair) and channels_last activations."""
    torch.manual_seed(2)
    return conv4(2, in_channels=1, hidden=3, image_size=16).double()


MODELS = {
    "mlp": (tiny_mlp, (3,)),
    "conv_bn_tanh": (tiny_convnet, (1, 4, 4)),
    "conv4": (tiny_conv4, (1, 16, 16)),
}


def meta_gradient(make_model, input_shape, tasks=3, rule=None, **settings):
    model = make_model()
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(inner_lr=0.3, **settings), inner_optimizer=rule)
    result = learner.accumulate_meta_gradient(classification_episodes(tasks, input_shape))
    tensors = list(model.parameters()) + list(learner.rule.parameters())
    return [torch.zeros_like(t) if t.grad is None else t.grad.clone() for t in tensors], result


def assert_same_meta_gradient(got, expected):
    """Every coordinate within 1e-10 of the meta-gradient's scale; exact zeros (a conv bias
    under batch norm) are rounding noise in both, so a per-tensor ratio would mean nothing."""
    scale = max(float(g.abs().max()) for g in expected)
    assert scale > 1e-3
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=RTOL, atol=RTOL * scale)


def compare_engines(make_model, input_shape, make_rule=None, **settings):
    results = {}
    for engine in ("higher", "func"):
        rule = None if make_rule is None else make_rule()
        results[engine] = meta_gradient(make_model, input_shape, rule=rule, engine=engine, **settings)
    (func, func_result), (ref, ref_result) = results["func"], results["higher"]
    assert_same_meta_gradient(func, ref)
    assert func_result.loss == pytest.approx(ref_result.loss, rel=1e-12)
    assert func_result.accuracy == ref_result.accuracy
    return func


# ------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize(
    "settings",
    [
        {"algorithm": "maml"},
        {"algorithm": "fomaml"},
        {"algorithm": "meta_sgd"},
        {"algorithm": "maml", "inner_steps": 3},
        {"algorithm": "maml", "inner_steps": 3, "multi_step_loss": True},
        {"algorithm": "anil", "inner_steps": 2},
        {"algorithm": "maml", "inner_steps": 2, "lr_granularity": "per_step_per_layer"},
    ],
    ids=lambda s: "-".join(f"{v}" for v in s.values()),
)
def test_func_engine_meta_gradients_match_higher(model, settings):
    make_model, shape = MODELS[model]
    compare_engines(make_model, shape, **settings)


@pytest.mark.parametrize(
    "make_rule, learned",
    [
        (lambda: ScalableLSTMRule(hidden_size=4, mlp_hidden=3, init="random"), True),
        (lambda: ScalableLSTMRule(hidden_size=4, mlp_hidden=3, init="random", second_order=True), True),
        (lambda: AdamRule(lr=0.05), False),
    ],
    ids=["scalable_lstm", "scalable_lstm_second_order", "adam"],
)
def test_learned_and_stateful_rules_give_the_same_meta_gradients(make_rule, learned):
    def seeded():
        torch.manual_seed(3)
        return make_rule()

    grads = compare_engines(tiny_conv4, (1, 16, 16), make_rule=seeded, inner_steps=2)
    rule_grads = grads[len(list(tiny_conv4().parameters())):]
    assert len(rule_grads) == len(list(seeded().parameters()))
    if learned:  # the LSTM's own weights get their meta-gradient, the same in both engines
        assert any(float(g.abs().max()) > 0 for g in rule_grads)


def test_first_order_differs_from_second_order():
    """The parity above is not vacuous: the two orders give different meta-gradients."""
    first, _ = meta_gradient(tiny_conv4, (1, 16, 16), algorithm="fomaml", engine="func")
    second, _ = meta_gradient(tiny_conv4, (1, 16, 16), algorithm="maml", engine="func")
    assert any(not torch.allclose(a, b, rtol=1e-3) for a, b in zip(first, second))


# ---------------------------------------------------------------------------- vmapped tasks


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize(
    "settings",
    [{"algorithm": "maml", "inner_steps": 2}, {"algorithm": "fomaml"}, {"algorithm": "meta_sgd"},
     {"algorithm": "maml", "inner_steps": 3, "multi_step_loss": True}],
    ids=lambda s: "-".join(f"{v}" for v in s.values()),
)
def test_vmapped_chunks_match_the_loop_and_each_other(model, settings):
    make_model, shape = MODELS[model]
    loop, loop_result = meta_gradient(make_model, shape, tasks=5, engine="func", **settings)
    whole, whole_result = meta_gradient(make_model, shape, tasks=5, vmap_tasks=True, **settings)
    chunked, chunked_result = meta_gradient(make_model, shape, tasks=5, vmap_tasks=True, vmap_chunk_size=2, **settings)
    assert_same_meta_gradient(whole, loop)
    assert_same_meta_gradient(chunked, whole)
    assert loop_result.loss == pytest.approx(whole_result.loss, rel=1e-12) == chunked_result.loss
    assert loop_result.accuracy == whole_result.accuracy == chunked_result.accuracy


def test_vmapped_batch_norm_keeps_second_order_exact():
    """torch.func's batching rule for batch norm's backward is wrong at second order; the
    vmapped forward writes batch norm out in elementary ops, which the higher engine matches."""
    higher, _ = meta_gradient(tiny_convnet, (1, 4, 4), engine="higher", inner_steps=2)
    vmapped, _ = meta_gradient(tiny_convnet, (1, 4, 4), vmap_tasks=True, inner_steps=2)
    assert_same_meta_gradient(vmapped, higher)


def poisoned(episodes, task):
    bad = episodes[task].support_x.clone()
    bad[0] = float("nan")
    episodes[task] = Episode(bad, episodes[task].support_y, episodes[task].query_x, episodes[task].query_y)
    return episodes


def test_vmapped_nonfinite_tasks_raise_by_name_or_are_skipped_exactly():
    episodes = poisoned(classification_episodes(4, (1, 4, 4)), task=2)
    config = dict(vmap_tasks=True, vmap_chunk_size=3, inner_lr=0.3)
    with pytest.raises(NonFiniteLossError, match="task 2: support loss is nan at inner step 0"):
        GradientMetaLearner(tiny_convnet(), GradientMetaLearnerConfig(**config)).meta_train_step(episodes)
    skipping = GradientMetaLearner(tiny_convnet(), GradientMetaLearnerConfig(skip_nonfinite_tasks=True, **config))
    result = skipping.accumulate_meta_gradient(episodes)
    assert (result.tasks, result.skipped_tasks) == (3, 1)
    reference = GradientMetaLearner(tiny_convnet(), GradientMetaLearnerConfig(inner_lr=0.3))
    reference.accumulate_meta_gradient([episodes[0], episodes[1], episodes[3]])
    got = [p.grad for p in skipping.model.parameters()]
    assert_same_meta_gradient(got, [p.grad for p in reference.model.parameters()])
    with pytest.raises(FloatingPointError, match="all 1 tasks had non-finite losses"):
        skipping.meta_train_step([episodes[2]])


def test_vmapped_nonfinite_query_is_caught_after_the_loop():
    episodes = classification_episodes(2, (3,))
    bad = episodes[1].query_x.clone()
    bad[0] = float("nan")
    episodes[1] = Episode(episodes[1].support_x, episodes[1].support_y, bad, episodes[1].query_y)
    learner = GradientMetaLearner(tiny_mlp(), GradientMetaLearnerConfig(vmap_tasks=True))
    with pytest.raises(NonFiniteLossError, match="task 1: query loss is nan at inner step 1"):
        learner.meta_train_step(episodes)


def test_vmapped_bad_input_is_named_before_vmap_runs():
    learner = GradientMetaLearner(tiny_mlp(), GradientMetaLearnerConfig(vmap_tasks=True))
    episodes = classification_episodes(3, (3,))
    episodes[2] = Episode(episodes[2].support_x, episodes[2].support_y + 1, episodes[2].query_x, episodes[2].query_y)
    with pytest.raises(ValueError, match="task 2: support label 2 is out of range for a model with 2 outputs"):
        learner.meta_train_step(episodes)
    episodes = classification_episodes(2, (3,))
    episodes[1] = Episode(episodes[1].support_x, episodes[1].support_y, episodes[1].query_x, episodes[1].query_y + 5)
    with pytest.raises(ValueError, match="task 1: query label"):
        learner.meta_train_step(episodes)
    with pytest.raises(ValueError, match=r"task 0: support inputs of shape \(4, 5\) do not fit the model"):
        learner.meta_train_step(classification_episodes(2, (5,)))
    mixed = classification_episodes(1, (3,)) + classification_episodes(1, (3,), shots=3)
    shapes = r"same-shaped tasks together: task 1 has support_x of shape \(6, 3\), task 0 has \(4, 3\)"
    with pytest.raises(ValueError, match=shapes):
        learner.meta_train_step(mixed)


class Partly(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x):
        return self.used(x)


@pytest.mark.parametrize("settings", [{"engine": "higher"}, {"engine": "func"}, {"vmap_tasks": True}])
def test_unused_parameters_are_named_by_every_engine(settings):
    torch.manual_seed(0)
    learner = GradientMetaLearner(Partly().double(), GradientMetaLearnerConfig(**settings))
    with pytest.raises(ValueError, match=r"parameters \['unused.weight', 'unused.bias'\] get no gradient"):
        learner.meta_train_step(classification_episodes(1, (3,)))


@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
def test_allowed_unused_parameters_keep_their_values_in_both_engines(algorithm):
    grads = {}
    for engine in ("higher", "func"):
        torch.manual_seed(0)
        model = Partly().double()
        config = GradientMetaLearnerConfig(algorithm=algorithm, engine=engine, allow_unused=True)
        learner = GradientMetaLearner(model, config)
        learner.accumulate_meta_gradient(classification_episodes(2, (3,)))
        assert model.unused.weight.grad is None
        grads[engine] = [model.used.weight.grad, model.used.bias.grad]
    assert_same_meta_gradient(grads["func"], grads["higher"])


def test_vmapped_regression_and_fixed_loss_kinds():
    g = torch.Generator().manual_seed(0)
    points = lambda n: torch.randn(n, 1, generator=g, dtype=torch.float64)  # noqa: E731
    episodes = [Episode(points(5), points(5), points(4), points(4)) for _ in range(3)]

    def regression(**settings):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).double()
        learner = GradientMetaLearner(model, GradientMetaLearnerConfig(inner_lr=0.1, **settings))
        result = learner.accumulate_meta_gradient(episodes)
        return [p.grad for p in model.parameters()], result

    loop, loop_result = regression(engine="higher")
    vmapped, vmapped_result = regression(vmap_tasks=True, loss="mse")
    assert_same_meta_gradient(vmapped, loop)
    assert vmapped_result.accuracy is None and vmapped_result.loss == pytest.approx(loop_result.loss, rel=1e-12)
    ce, _ = meta_gradient(tiny_mlp, (3,), vmap_tasks=True, loss="cross_entropy")
    auto, _ = meta_gradient(tiny_mlp, (3,), vmap_tasks=True)
    assert_same_meta_gradient(ce, auto)


# -------------------------------------------------------------------- adaptation and evaluation


def test_adapted_model_behaves_like_highers():
    episode = classification_episodes(1, (1, 16, 16))[0]
    adapted = {}
    for engine in ("higher", "func"):
        config = GradientMetaLearnerConfig(inner_lr=0.3, inner_steps=2, engine=engine)
        learner = GradientMetaLearner(tiny_conv4(), config)
        adapted[engine] = learner.adapt(episode)
    func, ref = adapted["func"], adapted["higher"]
    assert isinstance(func, AdaptedModel)
    for a, b in zip(func.fast_params, ref.fast_params):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        assert not a.requires_grad  # evaluation keeps no graph
    torch.testing.assert_close(func(episode.query_x), ref(episode.query_x), rtol=1e-12, atol=1e-12)
    other = [1.1 * p for p in func.fast_params]
    torch.testing.assert_close(func(episode.query_x, params=other), ref(episode.query_x, params=other))
    assert not torch.allclose(func(episode.query_x, params=other), func(episode.query_x))


def test_differentiable_adaptation_reaches_the_initial_weights():
    model = tiny_mlp()
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(inner_lr=0.3))
    fmodel = learner.adapt(classification_episodes(1, (3,))[0], differentiable=True)
    fmodel(torch.ones(2, 3, dtype=torch.float64)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_evaluation_agrees_between_engines_and_leaves_running_statistics_alone():
    def model():
        torch.manual_seed(4)
        return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double()

    episodes = classification_episodes(3, (3,))
    results = {}
    for engine in ("higher", "func"):
        m = model()
        before = {k: v.clone() for k, v in m.state_dict().items()}
        learner = GradientMetaLearner(m, GradientMetaLearnerConfig(inner_lr=0.5, inner_steps=2, engine=engine))
        results[engine] = learner.evaluate(episodes)
        m.eval()  # running statistics in use from here on
        results[engine + "-eval"] = learner.evaluate(episodes)
        assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert results["func"].losses == pytest.approx(results["higher"].losses, rel=1e-12)
    assert results["func-eval"].losses == pytest.approx(results["higher-eval"].losses, rel=1e-12)
    assert results["func"].losses != pytest.approx(results["func-eval"].losses)


def test_inner_loop_and_vmapped_reject_unknown_modes():
    engine = FuncEngine(tiny_mlp(), SGDRule.for_params({"0.bias": (4,)}, 0.1), ["0.bias"])
    with pytest.raises(ValueError, match="unknown inner-loop mode 'third_order'"):
        engine.inner_loop(1, "third_order", lambda fmodel, step: fmodel(torch.ones(2, 3)).sum())
    x = torch.ones(2, 3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="vmapped inner loops are for meta-training; got mode 'eval'"):
        engine.vmapped(x, torch.zeros(2, 3, dtype=torch.long), x, torch.zeros(2, 3, dtype=torch.long), 1, "eval",
                       nn.functional.cross_entropy)


# ------------------------------------------------------------------------- the lowered forward


class Scale(nn.Module):
    """A layer the lowering does not know, with a parameter and a buffer it writes."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(1.5))
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return x * self.gain


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 4)

    def forward(self, x):
        return x + self.body(x)


def lowered_cases():
    torch.manual_seed(5)
    shared = nn.Linear(4, 4)
    return {
        "conv4-ish": (nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3, affine=False), nn.ReLU(),
                          nn.MaxPool2d(2)),
            nn.Conv2d(3, 2, 3, stride=2, padding=1, padding_mode="reflect"), nn.BatchNorm2d(2),
            nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(), nn.Dropout(0.0), nn.Linear(2, 3),
        ), (5, 1, 8, 8)),
        "strided unfolded conv": (nn.Sequential(nn.Conv2d(1, 2, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
                                                nn.Flatten()), (3, 1, 7, 7)),
        "unknown layer": (nn.Sequential(nn.Linear(3, 4), Scale(), nn.Tanh(), nn.Linear(4, 2, bias=False)), (6, 3)),
        "tied weights": (nn.Sequential(shared, nn.ReLU(), shared), (6, 4)),
        "not a Sequential": (Residual(), (6, 4)),
        "unbatched conv": (nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Tanh()), (2, 5, 5)),
    }


@pytest.mark.parametrize("name", sorted(lowered_cases()))
@pytest.mark.parametrize("for_vmap", [False, True])
def test_lowered_forward_equals_the_module_and_writes_no_buffer(name, for_vmap):
    model, shape = lowered_cases()[name]
    model = model.double()
    x = torch.randn(*shape, dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    got = functional_forward(model, for_vmap=for_vmap)(params, x)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    torch.testing.assert_close(got, model(x), rtol=1e-12, atol=1e-12)
    doubled = {n: 2 * p for n, p in params.items()}
    assert not torch.allclose(functional_forward(model, for_vmap=for_vmap)(doubled, x), got)


def test_hooked_models_run_whole_so_their_hooks_fire():
    model = nn.Sequential(nn.Linear(3, 2)).double()
    seen = []
    model[0].register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    functional_forward(model)(dict(model.named_parameters()), torch.ones(4, 3, dtype=torch.float64))
    assert seen == [torch.Size([4, 2])]


def test_elementary_batch_norm_matches_torch_with_and_without_running_statistics():
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    mean, var = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5
    weight, bias = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    F = nn.functional
    torch.testing.assert_close(_elementary_batch_norm(x, None, None, weight, bias, 1e-5),
                               F.batch_norm(x, None, None, weight, bias, True, 0.0, 1e-5))
    torch.testing.assert_close(_elementary_batch_norm(x, mean, var, None, None, 1e-5),
                               F.batch_norm(x, mean, var, None, None, False, 0.0, 1e-5))


# ----------------------------------------------------------------------------- engine choice


def test_engine_choice_from_config():
    maml = GradientMetaLearner(tiny_mlp(), GradientMetaLearnerConfig())
    assert maml.config.engine == "auto" and maml.config.inner_engine == "func"
    assert isinstance(maml.func_engine, FuncEngine)
    assert GradientMetaLearner(tiny_mlp(), GradientMetaLearnerConfig(engine="higher")).func_engine is None
    assert GradientMetaLearnerConfig(algorithm="warp_maml").inner_engine == "higher"
    assert GradientMetaLearnerConfig(algorithm="warp_leap", engine="higher").inner_engine == "higher"
    from_file = GradientMetaLearnerConfig.from_dict({"engine": "func", "vmap_tasks": True, "vmap_chunk_size": 4})
    assert from_file.inner_engine == "func" and from_file.vmap_chunk_size == 4


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"engine": "jax"}, "unknown engine 'jax'; choose one of auto, higher, func"),
        ({"engine": "functorch"}, "unknown engine 'functorch'"),
        ({"engine": "func", "algorithm": "warp_maml"}, "'warp_maml' runs on the higher engine only"),
        ({"engine": "higher", "vmap_tasks": True}, "vmap_tasks needs the func engine"),
        ({"algorithm": "warp_leap", "vmap_tasks": True}, "vmap_tasks needs the func engine"),
        ({"vmap_tasks": True, "allow_unused": True}, "cannot tell an unused parameter from a zero gradient"),
        ({"vmap_chunk_size": 2}, "vmap_chunk_size must be >= 1 and needs vmap_tasks=True, got 2"),
        ({"vmap_tasks": True, "vmap_chunk_size": 0}, "vmap_chunk_size must be >= 1"),
    ],
)
def test_bad_engine_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        GradientMetaLearnerConfig(**settings)


def test_the_lowered_forward_keeps_float32_meta_gradients_close_to_float64():
    """At MAML's 20-way 5-step setting on Omniglot-like images (white backgrounds), the
    float32 meta-gradient of the default (lowered) forward agrees with float64: the batch norm
    after the first layer must not run on ATen's less precise channels_last CPU kernel."""
    import copy

    from fewshot_metaopt.datasets import Glyphs
    from fewshot_metaopt.episodes import TaskDistributionSampler
    from fewshot_metaopt.models import conv4

    source = Glyphs("train", num_characters=40, samples_per_class=4, image_size=28)
    episode = TaskDistributionSampler(source, ways=20, shots=1, queries=2, seed=0).sample()
    torch.manual_seed(0)
    model = conv4(20, hidden=64)
    grads = {}
    for dtype in (torch.float32, torch.float64):
        learner = GradientMetaLearner(copy.deepcopy(model).to(dtype),
                                      GradientMetaLearnerConfig(inner_lr=0.1, inner_steps=5, engine="func"))
        cast = type(episode)(episode.support_x.to(dtype), episode.support_y, episode.query_x.to(dtype),
                             episode.query_y, episode.classes)
        learner.accumulate_meta_gradient([cast])
        grads[dtype] = torch.cat([p.grad.reshape(-1).double() for p in learner.meta_parameters])
    cosine = float(torch.nn.functional.cosine_similarity(grads[torch.float32], grads[torch.float64], dim=0))
    assert cosine > 0.999
