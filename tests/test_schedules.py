"""Learning-rate schedules: values, the scheduled rule, its meta-gradient, the outer scheduler."""

import math

import higher
import pytest
import torch
from torch import nn

from fewshot_metaopt import GradientMetaLearner, GradientMetaLearnerConfig
from fewshot_metaopt.torch_optim import RuleOptimizer
from fewshot_metaopt.optim.rules import AdamRule, SGDRule
from fewshot_metaopt.optim.schedules import (
    Constant,
    Cosine,
    Cyclical,
    Learned,
    ScheduledRule,
    Schedule,
    Warmup,
    schedule_optimizer,
)
from learner_fixtures import classification_episodes, tiny_mlp
from test_meta_gradients import autograd_meta_gradient, finite_difference

# ----------------------------------------------------------------------------- schedule values


def test_constant():
    assert [Constant()(t) for t in (0, 1, 1000)] == [1.0, 1.0, 1.0]
    assert Constant(0.5)(7) == 0.5
    assert repr(Constant(0.5)) == "Constant(value=0.5)"


def test_warmup_endpoints_and_linear_in_between():
    w = Warmup(4)
    assert [w(t) for t in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    w = Warmup(2, start=0.2)
    assert w(0) == 0.2 and w(1) == pytest.approx(0.6) and w(2) == 1.0 and w(50) == 1.0
    assert w.describe() == "Warmup(steps=2, start=0.2)" == repr(w)


def test_cosine_endpoints_midpoint_and_floor():
    c = Cosine(10, min_factor=0.2)
    assert c(0) == 1.0
    assert c(5) == pytest.approx((1 + 0.2) / 2)
    assert c(10) == pytest.approx(0.2)
    assert c(11) == c(1000) == pytest.approx(0.2)
    values = [c(t) for t in range(11)]
    assert all(a > b for a, b in zip(values, values[1:]))  # strictly decreasing
    assert Cosine(4)(2) == pytest.approx(0.5) and Cosine(4)(4) == pytest.approx(0.0)
    assert "Cosine(total_steps=10, min_factor=0.2, warmup_steps=0)" == repr(c)


def test_cosine_with_warmup():
    c = Cosine(12, min_factor=0.0, warmup_steps=4)
    assert [c(t) for t in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert c(8) == pytest.approx(0.5)  # half way through the 8 decay steps
    assert c(12) == pytest.approx(0.0)


def test_cyclical_triangular_peaks_and_troughs():
    c = Cyclical(4, low=0.1, high=1.0)
    assert [c(t) for t in range(9)] == pytest.approx([0.1, 0.55, 1.0, 0.55, 0.1, 0.55, 1.0, 0.55, 0.1])
    odd = Cyclical(3, low=0.0, high=1.0)
    assert odd(0) == 0.0 and odd(3) == 0.0 and odd(1) == pytest.approx(2 / 3) and odd(2) == pytest.approx(2 / 3)
    assert repr(c) == "Cyclical(period=4, low=0.1, high=1.0, mode='triangular')"


def test_cyclical_cosine_mode():
    c = Cyclical(4, low=0.2, high=0.6, mode="cosine")
    assert [c(t) for t in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.4, 0.2])
    assert c(10) == pytest.approx(0.6)


def test_fixed_schedules_are_schedules():
    for s in (Constant(), Warmup(2), Cosine(3), Cyclical(2)):
        assert isinstance(s, Schedule) and not s.learned and isinstance(s(1), float)


# ----------------------------------------------------------------------------- Learned


def test_learned_starts_at_init_and_reuses_its_last_multiplier():
    s = Learned(3, init=0.5)
    assert s.learned and s.log_space
    assert [s(t).item() for t in range(3)] == pytest.approx([0.5, 0.5, 0.5])
    with torch.no_grad():
        s.values.copy_(torch.log(torch.tensor([0.2, 0.4, 0.8])))
    assert s(1).item() == pytest.approx(0.4)
    assert s(2).item() == s(3).item() == s(100).item() == pytest.approx(0.8)
    torch.testing.assert_close(s.multipliers(), torch.tensor([0.2, 0.4, 0.8]))
    assert s.describe() == "Learned(steps=3, log_space=True, multipliers=[0.2, 0.4, 0.8])"
    assert "steps=3, init=0.5, log_space=True" in repr(s)


def test_learned_in_log_space_stays_positive_and_passes_gradients():
    s = Learned(2, init=1.0)
    assert [n for n, _ in s.named_parameters()] == ["values"]
    m = s(5)
    assert isinstance(m, torch.Tensor) and m.requires_grad
    m.backward()
    torch.testing.assert_close(s.values.grad, torch.tensor([0.0, 1.0]))  # d exp(v)/dv = exp(0)
    with torch.no_grad():
        s.values.fill_(-50.0)
    assert s(0).item() > 0


def test_learned_linear_space_is_sign_free():
    s = Learned(2, init=0.3, log_space=False, dtype=torch.float64)
    assert s.values.dtype == torch.float64 and s(0).item() == 0.3
    with torch.no_grad():
        s.values[1] = -0.5
    assert s(9).item() == -0.5
    s(0).backward()
    torch.testing.assert_close(s.values.grad, torch.tensor([1.0, 0.0], dtype=torch.float64))


# ----------------------------------------------------------------------------- ScheduledRule


def _params_and_grads():
    g = torch.Generator().manual_seed(0)
    params = {
        "w": torch.randn(3, 2, generator=g, dtype=torch.float64),
        "b": torch.randn(2, generator=g, dtype=torch.float64),
    }
    grads = {"w": torch.randn(3, 2, generator=g, dtype=torch.float64)}  # "b" gets no gradient
    return params, grads


@pytest.mark.parametrize("make_rule", [lambda: SGDRule.for_params({}, lr=0.1), lambda: AdamRule(lr=0.01)])
def test_constant_schedule_is_the_wrapped_rule_exactly(make_rule):
    params, grads = _params_and_grads()
    rule, scheduled = make_rule(), ScheduledRule(make_rule(), Constant())
    state, sstate = rule.init(params), scheduled.init(params)
    for step in range(3):
        params_r, state = rule.update(params, grads, state, step)
        params_s, sstate = scheduled.update(params, grads, sstate, step)
        for name in params:
            assert torch.equal(params_r[name], params_s[name])
        params = params_r
    assert torch.equal(params_s["b"], _params_and_grads()[0]["b"])  # no gradient, unchanged
    if isinstance(rule, AdamRule):
        assert state["w"].step == sstate["w"].step == 3
        assert torch.equal(state["w"].m, sstate["w"].m) and torch.equal(state["w"].v, sstate["w"].v)


def test_warmup_scales_the_first_updates():
    params, grads = _params_and_grads()
    scheduled = ScheduledRule(SGDRule.for_params({}, lr=0.1), Warmup(2, start=0.25))
    state = scheduled.init(params)
    assert state is None
    new, state = scheduled.update(params, grads, state, 0)
    torch.testing.assert_close(new["w"], params["w"] - 0.25 * 0.1 * grads["w"], rtol=1e-14, atol=0)
    assert new["b"] is params["b"]
    new, _ = scheduled.update(params, grads, state, 1)
    torch.testing.assert_close(new["w"], params["w"] - 0.625 * 0.1 * grads["w"], rtol=1e-14, atol=0)
    new, _ = scheduled.update(params, grads, state, 2)
    assert torch.equal(new["w"], params["w"] - 0.1 * grads["w"])


def test_warmup_scales_adam_and_advances_its_state():
    params, grads = _params_and_grads()
    adam, scheduled = AdamRule(lr=0.01), ScheduledRule(AdamRule(lr=0.01), Warmup(4, start=0.0))
    plain, _ = adam.update(params, grads, adam.init(params), 0)
    new, state = scheduled.update(params, grads, scheduled.init(params), 0)
    assert torch.equal(new["w"], params["w"])  # multiplier 0: nothing moves...
    assert state["w"].step == 1  # ...but Adam has seen the gradient
    new, _ = ScheduledRule(AdamRule(lr=0.01), Cyclical(4, low=0.5, high=1.0)).update(
        params, grads, scheduled.init(params), 0
    )
    torch.testing.assert_close(new["w"] - params["w"], 0.5 * (plain["w"] - params["w"]), rtol=1e-12, atol=1e-15)


def test_scheduled_rule_parameters_include_rule_and_learned_schedule():
    rule = SGDRule.for_params({"w": torch.Size([3])}, lr=0.1, granularity="per_layer")
    scheduled = ScheduledRule(rule, Learned(3))
    names = [n for n, _ in scheduled.named_parameters()]
    assert names == ["rule.lrs.values.0", "schedule.values"]
    assert list(ScheduledRule(rule, Cosine(3)).parameters()) == list(rule.parameters())
    assert "Cosine(total_steps=3" in repr(ScheduledRule(rule, Cosine(3)))
    assert "Learned(steps=3" in repr(scheduled)
    assert scheduled.get_learned_lr() == {"w": pytest.approx(0.1)}
    assert ScheduledRule(AdamRule(lr=0.02), Constant()).get_learned_lr() == {}

    class Bare(SGDRule):
        lrs = None

    assert ScheduledRule(Bare(None), Constant()).get_learned_lr() == {}


def test_outer_optimizer_trains_rule_and_schedule():
    rule = SGDRule.for_params({"w": torch.Size([2])}, lr=0.1, granularity="scalar", dtype=torch.float64)
    scheduled = ScheduledRule(rule, Learned(2, dtype=torch.float64))
    w = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD(scheduled.parameters(), lr=0.1)
    params, state = {"w": w}, None
    for step in range(2):
        loss = (params["w"] ** 2).sum()
        (grad,) = torch.autograd.grad(loss, params["w"], create_graph=True)
        params, state = scheduled.update(params, {"w": grad}, state, step)
    ((params["w"] ** 2).sum()).backward()
    before = [p.detach().clone() for p in scheduled.parameters()]
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, scheduled.parameters()))


def test_runs_as_an_ordinary_optimizer_and_in_higher():
    model = tiny_mlp()
    scheduled = ScheduledRule(SGDRule.for_params({}, lr=0.1), Warmup(2, start=0.5))
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 0, 1])
    loss_fn = nn.CrossEntropyLoss()
    with higher.innerloop_ctx(model, RuleOptimizer(model.named_parameters(), scheduled)) as (fmodel, diffopt):
        diffopt.step(loss_fn(fmodel(x), y))
        fast = list(fmodel.parameters())
    loss_fn(model(x), y).backward()
    for p, f in zip(model.parameters(), fast):
        torch.testing.assert_close(f, p - 0.5 * 0.1 * p.grad)
    before = [p.detach().clone() for p in model.parameters()]
    opt = RuleOptimizer(model.named_parameters(), scheduled)
    opt.step()  # in place, step 0: half the SGD step
    for b, p in zip(before, model.parameters()):
        torch.testing.assert_close(p.detach(), b - 0.05 * p.grad)


@pytest.mark.parametrize("log_space", [True, False])
def test_meta_gradient_to_learned_multipliers_matches_finite_differences(log_space):
    model = tiny_mlp()
    config = GradientMetaLearnerConfig(algorithm="maml", inner_lr=0.3, inner_steps=3)
    schedule = Learned(3, init=0.9, log_space=log_space)
    rule = ScheduledRule(SGDRule.for_params({}, lr=0.3), schedule)
    learner = GradientMetaLearner(model, config, inner_optimizer=rule)
    assert learner.rule is rule and schedule.values.dtype == torch.float64
    assert any(p is schedule.values for p in learner.meta_parameters)
    with torch.no_grad():  # a different multiplier at each step
        target = torch.tensor([0.9, 0.6, 1.2], dtype=torch.float64)
        schedule.values.copy_(target.log() if log_space else target)
    episodes = classification_episodes(2, (3,))
    tensors = [schedule.values]  # the model's meta-gradient is checked in test_meta_gradients.py
    exact = autograd_meta_gradient(learner, episodes, tensors)
    assert float(exact[0].abs().min()) > 1e-4  # every step's multiplier gets a gradient
    for ti, i, numeric in finite_difference(learner, episodes, tensors):
        assert float(exact[ti].view(-1)[i]) == pytest.approx(numeric, rel=1e-5, abs=1e-8), (ti, i)
    result = learner.meta_train_step(episodes)
    assert math.isfinite(result.loss)
    assert not torch.allclose(schedule.multipliers(), target)


# ----------------------------------------------------------------------------- outer scheduler


def test_schedule_optimizer_drives_an_adam_lr():
    param = nn.Parameter(torch.zeros(2))
    adam = torch.optim.Adam([param], lr=0.01)
    scheduler = schedule_optimizer(adam, Warmup(4, start=0.0))
    assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
    seen = []
    for _ in range(6):
        seen.append(adam.param_groups[0]["lr"])
        param.grad = torch.ones(2)
        adam.step()
        scheduler.step()
    assert seen == pytest.approx([0.0, 0.0025, 0.005, 0.0075, 0.01, 0.01])

    adam = torch.optim.Adam([param], lr=0.1)
    scheduler = schedule_optimizer(adam, Cosine(4, min_factor=0.1))
    lrs = []
    for _ in range(5):
        lrs.append(adam.param_groups[0]["lr"])
        adam.step()
        scheduler.step()
    assert lrs == pytest.approx([0.1 * Cosine(4, min_factor=0.1)(t) for t in range(5)])
    assert lrs[2] == pytest.approx(0.1 * 0.55)
    state = scheduler.state_dict()
    assert state["last_epoch"] == 5


def test_schedule_optimizer_refuses_a_learned_schedule():
    adam = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=r"fixed schedule, got Learned\(steps=3.*ScheduledRule"):
        schedule_optimizer(adam, Learned(3))
    with pytest.raises(ValueError, match="got Linear"):
        schedule_optimizer(adam, nn.Linear(1, 1))
    with pytest.raises(ValueError, match="got 0.5"):
        schedule_optimizer(adam, 0.5)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Constant(math.nan), "finite number value, got nan"),
        (lambda: Warmup(0), "integer steps >= 1, got 0"),
        (lambda: Warmup(-3), "integer steps >= 1, got -3"),
        (lambda: Warmup(2.5), "integer steps >= 1, got 2.5"),
        (lambda: Warmup(True), "integer steps >= 1, got True"),
        (lambda: Warmup(2, start=1.5), r"start in \[0.0, 1.0\], got 1.5"),
        (lambda: Warmup(2, start="0"), "finite number start, got '0'"),
        (lambda: Cosine(0), "integer total_steps >= 1, got 0"),
        (lambda: Cosine(10, min_factor=1.2), r"min_factor in \[0.0, 1.0\], got 1.2"),
        (lambda: Cosine(10, min_factor=-0.1), r"min_factor in \[0.0, 1.0\], got -0.1"),
        (lambda: Cosine(10, warmup_steps=-1), "integer warmup_steps >= 0, got -1"),
        (lambda: Cosine(10, warmup_steps=10), "warmup_steps < total_steps, got warmup_steps=10 and total_steps=10"),
        (lambda: Cyclical(0), "positive period, got 0"),
        (lambda: Cyclical(-2), "positive period, got -2"),
        (lambda: Cyclical(math.inf), "finite number period, got inf"),
        (lambda: Cyclical(4, low=0.9, high=0.5), "low <= high, got low=0.9 and high=0.5"),
        (lambda: Cyclical(4, low=-0.1), r"low in \[0.0, inf\], got -0.1"),
        (lambda: Cyclical(4, mode="exp_range"), "unknown Cyclical mode 'exp_range'"),
        (lambda: Learned(0), "integer steps >= 1, got 0"),
        (lambda: Learned(3, init=0.0), "positive init, got 0.0"),
        (lambda: Learned(3, init=-1.0), "positive init, got -1.0"),
        (lambda: Learned(3, init=math.nan, log_space=False), "finite number init, got nan"),
        (lambda: ScheduledRule(nn.Linear(1, 1), Constant()), "wraps an UpdateRule, got Linear"),
        (lambda: ScheduledRule(AdamRule(), 2.0), r"needs a schedule .*, got 2.0"),
        (lambda: ScheduledRule(AdamRule(), lambda step: 1.0), r"needs a schedule .*, got <function"),
    ],
)
def test_bad_input_is_a_one_line_value_error_naming_the_value(make, message):
    with pytest.raises(ValueError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("schedule", [Constant(), Warmup(2), Cosine(3), Cyclical(2), Learned(2)])
def test_bad_steps_are_refused(schedule):
    with pytest.raises(ValueError, match="integer step >= 0, got -1"):
        schedule(-1)
    with pytest.raises(ValueError, match="integer step >= 0, got 1.5"):
        schedule(1.5)
