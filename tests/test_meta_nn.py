"""MetaNNCombiner (seed 000) and the torch.optim plumbing the seed optimizers share: the
meta-gradient against float64 finite differences, the untrained combiner against SGD and
torch's Adam mixed 0.5/0.5, learning on a small problem, bit-identical checkpoints, bad input."""

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fewshot_metaopt.optim import AdamRule, CombinerRule, SGDRule
from fewshot_metaopt.torch_optim import MetaNNCombiner
from fewshot_metaopt.torch_optim.rule_optimizer import named_tensors
from fewshot_metaopt.optim.rules.loss_feature import loss_feature
from test_meta_gradients import central_differences


def regression(seed=0, dtype=torch.float64):
    """A small deterministic problem: a tanh MLP fitting a smooth function of 3 inputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 3, generator=g, dtype=dtype)
    y = torch.sin(2 * x[:, :1]) + x[:, 1:2] * x[:, 2:3]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1)).to(dtype)
    return model, x, y


def closure_for(opt, model, x, y):
    def closure():
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss

    return closure


def final_loss(model, x, y) -> float:
    with torch.no_grad():
        return float(F.mse_loss(model(x), y))


# ----------------------------------------------------------------------- meta-gradient


def test_meta_gradient_is_the_derivative_of_the_loss_after_the_update():
    """d L(theta + delta(phi)) / d phi by float64 central differences, at a step where Adam's
    moments are non-trivial and the MLP's readout is not zero."""
    model, x, y = regression()
    opt = MetaNNCombiner(model.named_parameters(), sgd_lr=0.1, adam_lr=0.05, hidden=(5,), meta_clip=None)
    closure = closure_for(opt, model, x, y)
    for _ in range(2):
        opt.step(closure)
    torch.manual_seed(7)
    with torch.no_grad():
        for p in opt.rule.parameters():
            p.normal_(0.0, 0.5)

    rule = copy.deepcopy(opt.rule)
    state = copy.deepcopy(opt.rule_state)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = closure()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    captured = []
    opt.meta_optimizer.register_step_pre_hook(
        lambda o, args, kwargs: captured.extend(p.grad.clone() for p in opt.rule.parameters())
    )
    opt.step(closure)

    def objective() -> float:
        with torch.no_grad():
            new, _ = rule.update(theta, grads, state, 2, loss=loss)
            return float(F.mse_loss(functional_call(model, new, (x,)), y))

    tensors = list(rule.parameters())
    for ti, i, numeric in central_differences(tensors, objective):
        assert float(captured[ti].view(-1)[i]) == pytest.approx(numeric, rel=1e-5, abs=1e-9), (ti, i)
    assert max(float(g.abs().max()) for g in captured) > 1e-3


# ----------------------------------------------------------------------- what it computes


def test_untrained_combiner_is_sgd_and_torch_adam_mixed_half_and_half():
    model, x, y = regression()
    opt = MetaNNCombiner(model.parameters(), sgd_lr=0.1, adam_lr=0.02, learn=False)
    shadows = [p.detach().clone().requires_grad_() for p in model.parameters()]
    adam = torch.optim.Adam(shadows, lr=0.02)
    for _ in range(4):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        theta = [p.detach().clone() for p in model.parameters()]
        grads = [p.grad.clone() for p in model.parameters()]
        with torch.no_grad():  # torch's Adam from the same point on the same gradient
            for s, t, g in zip(shadows, theta, grads):
                s.copy_(t)
                s.grad = g.clone()
        adam.step()
        opt.step()
        for p, t, g, s in zip(model.parameters(), theta, grads, shadows):
            expected = t + 0.5 * (-0.1 * g) + 0.5 * (s.detach() - t)
            torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14)
    assert set(opt.rule.get_learned_lr()) == {"0", "1", "2", "3"}  # bare tensors are named by position


def test_pool_of_three_with_a_custom_rule_and_mix_learns():
    model, x, y = regression()
    extra = AdamRule(lr=0.05)
    opt = MetaNNCombiner(model, pool=("sgd", "adam", extra), mix=(0.2, 0.3, 0.5), hidden=(8, 8), meta_lr=1e-2)
    assert opt.rule.pool[2] is extra and opt.hyperparameters()["pool"] == ["sgd", "adam", "AdamRule"]
    assert opt.hyperparameters()["hidden"] == [8, 8]
    before = final_loss(model, x, y)
    closure = closure_for(opt, model, x, y)
    for _ in range(20):
        returned = opt.step(closure)
    assert final_loss(model, x, y) < 0.5 * before
    assert returned.requires_grad is False and opt.last_meta_loss is not None
    assert all(p.grad is None for p in model.parameters())  # the seed's zero_grad after each step
    assert any(float(p.detach().abs().max()) > 0 for p in opt.rule.mlp[-1].parameters())


def test_after_online_meta_learning_it_beats_sgd_adam_and_the_fixed_mix():
    """The deterministic regression problem, 100 steps each (seed 000's claim, one setting)."""
    losses = {}
    for kind in ("sgd", "adam", "mix", "meta"):
        model, x, y = regression()
        if kind == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
        elif kind == "adam":
            opt = torch.optim.Adam(model.parameters(), lr=0.01)
        else:
            torch.manual_seed(1)
            opt = MetaNNCombiner(model.parameters(), sgd_lr=0.1, adam_lr=0.01, meta_lr=1e-2, learn=kind == "meta")
        closure = closure_for(opt, model, x, y)
        for _ in range(100):
            opt.step(closure)
        losses[kind] = final_loss(model, x, y)
    assert losses["meta"] < min(losses["sgd"], losses["adam"], losses["mix"]), losses


def test_parameters_without_gradient_are_skipped():
    model, x, y = regression()
    unused = nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = MetaNNCombiner([*model.parameters(), unused])
    opt.step(closure_for(opt, model, x, y))
    assert torch.equal(unused.detach(), torch.ones(3, dtype=torch.float64))
    frozen = MetaNNCombiner([unused], learn=False)
    assert frozen.step() is None  # nothing has a gradient: nothing to do


# ----------------------------------------------------------------------- checkpoints


def run_steps(opt, model, x, y, steps):
    closure = closure_for(opt, model, x, y)
    trajectory = []
    for _ in range(steps):
        opt.step(closure)
        trajectory.append([p.detach().clone() for p in model.parameters()])
    return trajectory


def test_state_dict_round_trip_continues_bit_identically():
    model, x, y = regression()
    opt = MetaNNCombiner(model.parameters(), sgd_lr=0.1, adam_lr=0.01, meta_lr=1e-2)
    run_steps(opt, model, x, y, 5)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    expected = run_steps(opt, model, x, y, 5)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    fresh, _, _ = regression(seed=3)
    fresh.load_state_dict(saved["model"])
    torch.manual_seed(99)  # a different MLP initialisation: everything must come from the file
    again = MetaNNCombiner(fresh.parameters(), sgd_lr=0.1, adam_lr=0.01, meta_lr=1e-2)
    again.load_state_dict(saved["opt"])
    assert again.steps_taken == 5
    for want, got in zip(expected, run_steps(again, fresh, x, y, 5)):
        assert all(torch.equal(a, b) for a, b in zip(want, got))
    assert all(torch.equal(a, b) for a, b in zip(opt.rule.parameters(), again.rule.parameters()))


def test_a_new_episode_keeps_the_learned_mlp_and_restarts_the_pool_rules():
    """After start_episode the combiner steps like a fresh one holding the MLP learned so far:
    Adam's moments and bias correction start over, the MLP and its Adam state carry on."""
    model, x, y = regression()
    opt = MetaNNCombiner(model.parameters(), sgd_lr=0.1, adam_lr=0.01, meta_lr=1e-2)
    start = copy.deepcopy(model.state_dict())
    run_steps(opt, model, x, y, 4)
    learned = copy.deepcopy(opt.rule.state_dict())
    meta_state = copy.deepcopy(opt.meta_optimizer.state_dict())
    model.load_state_dict(start)
    opt.start_episode()
    assert opt.episode_steps == 0 and opt.steps_taken == 4 and opt.rule_state is None
    assert all(torch.equal(a, b) for a, b in zip(learned.values(), opt.rule.state_dict().values()))

    twin, _, _ = regression()
    fresh = MetaNNCombiner(twin.parameters(), sgd_lr=0.1, adam_lr=0.01, meta_lr=1e-2)
    fresh.rule.load_state_dict(learned)
    fresh.meta_optimizer.load_state_dict(meta_state)
    for want, got in zip(run_steps(fresh, twin, x, y, 3), run_steps(opt, model, x, y, 3)):
        assert all(torch.equal(a, b) for a, b in zip(want, got))


def test_state_dict_is_a_snapshot_not_a_view():
    model, x, y = regression()
    opt = MetaNNCombiner(model.parameters(), meta_lr=1e-2)
    run_steps(opt, model, x, y, 2)
    snapshot = opt.state_dict()
    readout = snapshot["seed_optimizer"]["rule"]["mlp.2.weight"].clone()
    run_steps(opt, model, x, y, 2)
    assert torch.equal(snapshot["seed_optimizer"]["rule"]["mlp.2.weight"], readout)


def test_loading_a_state_saved_with_other_hyperparameters_or_by_another_optimizer_fails():
    model, x, y = regression()
    opt = MetaNNCombiner(model.parameters(), sgd_lr=0.1)
    with pytest.raises(ValueError, match="saved with sgd_lr=0.1, this optimizer has sgd_lr=0.2"):
        MetaNNCombiner(model.parameters(), sgd_lr=0.2).load_state_dict(opt.state_dict())
    plain = torch.optim.SGD(model.parameters(), lr=0.1).state_dict()
    with pytest.raises(ValueError, match="not saved by a MetaNNCombiner"):
        opt.load_state_dict(plain)


# ----------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"pool": ()}, "at least one rule in its pool"),
        ({"pool": ("sgd", "rmsprop")}, "got 'rmsprop'"),
        ({"pool": ("sgd", 3)}, "got 3"),
        ({"sgd_lr": -0.1}, "positive sgd_lr, got -0.1"),
        ({"adam_lr": math.nan}, "finite number adam_lr, got nan"),
        ({"meta_lr": -1.0}, r"meta_lr in \[0.0, inf\], got -1.0"),
        ({"meta_clip": 0.0}, "positive meta_clip, got 0.0"),
        ({"hidden": ()}, "at least one hidden layer"),
        ({"hidden": (4, 0)}, "hidden width >= 1, got 0"),
        ({"mix": (1.0,)}, r"one mix weight per pool rule \(2\), got 1"),
        ({"mix": (0.5, math.inf)}, "finite number mix weight, got inf"),
    ],
)
def test_bad_hyperparameters_are_one_line_errors_naming_the_value(kwargs, message):
    model, _, _ = regression()
    with pytest.raises(ValueError, match=message) as err:
        MetaNNCombiner(model.parameters(), **kwargs)
    assert "\n" not in str(err.value)


def test_pool_entries_must_be_update_rules():
    with pytest.raises(ValueError, match="pool entry 1 is a Linear"):
        CombinerRule([SGDRule.for_params({}, lr=0.1), nn.Linear(1, 1)])


@pytest.mark.parametrize(
    "params, message",
    [
        ([], "got no parameters"),
        (torch.zeros(2, requires_grad=True), "not a single tensor|got a single tensor"),
        ([{"params": [torch.zeros(1, requires_grad=True)]}], "one group of parameters"),
        ([("a", torch.zeros(1)), ("a", torch.zeros(1))], "names repeat: \\['a'\\]"),
        ([("a", 3.0)], "'a' is a float"),
    ],
)
def test_bad_parameter_lists(params, message):
    with pytest.raises(ValueError, match=message):
        MetaNNCombiner(params)


def test_the_same_tensor_twice_is_refused_and_bare_tensors_are_named_by_position():
    t = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="the same tensor is given twice"):
        named_tensors([("a", t), ("b", t)], "X")
    assert [n for n, _ in named_tensors([t, torch.ones(1)], "X")] == ["0", "1"]


def test_learning_needs_a_closure():
    model, x, y = regression()
    opt = MetaNNCombiner(model.parameters())
    F.mse_loss(model(x), y).backward()
    with pytest.raises(ValueError, match="needs a closure"):
        opt.step()


def test_non_finite_loss_and_gradient_are_errors_naming_them():
    model, x, y = regression()
    opt = MetaNNCombiner(model.parameters())

    def nan_loss():
        opt.zero_grad()
        loss = F.mse_loss(model(x), y) * math.nan
        loss.backward()
        return loss

    with pytest.raises(ValueError, match="the loss is nan at step 0"):
        opt.step(nan_loss)
    with pytest.raises(ValueError, match="one-element tensor, got float"):
        opt.step(lambda: 1.0)
    with pytest.raises(ValueError, match=r"one-element tensor, got a tensor of shape \(2,\)"):
        opt.step(lambda: torch.ones(2))

    def nan_gradient():
        loss = closure_for(opt, model, x, y)()
        model[0].bias.grad[0] = math.inf
        return loss

    with pytest.raises(ValueError, match="gradient of '1' has non-finite values"):
        opt.step(nan_gradient)


def test_a_non_finite_loss_after_the_update_undoes_the_update():
    model, x, y = regression()
    opt = MetaNNCombiner(model.parameters())
    calls = []

    def closure():
        calls.append(1)
        loss = closure_for(opt, model, x, y)()
        return loss if len(calls) == 1 else loss * math.inf

    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="the loss is inf at step 0 after the update, which was undone"):
        opt.step(closure)
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    assert opt.rule_state is None  # the pool's Adam did not advance either


def test_a_non_finite_meta_gradient_is_an_error():
    model, x, y = regression()
    opt = MetaNNCombiner(model.parameters())
    calls = []

    def closure():
        calls.append(1)
        loss = closure_for(opt, model, x, y)()
        if len(calls) == 2:
            model[2].bias.grad.fill_(math.inf)
        return loss

    with pytest.raises(ValueError, match="meta-gradient norm is (nan|inf) at step 0"):
        opt.step(closure)


def test_loss_feature_helpers():
    like = torch.zeros(2, dtype=torch.float64)
    assert float(loss_feature(None, like)) == 0.0
    assert float(loss_feature(torch.tensor(-math.e + 1), like)) == pytest.approx(1.0)
