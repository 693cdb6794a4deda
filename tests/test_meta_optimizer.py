"""The Phase 50.4 MetaOptimizer facade: spec API, truncated BPTT, and its place in the learners."""

import math

import higher
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_metaopt import (
    GradientMetaLearner,
    GradientMetaLearnerConfig,
    MetaOptimizer,
    MetaOptimizerConfig,
    OptimizerState,
    TaskDistributionSampler,
)
from fewshot_metaopt.datasets import Sinusoid
from fewshot_metaopt.engines import RuleOptimizer
from fewshot_metaopt.models import mlp
from learner_fixtures import classification_episodes, tiny_mlp


def grads_of(model: nn.Module, episode) -> dict:
    loss = F.cross_entropy(model(episode.support_x), episode.support_y)
    names = [n for n, _ in model.named_parameters()]
    return dict(zip(names, torch.autograd.grad(loss, list(model.parameters()))))


def sinusoid_episodes(n, shots=10, seed=0):
    return TaskDistributionSampler(Sinusoid(), shots=shots, queries=10, seed=seed).sample_batch(n)


def test_meta_sgd_compute_update_and_learned_lr_for_known_alpha():
    model = tiny_mlp()
    mo = MetaOptimizer(model, MetaOptimizerConfig(method="meta_sgd", inner_lr=0.05))
    assert mo.get_learned_lr() == {n: pytest.approx(0.05) for n, _ in model.named_parameters()}
    g = grads_of(model, classification_episodes(1, (3,))[0])
    updates, state = mo.compute_update(g, None)
    for name, grad in g.items():
        torch.testing.assert_close(updates[name], -0.05 * grad)
    assert isinstance(state, OptimizerState) and state.step_count == 1
    assert state.per_param_lr["0.weight"].shape == (4, 3) and state.hidden is None
    scalar = MetaOptimizer(model, MetaOptimizerConfig(method="meta_sgd", inner_lr=0.05, preconditioning=False))
    assert len(list(scalar.parameters())) == 1


def test_lstm_state_fields_and_reset_restores_the_initial_state():
    model = tiny_mlp()
    torch.manual_seed(0)
    mo = MetaOptimizer(model, MetaOptimizerConfig(method="lstm", rule_init="random"))
    g = grads_of(model, classification_episodes(1, (3,))[0])
    first, state = mo.compute_update(g)
    coordinates = sum(p.numel() for p in model.parameters())
    assert state.hidden.shape == state.cell.shape == (2, coordinates, 20)
    second, state2 = mo.compute_update(g)  # continues from the stored state
    assert state2.step_count == 2
    assert any(not torch.allclose(first[n], second[n]) for n in g)
    mo.reset_optimizer_state()
    again, state3 = mo.compute_update(g)
    assert state3.step_count == 1
    for n in g:
        torch.testing.assert_close(again[n], first[n])
    explicit, _ = mo.compute_update(g, state)  # an explicit state wins over the stored one
    for n in g:
        torch.testing.assert_close(explicit[n], second[n])
    assert set(mo.get_learned_lr()) == set(g)


@pytest.mark.parametrize("method, variant", [("lstm", "scalable"), ("l2o", "faithful")])
def test_other_methods_produce_updates(method, variant):
    model = tiny_mlp()
    mo = MetaOptimizer(model, MetaOptimizerConfig(method=method, lstm_variant=variant))
    g = grads_of(model, classification_episodes(1, (3,))[0])
    updates, state = mo.compute_update(g)
    assert set(updates) == set(g) and all(torch.isfinite(u).all() for u in updates.values())
    assert state.hidden is None


def test_bad_gradients_are_named():
    model = tiny_mlp()
    mo = MetaOptimizer(model, MetaOptimizerConfig(method="lstm"))
    with pytest.raises(ValueError, match="gradient for 'nope', which is not a parameter"):
        mo.compute_update({"nope": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"gradient for '0.bias' has shape \(3,\), the parameter \(4,\)"):
        mo.compute_update({"0.bias": torch.zeros(3, dtype=torch.float64)})
    with pytest.raises(ValueError, match="0.bias"):
        mo.compute_update({"0.bias": torch.full((4,), math.nan, dtype=torch.float64)})
    with pytest.raises(ValueError, match="no parameters to optimise"):
        MetaOptimizer(nn.ReLU())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "adam"}, "unknown method 'adam'; choose one of meta_sgd, lstm, l2o, warp_grad"),
        ({"method": "warp_grad", "warp_buffer_size": 0}, "warp_buffer_size must be >= 1, got 0"),
        ({"lstm_variant": "huge"}, "unknown lstm_variant 'huge'"),
        ({"meta_loss": "val"}, "unknown meta_loss 'val'"),
        ({"rule_init": "zeros"}, "unknown rule_init 'zeros'; choose one of descent, random"),
        ({"coordinatewise": False}, "every learned optimizer here is coordinatewise"),
        ({"method": "lstm", "preconditioning": False}, "applies to meta_sgd only"),
        ({"unroll_steps": 0}, "unroll_steps must be >= 1"),
        ({"gradient_clipping": -1.0}, "gradient_clipping must be >= 0"),
        ({"gradient_clipping": math.inf}, "gradient_clipping must be >= 0 and finite, got inf"),
        ({"meta_lr": -1.0}, r"^meta_lr must be positive, got -1.0$"),
        ({"meta_lr": math.nan}, "meta_lr must be finite, got nan"),
        ({"inner_lr": 0.0}, "inner_lr must be positive, got 0.0"),
        ({"method": "lstm", "output_scale": -0.1}, "output_scale must be positive, got -0.1"),
        ({"hidden_size": math.inf}, "hidden_size must be >= 1 and finite, got inf"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MetaOptimizerConfig(**kwargs)


def test_spec_defaults_and_from_dict():
    cfg = MetaOptimizerConfig()
    assert (cfg.method, cfg.hidden_size, cfg.num_layers, cfg.preconditioning, cfg.coordinatewise,
            cfg.meta_lr, cfg.unroll_steps, cfg.gradient_clipping) == ("meta_sgd", 20, 2, True, True, 0.001, 20, 1.0)
    assert MetaOptimizerConfig.from_dict({"method": "l2o"}).method == "l2o"
    with pytest.raises(ValueError, match="unknown meta-optimizer key 'methd' in tasks/x.toml"):
        MetaOptimizerConfig.from_dict({"methd": "l2o"}, "tasks/x.toml")


def test_meta_sgd_through_the_facade_equals_the_builtin_meta_sgd():
    episodes = classification_episodes(3, (3,))
    builtin = GradientMetaLearner(tiny_mlp(), GradientMetaLearnerConfig(algorithm="meta_sgd", inner_lr=0.3, inner_steps=2))
    model = tiny_mlp()
    facade = GradientMetaLearner(
        model, GradientMetaLearnerConfig(algorithm="maml", inner_steps=2),
        inner_optimizer=MetaOptimizer(model, MetaOptimizerConfig(method="meta_sgd", inner_lr=0.3)),
    )
    for _ in range(2):
        a, b = builtin.meta_train_step(episodes), facade.meta_train_step(episodes)
        assert a.loss == pytest.approx(b.loss, rel=1e-12)
    for p, q in zip(builtin.model.parameters(), facade.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    assert facade.get_learned_lr() == pytest.approx(builtin.get_learned_lr())


def test_a_users_higher_loop_reaches_the_meta_parameters():
    model = tiny_mlp()
    mo = MetaOptimizer(model, MetaOptimizerConfig(method="lstm", second_order=True)).double()
    ep = classification_episodes(1, (3,))[0]
    with higher.innerloop_ctx(model, RuleOptimizer(model.named_parameters(), mo), copy_initial_weights=False) as (f, opt):
        for _ in range(2):
            opt.step(F.cross_entropy(f(ep.support_x), ep.support_y))
        F.cross_entropy(f(ep.query_x), ep.query_y).backward()
    assert all(p.grad is not None for p in mo.parameters())
    assert sum(float(p.grad.abs().sum()) for p in mo.parameters()) > 0


@pytest.mark.parametrize("method", ["meta_sgd", "lstm", "l2o"])
def test_window_meta_gradient_matches_finite_differences(method):
    """d(sum of query losses over a 3-step window)/d(rule parameters), float64."""
    torch.manual_seed(0)
    model = mlp(1, 1, hidden=(8,)).double()
    mo = MetaOptimizer(model, MetaOptimizerConfig(method=method, second_order=True, inner_lr=0.05)).double()
    episode = sinusoid_episodes(1)[0]
    episode = type(episode)(*(t.double() if torch.is_tensor(t) and t.is_floating_point() else t
                              for t in (episode.support_x, episode.support_y, episode.query_x, episode.query_y)))
    start = {n: p.detach() for n, p in model.named_parameters()}

    def window_loss() -> torch.Tensor:
        return mo.tbptt.unroll(model, episode, dict(start), mo.rule.init(start), 0, 3, 0)[2]

    window_loss().backward()
    tensors = [p for p in mo.parameters()]
    exact = [p.grad.clone() for p in tensors]
    eps = 1e-6
    checked = 0
    for t, g in zip(tensors, exact):
        flat = t.data.view(-1)
        for i in sorted({0, flat.numel() // 2, flat.numel() - 1}):
            old = float(flat[i])
            flat[i] = old + eps
            up = window_loss().item()
            flat[i] = old - eps
            down = window_loss().item()
            flat[i] = old
            assert float(g.view(-1)[i]) == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-9)
            checked += 1
    assert checked >= 3 and max(float(g.abs().max()) for g in exact) > 1e-6


@pytest.mark.parametrize("unroll", [20, 50])
def test_long_unrolls_stay_finite_and_the_meta_loss_falls(unroll):
    torch.manual_seed(0)
    model = mlp(1, 1, hidden=(20,))
    config = MetaOptimizerConfig(method="lstm", lstm_variant="scalable", inner_steps=unroll,
                                 unroll_steps=unroll, meta_lr=3e-3, meta_loss="support")
    mo = MetaOptimizer(model, config)
    episodes = sinusoid_episodes(2, seed=1)
    results = [mo.meta_train_step(episodes, model) for _ in range(8)]
    assert all(math.isfinite(r.meta_loss) and math.isfinite(r.grad_norm) for r in results)
    assert results[-1].meta_loss < results[0].meta_loss
    assert results[0].windows == 1 and results[0].inner_steps == unroll


def test_truncated_windows_and_errors():
    model = mlp(1, 1, hidden=(8,))
    mo = MetaOptimizer(model, MetaOptimizerConfig(method="meta_sgd", inner_steps=7, unroll_steps=3, meta_lr=1e-3))
    before = [p.detach().clone() for p in mo.parameters()]
    weights = [p.detach().clone() for p in model.parameters()]
    result = mo.meta_train_step(sinusoid_episodes(2))
    assert result.windows == 3 and math.isfinite(result.final_loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, mo.parameters()))
    # the base model's weights are not the optimizer's to change
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters()))
    with pytest.raises(ValueError, match="at least one episode"):
        mo.meta_train_step([])
    bad = sinusoid_episodes(1)[0]
    bad.support_x[0, 0] = math.nan
    with pytest.raises(FloatingPointError, match="task 0: support at inner step 0: loss is nan"):
        mo.meta_train_step([bad])
    exploding = MetaOptimizer(model, MetaOptimizerConfig(method="meta_sgd", inner_lr=1e30, inner_steps=2, unroll_steps=2))
    with pytest.raises(FloatingPointError):
        exploding.meta_train_step(sinusoid_episodes(1))
