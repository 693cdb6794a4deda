"""The learned rules' chunked, batched and compiled evaluation equals their per-tensor form
(``tests/reference_rules.py``) to 1e-10 in float64: the same updates and the same
meta-gradients, whatever the chunk size; the compiled kernels give the same steps; and
chunking under autograd bounds what the backward pass keeps."""

from __future__ import annotations

import pytest
import torch

from fewshot_metaopt.checks import ConfigError
from fewshot_metaopt.optim import AdamRule, CombinerRule, L2ORule, ScalableLSTMRule, SGDRule
from fewshot_metaopt.optim.rules.coordinate_chunks import Moments, spans

from reference_rules import combiner_update, l2o_update, scalable_update

TOLERANCE = 1e-10


def shapes_params(requires_grad: bool = False) -> dict:
    """A conv kernel (factored second moment), a matrix, a vector and a scalar."""
    generator = torch.Generator().manual_seed(0)
    shapes = {"conv": (7, 3, 2, 2), "matrix": (6, 5), "bias": (5,), "scalar": ()}
    return {
        name: torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_(requires_grad)
        for name, shape in shapes.items()
    }


def gradients(params: dict, seed: int, requires_grad: bool) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(p.shape, generator=generator, dtype=torch.float64).requires_grad_(requires_grad)
        for name, p in params.items()
    }


def randomised(rule):
    """The rule in float64 with every meta-parameter drawn at a scale that makes each term matter."""
    rule = rule.double()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in rule.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * 0.5)
    return rule


def two_steps(update, rule, params, grads, loss=None):
    state = rule.init(params)
    kwargs = {} if loss is None else {"loss": loss}
    once, state = update(rule, params, grads[0], state, 0, **kwargs)
    twice, state = update(rule, once, grads[1], state, 1, **kwargs)
    return twice, state


def chunked(rule, params, grads, state, step, **kwargs):
    return rule.update(params, grads, state, step, **kwargs)


def assert_same_steps_and_meta_gradients(rule, reference, loss=None):
    params = shapes_params(requires_grad=True)
    grads = [gradients(params, seed, requires_grad=True) for seed in (2, 3)]
    new, _ = two_steps(chunked, rule, params, grads, loss)
    expected, _ = two_steps(reference, rule, params, grads, loss)
    for name in params:
        assert torch.allclose(new[name], expected[name], rtol=0, atol=TOLERANCE), name
    inputs = [*rule.parameters(), *params.values(), *grads[0].values(), *grads[1].values()]
    objective = lambda values: sum((v.sin() * (k + 1)).sum() for k, v in enumerate(values.values()))  # noqa: E731
    got = torch.autograd.grad(objective(new), inputs, allow_unused=True)
    want = torch.autograd.grad(objective(expected), inputs, allow_unused=True)
    compared = 0
    for a, b in zip(got, want):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, rtol=0, atol=TOLERANCE)
            compared += 1
    assert compared > len(list(rule.parameters()))  # the rule's parameters and the inputs' gradients


@pytest.mark.parametrize("chunk_size", [1 << 16, 5, 1])
@pytest.mark.parametrize("second_order", [False, True])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_scalable_lstm_chunks_equal_the_per_tensor_form(chunk_size, second_order, activation):
    rule = randomised(ScalableLSTMRule(hidden_size=4, mlp_hidden=3, init="random", chunk_size=chunk_size,
                                       second_order=second_order, activation=activation))
    assert_same_steps_and_meta_gradients(rule, scalable_update)


def test_scalable_lstm_descent_init_chunks_equal_the_per_tensor_form():
    rule = ScalableLSTMRule(hidden_size=4, mlp_hidden=3, chunk_size=4).double()
    assert_same_steps_and_meta_gradients(rule, scalable_update)


@pytest.mark.parametrize("chunk_size", [1 << 16, 5])
@pytest.mark.parametrize("hidden_layers", [0, 1, 2])
def test_l2o_chunks_equal_the_per_tensor_form(chunk_size, hidden_layers):
    rule = randomised(L2ORule(hidden_size=5, hidden_layers=hidden_layers, init="random", chunk_size=chunk_size,
                              step_mult=0.1, exp_mult=0.3))
    assert_same_steps_and_meta_gradients(rule, l2o_update)


@pytest.mark.parametrize("chunk_size", [1 << 16, 5])
@pytest.mark.parametrize("hidden", [(4,), (4, 3)])
def test_combiner_chunks_equal_the_per_tensor_form(chunk_size, hidden):
    params = shapes_params()
    rule = randomised(CombinerRule([SGDRule.for_params(params, lr=0.1), AdamRule(lr=0.01)], hidden=hidden,
                                   chunk_size=chunk_size))
    assert_same_steps_and_meta_gradients(rule, combiner_update, loss=torch.tensor(0.7, dtype=torch.float64))


def compiled_pair(rule):
    """The compiled rule's two steps and the reference's, without autograd."""
    params = shapes_params()
    grads = [gradients(params, seed, requires_grad=False) for seed in (2, 3)]
    with torch.no_grad():
        return two_steps(chunked, rule, params, grads)[0], two_steps(
            lambda r, *a, **k: reference_of(r)(r, *a, **k), rule, params, grads)[0]


def reference_of(rule):
    return scalable_update if isinstance(rule, ScalableLSTMRule) else l2o_update


@pytest.mark.parametrize("make", [
    lambda: ScalableLSTMRule(hidden_size=4, mlp_hidden=3, init="random", compile=True),
    lambda: ScalableLSTMRule(hidden_size=4, mlp_hidden=3, init="random", compile=True, activation="relu"),
    lambda: L2ORule(hidden_size=4, hidden_layers=1, init="random", compile=True, step_mult=0.1, exp_mult=0.3),
    lambda: L2ORule(hidden_size=4, hidden_layers=0, init="random", compile=True, step_mult=0.1, exp_mult=0.3),
], ids=["scalable-tanh", "scalable-relu", "l2o-1-layer", "l2o-readout-only"])
def test_compiled_steps_equal_the_per_tensor_form(make):
    rule = randomised(make())
    new, expected = compiled_pair(rule)
    for name in new:
        assert torch.allclose(new[name], expected[name], rtol=0, atol=TOLERANCE), name
    assert set(rule.get_learned_lr()) == set(new)


@pytest.mark.parametrize("make", [
    lambda: ScalableLSTMRule(hidden_size=4, mlp_hidden=3, init="random", compile=True),
    lambda: L2ORule(hidden_size=4, hidden_layers=1, init="random", compile=True, step_mult=0.1, exp_mult=0.3),
    lambda: L2ORule(hidden_size=4, hidden_layers=0, init="random", compile=True, step_mult=0.1, exp_mult=0.3),
    lambda: ScalableLSTMRule(hidden_size=4, mlp_hidden=3, init="random", chunk_size=5),
    lambda: L2ORule(hidden_size=4, init="random", chunk_size=5, step_mult=0.1, exp_mult=0.3),
], ids=["scalable", "l2o-1-layer", "l2o-readout-only", "scalable-eager-chunks", "l2o-eager-chunks"])
def test_fused_kernels_run_as_plain_torch_equal_the_per_tensor_form(make, monkeypatch):
    """The fused kernels' own math, run without ``torch.compile`` (so the line coverage sees
    it and a failure points at the math, not the compiler); and the eager chunks without
    autograd."""
    rule = randomised(make())
    monkeypatch.setattr(rule, "_compiled", lambda fn: fn)
    new, expected = compiled_pair(rule)
    for name in new:
        assert torch.allclose(new[name], expected[name], rtol=0, atol=TOLERANCE), name


def test_compiled_rules_run_eagerly_under_autograd_and_report_the_same_learned_lr():
    """A compiled rule still meta-trains: with autograd on it takes the eager path."""
    rule = randomised(ScalableLSTMRule(hidden_size=4, mlp_hidden=3, init="random", compile=True))
    params = shapes_params(requires_grad=True)
    grads = gradients(params, 2, requires_grad=False)
    new, _ = rule.update(params, grads, rule.init(params), 0)
    assert new["matrix"].grad_fn is not None
    eager_lr = rule.get_learned_lr()
    with torch.no_grad():
        rule.update({n: p.detach() for n, p in params.items()}, grads, rule.init(params), 0)
    fused_lr = rule.get_learned_lr()
    for name in eager_lr:
        assert fused_lr[name] == pytest.approx(eager_lr[name], rel=1e-10)


@pytest.mark.parametrize("make", [
    lambda: ScalableLSTMRule(hidden_size=4, mlp_hidden=3, compile=True),
    lambda: L2ORule(hidden_size=4, hidden_layers=1, compile=True),
])
def test_compiled_steps_refuse_non_finite_gradients_naming_the_tensor(make):
    rule = make().double()
    params = shapes_params()
    grads = gradients(params, 2, requires_grad=False)
    grads["bias"][1] = float("nan")
    with torch.no_grad(), pytest.raises(ValueError, match="gradient of 'bias' has non-finite values"):
        rule.update(params, grads, rule.init(params), 0)


def saved_bytes(rule, chunk_size: int) -> int:
    """Bytes autograd keeps for the backward pass of one step on a 4096-coordinate tensor."""
    rule.chunk_size = chunk_size
    params = {"w": torch.randn(64, 64, dtype=torch.float64, requires_grad=True)}
    grads = {"w": torch.randn(64, 64, dtype=torch.float64)}
    seen: dict[int, int] = {}

    def pack(t):
        seen[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        rule.update(params, grads, rule.init(params), 0)
    return sum(seen.values())


@pytest.mark.parametrize("make", [
    lambda: ScalableLSTMRule(mlp_hidden=16),
    lambda: L2ORule(),
    lambda: CombinerRule([SGDRule.for_params({"w": torch.zeros(64, 64)}, lr=0.1), AdamRule()], hidden=(32,)),
])
def test_chunks_under_autograd_keep_their_inputs_not_their_activations(make):
    rule = make().double()
    whole, chunks = saved_bytes(rule, 1 << 16), saved_bytes(rule, 512)
    # whole: ~2 * width activations per coordinate kept; chunks: the inputs of each chunk
    assert chunks < 0.5 * whole, (chunks, whole)


def test_bf16_products_stay_close_to_float32():
    params = {"w": torch.randn(32, 16), "b": torch.randn(16)}
    grads = {n: torch.randn_like(p) * 1e-2 for n, p in params.items()}
    for make in (lambda **k: ScalableLSTMRule(init="random", **k),
                 lambda **k: L2ORule(init="random", step_mult=0.1, exp_mult=0.3, **k)):
        torch.manual_seed(0)
        full = make()
        low = make(network_precision="bf16")
        low.load_state_dict(full.state_dict())
        a, _ = full.update(params, grads, full.init(params), 0)
        b, _ = low.update(params, grads, low.init(params), 0)
        step_a, step_b = a["w"] - params["w"], b["w"] - params["w"]
        assert not torch.equal(step_a, step_b)  # the bf16 path ran
        assert (step_a - step_b).norm() < 0.05 * step_a.norm()


def test_moments_of_chunks_equal_those_of_the_whole():
    x = torch.randn(1000, 3, dtype=torch.float64) * 5 + 3
    moments = Moments()
    for start, stop in spans(1000, 97):
        piece = x[start:stop]
        mean = piece.mean(0)
        moments.add(mean, (piece - mean).square().sum(0), stop - start)
    assert torch.allclose(moments.mean, x.mean(0), atol=1e-12)
    assert torch.allclose(moments.variance(), x.var(0, correction=0), atol=1e-10)
    assert spans(0, 4) == [(0, 0)]


def test_bad_evaluation_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="chunk_size"):
        ScalableLSTMRule(chunk_size=0)
    with pytest.raises(ConfigError, match="network_precision"):
        L2ORule(network_precision="fp16")
    with pytest.raises(ConfigError, match="activation"):
        ScalableLSTMRule(activation="gelu")
    with pytest.raises(ValueError, match="hidden_layers=2"):
        L2ORule(compile=True)
    with pytest.raises(ConfigError, match="chunk_size"):
        CombinerRule([AdamRule()], chunk_size=-1)


def test_rule_options_reach_the_rule_and_bad_ones_name_the_key():
    from fewshot_metaopt import MetaOptimizer, MetaOptimizerConfig

    model = torch.nn.Linear(3, 2)
    config = MetaOptimizerConfig(method="lstm", lstm_variant="scalable",
                                 rule_options={"mlp_hidden": 4, "activation": "relu", "chunk_size": 128})
    rule = MetaOptimizer(model, config).rule
    assert (rule.mlp_hidden, rule.activation, rule.chunk_size) == (4, "relu", 128)
    l2o = MetaOptimizer(model, MetaOptimizerConfig(method="l2o", num_layers=1, rule_options={"compile": True})).rule
    assert l2o.compile
    with pytest.raises(ConfigError, match="'bogus' is not an option of method 'lstm'"):
        MetaOptimizer(model, MetaOptimizerConfig(method="lstm", rule_options={"bogus": 1}))
    with pytest.raises(ConfigError, match="'hidden_size' is set by the config itself"):
        MetaOptimizer(model, MetaOptimizerConfig(method="l2o", rule_options={"hidden_size": 3}))
    with pytest.raises(ConfigError, match="'compile' is not an option of method 'meta_sgd'"):
        MetaOptimizer(model, MetaOptimizerConfig(method="meta_sgd", rule_options={"compile": True}))
    with pytest.raises(ConfigError, match="rule_options must be a mapping"):
        MetaOptimizerConfig(rule_options=["compile"])
    assert MetaOptimizer(model, MetaOptimizerConfig(rule_options={"steps": 2})).rule.lrs.steps == 2
