"""The rule contract's shared pieces: ``step_rule``, a fresh ``OptimizerState()`` for every
method, ``running_loss``, the engines' common ``inner_loop``, the registries and the checks."""

import math

import pytest
import torch
import torch.nn.functional as F

from fewshot_metaopt import MetaOptimizer, MetaOptimizerConfig, OptimizerState
from fewshot_metaopt.checks import ConfigError, at_least, integer, optional_positive, real
from fewshot_metaopt.engines import ENGINES, FuncEngine, HigherEngine
from fewshot_metaopt.optim import SGDRule, TapeSGDRule, step_rule
from fewshot_metaopt.registry import Registry
from fewshot_metaopt.torch_optim import RuleOptimizer
from fewshot_metaopt.warp import warp_mlp
from learner_fixtures import classification_episodes, tiny_mlp


def grads_and_loss(model, episode):
    loss = F.cross_entropy(model(episode.support_x), episode.support_y)
    names = [n for n, _ in model.named_parameters()]
    return dict(zip(names, torch.autograd.grad(loss, list(model.parameters())))), loss.detach()


def test_step_rule_starts_the_state_merges_and_hands_over_the_loss_detached():
    seen = []

    class Spy(SGDRule):
        def init(self, params):
            seen.append(("init", sorted(params)))
            return "state"

        def update(self, params, grads, state, step, loss=None):
            seen.append((state, step, loss.requires_grad))
            return {"a": params["a"] - grads["a"]}, "next"

    rule = Spy.for_params({"a": (2,)}, lr=1.0)
    w = torch.ones(2, requires_grad=True)
    loss = (w * 3).sum()
    params = {"a": torch.zeros(2), "b": torch.ones(1)}
    new, state = step_rule(rule, params, {"a": torch.ones(2)}, None, 4, loss)
    assert seen == [("init", ["a", "b"]), ("state", 4, False)] and state == "next"
    assert torch.equal(new["a"], -torch.ones(2)) and new["b"] is params["b"]


METHODS = [("meta_sgd", {}), ("lstm", {"lstm_variant": "faithful"}), ("lstm", {"lstm_variant": "scalable"}),
           ("l2o", {})]


@pytest.mark.parametrize("method, extra", METHODS + [("warp_grad", {})])
def test_a_fresh_optimizer_state_is_a_valid_initial_state_for_every_method(method, extra):
    torch.manual_seed(0)
    model = warp_mlp(3, 2, hidden=(4,)).double() if method == "warp_grad" else tiny_mlp()
    episode = classification_episodes(1, (3,))[0]
    mo = MetaOptimizer(model, MetaOptimizerConfig(method=method, **extra))
    grads, _ = grads_and_loss(model, episode)
    fresh, state = mo.compute_update(grads, OptimizerState())
    mo.reset_optimizer_state()
    stored, _ = mo.compute_update(grads)
    assert state.step_count == 1
    for name in grads:
        torch.testing.assert_close(fresh[name], stored[name], rtol=0, atol=0)


def test_running_loss_is_the_mean_of_the_losses_passed():
    model = tiny_mlp()
    mo = MetaOptimizer(model, MetaOptimizerConfig(method="lstm", lstm_variant="scalable"))
    grads, _ = grads_and_loss(model, classification_episodes(1, (3,))[0])
    _, state = mo.compute_update(grads, OptimizerState())
    assert state.running_loss == 0.0 and state.losses_seen == 0  # no loss was passed
    losses = [2.0, 1.0, 0.5]
    for value in losses:
        _, state = mo.compute_update(grads, state, loss=torch.tensor(value))
    assert state.losses_seen == 3 and state.running_loss == pytest.approx(sum(losses) / 3)
    assert state.step_count == 4


def test_both_engines_share_one_inner_loop_and_record_the_same_trajectory():
    model = tiny_mlp()
    names = [n for n, _ in model.named_parameters()]
    rule = SGDRule.for_params({n: p.shape for n, p in model.named_parameters()}, lr=0.3, dtype=torch.float64)
    episode = classification_episodes(1, (3,))[0]
    trajectories = {}
    for name in ("func", "higher"):
        engine = ENGINES[name](model, rule, names)
        points = []

        def support(fmodel, step):
            return F.cross_entropy(fmodel(episode.support_x), episode.support_y)

        def query(fmodel):
            return F.cross_entropy(fmodel(episode.query_x), episode.query_y)

        _, _, query_losses = engine.inner_loop(3, "second_order", support, query,
                                               record=lambda p, s, k: points.append((k, p["0.weight"].detach())))
        trajectories[name] = (points, [float(q.detach()) for q in query_losses])
    assert isinstance(ENGINES["func"](model, rule, names), FuncEngine)
    assert isinstance(ENGINES["higher"](model, rule, names), HigherEngine)
    (func_points, func_q), (higher_points, higher_q) = trajectories["func"], trajectories["higher"]
    assert [k for k, _ in func_points] == [0, 1, 2] and func_q == pytest.approx(higher_q, rel=1e-12)
    for (_, a), (_, b) in zip(func_points, higher_points):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="unknown inner-loop mode 'third_order'"):
        ENGINES["higher"](model, rule, names).inner_loop(1, "third_order", support)


def test_rule_optimizer_saves_and_restores_its_rule_state():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = RuleOptimizer(model.named_parameters(), TapeSGDRule(lr=0.05))
    x = torch.randn(8, 3)
    for _ in range(2):
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        opt.step(loss=loss)
    saved = opt.state_dict()
    other = RuleOptimizer(model.named_parameters(), TapeSGDRule(lr=0.05))
    other.load_state_dict(saved)
    assert other.step_count == 2 and torch.equal(other.rule_state.memory, opt.rule_state.memory)


def test_registry_lists_its_choices_and_refuses_a_second_entry():
    table = Registry("colour")
    table.register("red", 1)

    @table.register("blue")
    def blue():
        return 2

    assert table.names() == ("red", "blue") and table.build("blue") == 2 and "red" in table
    with pytest.raises(ValueError, match="unknown colour 'green'; choose one of red, blue"):
        table["green"]
    with pytest.raises(ValueError, match="colour 'red' is registered twice"):
        table.register("red", 3)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_checks_refuse_non_finite_numbers(value):
    with pytest.raises(ConfigError, match="train.minutes") as caught:
        optional_positive("train.minutes", value)
    assert caught.value.key == "train.minutes"
    with pytest.raises(ConfigError, match="must be >= 1"):
        at_least("data.image_size", value, 1)
    with pytest.raises(ConfigError, match="Warmup needs a finite number start"):
        real("start", value, owner="Warmup")


def test_checks_name_the_owner_or_the_key():
    assert integer("steps", 3, 1, owner="Warmup") == 3
    with pytest.raises(ConfigError, match=r"^Warmup needs an integer steps >= 1, got True$"):
        integer("steps", True, 1, owner="Warmup")
    with pytest.raises(ConfigError, match=r"^steps must be an integer >= 1, got 0$"):
        integer("steps", 0, 1)
    with pytest.raises(ConfigError, match=r"^meta_lr must be in \[0.0, 1.0\], got 2$"):
        real("meta_lr", 2, 0.0, 1.0)
