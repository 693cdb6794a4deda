"""Adam, LSTM (faithful and scalable) and L2O update rules: exact meta-gradients (float64
finite differences), the higher driver against a plain functional loop, Adam against
torch.optim.Adam, bad input, dtypes, vmap, and the state memory of each LSTM variant."""

import copy

import higher
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fewshot_metaopt import GradientMetaLearner, GradientMetaLearnerConfig
from fewshot_metaopt.torch_optim import RuleOptimizer
from fewshot_metaopt.optim.rules import (
    AdamRule,
    L2ORule,
    LSTMRule,
    ScalableLSTMRule,
    log_sign_preprocess,
    lstm_rule,
    param_bytes,
    state_bytes,
)
from fewshot_metaopt.optim.rules.lstm_faithful import lstm_cell
from fewshot_metaopt.optim.rules.preprocess import check_grads, effective_lr, safe_sqrt
from learner_fixtures import classification_episodes, tiny_convnet, tiny_mlp
from test_meta_gradients import autograd_meta_gradient, central_differences, finite_difference


def make_rule(kind: str, **kwargs):
    """A rule whose every meta-parameter matters: the descent initialisation (which starts the
    readouts at zero) shaken by noise, so that gradients reach all weights."""
    torch.manual_seed(3)
    if kind == "adam":
        return AdamRule(lr=0.1, **kwargs)
    if kind == "lstm":
        rule = LSTMRule(init_lr=0.05, **kwargs)
    elif kind == "scalable":
        rule = ScalableLSTMRule(init_lr=0.05, **kwargs)
    else:
        # larger steps than MLPLOpt's defaults, so that the inner loop moves the weights
        rule = L2ORule(step_mult=0.1, exp_mult=0.1, **kwargs)
    with torch.no_grad():
        for p in rule.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return rule


LEARNED = ["lstm", "scalable", "l2o"]
ALL = ["adam", *LEARNED]


def learner_for(model, rule, steps):
    config = GradientMetaLearnerConfig(algorithm="maml", inner_steps=steps)
    return GradientMetaLearner(model, config, inner_optimizer=rule)


def plain_query_loss(model, rule, episode, steps, fixed_grads=None, record=None):
    """The meta-objective of one episode by a plain loop: functional_call, autograd.grad with
    create_graph=True, rule.update. ``fixed_grads``: use these inner gradients instead
    (the objective with gradients held constant); ``record``: append the gradients used."""
    params = dict(model.named_parameters())
    state = rule.init(params)
    for k in range(steps):
        if fixed_grads is None:
            loss = F.cross_entropy(functional_call(model, params, (episode.support_x,)), episode.support_y)
            grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()), create_graph=True)))
        else:
            grads = fixed_grads[k]
        if record is not None:
            record.append({n: g.detach() for n, g in grads.items()})
        params, state = rule.update(params, grads, state, k)
    return F.cross_entropy(functional_call(model, params, (episode.query_x,)), episode.query_y)


def plain_meta_gradient(model, rule, episodes, steps):
    tensors = list(model.parameters()) + list(rule.parameters())
    total = sum(plain_query_loss(model, rule, ep, steps) for ep in episodes) / len(episodes)
    grads = torch.autograd.grad(total, tensors, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]


# ----------------------------------------------------------------------- finite differences


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("kind", LEARNED)
def test_meta_gradient_of_rule_weights_and_init_matches_finite_differences(kind, steps):
    """Second order through the rule: LSTM weights (both variants), L2O MLP and theta."""
    model = tiny_mlp()
    rule = make_rule(kind) if kind == "l2o" else make_rule(kind, second_order=True)
    learner = learner_for(model, rule, steps)
    episodes = classification_episodes(2, (3,))
    tensors = list(model.parameters()) + list(learner.rule.parameters())
    exact = autograd_meta_gradient(learner, episodes, tensors)
    for ti, i, numeric in finite_difference(learner, episodes, tensors):
        assert float(exact[ti].view(-1)[i]) == pytest.approx(numeric, rel=1e-5, abs=1e-8), (ti, i)
    assert max(float(e.abs().max()) for e in exact) > 1e-3
    assert max(float(p.grad.abs().max()) for p in learner.rule.parameters()) > 1e-4


def test_meta_gradient_through_a_convnet_with_batch_norm_matches_finite_differences():
    model = tiny_convnet()
    learner = learner_for(model, make_rule("scalable", second_order=True), steps=2)
    episodes = classification_episodes(1, (1, 4, 4))
    tensors = list(model.parameters()) + list(learner.rule.parameters())
    exact = autograd_meta_gradient(learner, episodes, tensors)
    for ti, i, numeric in finite_difference(learner, episodes, tensors):
        assert float(exact[ti].view(-1)[i]) == pytest.approx(numeric, rel=1e-5, abs=1e-8), (ti, i)


@pytest.mark.parametrize("kind", ["lstm", "scalable"])
def test_constant_gradient_meta_gradient_is_that_of_the_objective_with_gradients_held_fixed(kind):
    """second_order=False: the meta-gradient is the exact derivative of the trajectory whose
    inner gradients are frozen at their values; and it differs from the second-order one."""
    steps = 3
    model = tiny_mlp()
    learner = learner_for(model, make_rule(kind), steps)
    episode = classification_episodes(1, (3,))[0]
    tensors = list(model.parameters()) + list(learner.rule.parameters())
    exact = autograd_meta_gradient(learner, [episode], tensors)

    recorded: list = []
    plain_query_loss(model, learner.rule, episode, steps, record=recorded)

    def frozen_objective() -> float:
        with torch.no_grad():
            return float(plain_query_loss(model, learner.rule, episode, steps, fixed_grads=recorded))

    for ti, i, numeric in central_differences(tensors, frozen_objective):
        assert float(exact[ti].view(-1)[i]) == pytest.approx(numeric, rel=1e-5, abs=1e-8)

    second = copy.deepcopy(learner.rule)
    second.second_order = True
    full = autograd_meta_gradient(learner_for(model, second, steps), [episode], list(model.parameters()))
    assert any(not torch.allclose(a, b, rtol=1e-6) for a, b in zip(exact, full))


# ----------------------------------------------------------------------- drivers agree


@pytest.mark.parametrize(
    "kind, kwargs",
    [("adam", {}), ("lstm", {}), ("lstm", {"second_order": True}), ("scalable", {}),
     ("scalable", {"second_order": True}), ("l2o", {}), ("l2o", {"second_order": False})],
)
def test_higher_driver_and_plain_functional_loop_give_the_same_meta_gradient(kind, kwargs):
    model = tiny_mlp()
    learner = learner_for(model, make_rule(kind, **kwargs), steps=3)
    episodes = classification_episodes(2, (3,))
    tensors = list(model.parameters()) + list(learner.rule.parameters())
    via_higher = autograd_meta_gradient(learner, episodes, tensors)
    plain = plain_meta_gradient(model, learner.rule, episodes, steps=3)
    for a, b in zip(via_higher, plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    assert max(float(g.abs().max()) for g in via_higher) > 1e-3


@pytest.mark.parametrize("kind", LEARNED)
def test_a_users_own_higher_loop_reaches_the_rules_parameters(kind):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    rule = make_rule(kind)
    x, y = torch.randn(6, 3), torch.tensor([0, 1] * 3)
    with higher.innerloop_ctx(model, RuleOptimizer(model.named_parameters(), rule), copy_initial_weights=False) as (
        fmodel,
        diffopt,
    ):
        for _ in range(2):
            diffopt.step(F.cross_entropy(fmodel(x), y))
        F.cross_entropy(fmodel(x), y).backward()
    assert all(p.grad is not None for p in rule.parameters())
    assert sum(float(p.grad.abs().sum()) for p in rule.parameters()) > 0
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())


# ----------------------------------------------------------------------- Adam


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_adam_rule_matches_torch_adam_step_for_step(dtype, tol):
    torch.manual_seed(0)
    ours = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)
    theirs = copy.deepcopy(ours)
    opt_ours = RuleOptimizer(ours.named_parameters(), AdamRule(lr=0.05, betas=(0.8, 0.99), eps=1e-6))
    opt_theirs = torch.optim.Adam(theirs.parameters(), lr=0.05, betas=(0.8, 0.99), eps=1e-6)
    x, y = torch.randn(10, 4, dtype=dtype), torch.randint(0, 3, (10,))
    for step in range(6):
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            if step in (2, 3):  # a tensor without a gradient neither moves nor ages
                model[0].bias.grad = None
            opt.step()
        for a, b in zip(ours.parameters(), theirs.parameters()):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    assert opt_ours.rule_state["0.bias"].step == 4 and opt_ours.rule_state["0.weight"].step == 6
    assert opt_ours.rule.get_learned_lr() == {n: 0.05 for n, _ in ours.named_parameters()}


def test_adam_meta_gradient_is_finite_for_coordinates_that_never_had_a_gradient():
    p = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    rule = AdamRule(lr=0.1)
    state = rule.init({"p": p})
    g = p * torch.tensor([1.0, 0.0], dtype=torch.float64)  # second coordinate: gradient 0
    new, _ = rule.update({"p": p}, {"p": g}, state, 0)
    (grad,) = torch.autograd.grad(new["p"].sum(), p)
    assert torch.isfinite(grad).all()
    assert safe_sqrt(torch.tensor([0.0, 4.0])).tolist() == [0.0, 2.0]


# ----------------------------------------------------------------------- bad input, contract


def small_params(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(3, 4, generator=g, dtype=dtype),
        "b": torch.randn(4, generator=g, dtype=dtype),
        "s": torch.randn((), generator=g, dtype=dtype),
    }


@pytest.mark.parametrize("kind", ALL)
def test_bad_gradients_raise_one_line_errors_naming_the_parameter(kind):
    rule = make_rule(kind).double()
    params = small_params()
    state = rule.init(params)
    grads = {n: torch.ones_like(p) for n, p in params.items()}
    with pytest.raises(ValueError, match=r"gradient of 'w' has shape \(4, 3\) but the parameter has \(3, 4\)"):
        rule.update(params, {**grads, "w": torch.ones(4, 3, dtype=torch.float64)}, state, 0)
    bad = grads["b"].clone()
    bad[1] = float("nan")
    with pytest.raises(ValueError, match=r"gradient of 'b' has non-finite values") as info:
        rule.update(params, {**grads, "b": bad}, state, 0)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="non-finite"):
        rule.update(params, {**grads, "s": torch.tensor(float("inf"), dtype=torch.float64)}, state, 0)
    with pytest.raises(ValueError, match=r"gradient for 'nope'"):
        rule.update(params, {**grads, "nope": torch.ones(1, dtype=torch.float64)}, state, 0)
    rule.check_finite = False
    new, _ = rule.update(params, {**grads, "b": bad}, state, 0)  # the check is switchable
    assert not torch.isfinite(new["b"]).all()


@pytest.mark.parametrize("kind", ALL)
def test_names_missing_from_grads_stay_unchanged_with_their_state(kind):
    rule = make_rule(kind).double()
    params = small_params()
    state = rule.init(params)
    new, new_state = rule.update(params, {"w": torch.ones(3, 4, dtype=torch.float64)}, state, 0)
    assert new["b"] is params["b"] and new["s"] is params["s"]
    assert new_state["b"] is state["b"] and new_state["s"] is state["s"]
    assert not torch.equal(new["w"], params["w"])
    assert all(t is params[n] for n, t in rule.update(params, {}, state, 0)[0].items())
    # nothing is modified in place
    assert torch.equal(params["w"], small_params()["w"])


@pytest.mark.parametrize("kind", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rules_run_in_float32_and_float64_and_keep_each_parameters_dtype(kind, dtype):
    rule = make_rule(kind).to(dtype)
    params = small_params(dtype)
    params["h"] = torch.randn(2, 2, dtype=torch.float16)  # a tensor of another dtype
    state = rule.init(params)
    grads = {n: torch.full_like(p, 0.5) for n, p in params.items()}
    for step in range(2):
        params, state = rule.update(params, grads, state, step)
    assert {n: p.dtype for n, p in params.items()} == {"w": dtype, "b": dtype, "s": dtype, "h": torch.float16}
    assert all(torch.isfinite(p).all() for p in params.values())
    lrs = rule.get_learned_lr()
    assert set(lrs) == set(params) and all(v > 0 for v in lrs.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("kind", ALL)
def test_rules_run_on_cuda(kind):  # pragma: no cover - runs where a GPU is present
    rule = make_rule(kind).cuda()
    params = {n: p.float().cuda() for n, p in small_params().items()}
    state = rule.init(params)
    new, _ = rule.update(params, {n: torch.ones_like(p) for n, p in params.items()}, state, 0)
    assert all(p.device.type == "cuda" for p in new.values())


@pytest.mark.parametrize("kind", ALL)
def test_rules_vectorise_over_tasks_with_vmap(kind):
    """A torch.func driver can vmap a rule over tasks: the checks stand aside, values agree."""
    rule = make_rule(kind).double()
    params = small_params()
    state = rule.init(params)
    tasks = {n: torch.randn(3, *p.shape, dtype=torch.float64) for n, p in params.items()}

    def one(grads):
        return rule.update(params, grads, state, 0)[0]

    batched = torch.func.vmap(one)(tasks)
    for k in range(3):
        looped = one({n: g[k] for n, g in tasks.items()})
        for n in params:
            torch.testing.assert_close(batched[n][k], looped[n], rtol=1e-10, atol=1e-12)


def test_effective_lr_is_mean_step_over_mean_gradient_of_the_last_update():
    rule = make_rule("l2o").double()
    params = small_params()
    grads = {n: torch.full_like(p, 2.0) for n, p in params.items()}
    assert rule.get_learned_lr() == {}
    new, _ = rule.update(params, grads, rule.init(params), 0)
    for n in params:
        expected = float((new[n] - params[n]).detach().abs().mean() / 2.0)
        assert rule.get_learned_lr()[n] == pytest.approx(expected, rel=1e-12)
    assert float(effective_lr(torch.ones(2), torch.zeros(2))) == float("inf")


# ----------------------------------------------------------------------- pieces and settings


def test_log_sign_preprocessing_follows_the_paper_and_has_finite_derivatives():
    p = 10.0
    g = torch.tensor([2.0, -1e-3, 1e-6, -1e-6, 0.0], dtype=torch.float64, requires_grad=True)
    x = log_sign_preprocess(g, p)
    expected = torch.tensor(
        [[torch.log(torch.tensor(2.0)) / p, 1.0], [torch.log(torch.tensor(1e-3)) / p, -1.0],
         [-1.0, 1e-6 * torch.exp(torch.tensor(p))], [-1.0, -1e-6 * torch.exp(torch.tensor(p))], [-1.0, 0.0]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(x, expected)
    (grad,) = torch.autograd.grad(x.sum(), g)
    assert torch.isfinite(grad).all()
    # continuous at the threshold |g| = e^-p
    edge = torch.exp(torch.tensor(-p, dtype=torch.float64))
    below, above = log_sign_preprocess(edge * (1 - 1e-9)), log_sign_preprocess(edge * (1 + 1e-9))
    torch.testing.assert_close(below, above, rtol=0, atol=1e-8)


def test_constructors_reject_bad_settings_and_the_factory_picks_a_variant():
    with pytest.raises(ValueError, match="positive finite lr"):
        AdamRule(lr=0)
    with pytest.raises(ValueError, match="betas"):
        AdamRule(betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps"):
        AdamRule(eps=-1)
    with pytest.raises(ValueError, match="hidden_size"):
        LSTMRule(hidden_size=0)
    with pytest.raises(ValueError, match="positive sizes"):
        ScalableLSTMRule(mlp_hidden=0)
    with pytest.raises(ValueError, match="betas"):
        ScalableLSTMRule(betas=(0.0, 0.9))
    with pytest.raises(ValueError, match="hidden_size"):
        L2ORule(hidden_layers=-1)
    with pytest.raises(ValueError, match="decays"):
        L2ORule(decays=(0.5, 1.5))
    with pytest.raises(ValueError, match="unknown LSTM variant 'big'"):
        lstm_rule("big")
    assert isinstance(lstm_rule("faithful", hidden_size=4), LSTMRule)
    scalable = lstm_rule("scalable", learn_decays=False)
    assert isinstance(scalable, ScalableLSTMRule)
    assert "decay_logits" not in dict(scalable.named_parameters())
    assert "decay_logits" in dict(scalable.named_buffers())
    assert len(list(L2ORule(hidden_layers=0).mlp)) == 1


def test_untrained_descent_rules_are_sign_descent_adam_and_normalised_adam():
    """init="descent": the faithful LSTM steps -lr sign(g), the scalable one equals Adam on
    vectors (Adafactor-factored on matrices), L2O steps along the Adam direction at unit RMS."""
    torch.manual_seed(0)
    params = {"w": torch.randn(4, 3, dtype=torch.float64), "b": torch.randn(4, dtype=torch.float64)}
    grads = [{n: torch.randn_like(p) for n, p in params.items()} for _ in range(3)]

    lstm = LSTMRule(init_lr=0.01).double()
    new, _ = lstm.update(params, grads[0], lstm.init(params), 0)
    for n in params:
        torch.testing.assert_close(new[n] - params[n], -0.01 * grads[0][n].sign())

    scalable = ScalableLSTMRule(init_lr=0.01).double()
    adam = AdamRule(lr=0.01).double()
    ours, state = dict(params), scalable.init(params)
    ref, ref_state = dict(params), adam.init(params)
    for k, g in enumerate(grads):
        ours, state = scalable.update(ours, g, state, k)
        ref, ref_state = adam.update(ref, g, ref_state, k)
    torch.testing.assert_close(ours["b"], ref["b"], rtol=1e-6, atol=1e-9)
    assert float((ours["w"] - params["w"]).detach().abs().max()) > 0

    l2o = L2ORule(step_mult=0.01).double()
    new, state = l2o.update(params, grads[0], l2o.init(params), 0)
    for n, g in grads[0].items():
        v = (1 - 0.999) * g * g
        direction = (1 - 0.9) * g * torch.rsqrt(v + 1e-8)
        direction = direction * torch.rsqrt(1e-5 + direction.square().mean())
        torch.testing.assert_close(new[n] - params[n], -0.01 * direction)


def test_random_init_keeps_the_papers_form_and_bad_init_settings_are_named():
    for rule in (LSTMRule(init="random"), ScalableLSTMRule(init="random"), L2ORule(init="random")):
        assert rule.init_mode == "random"
        assert "nominal" not in dict(rule.named_parameters()) and "skip" not in dict(rule.named_parameters())
        assert float(dict(rule.named_buffers()).get("nominal", dict(rule.named_buffers()).get("skip")).abs().sum()) == 0
    with pytest.raises(ValueError, match="unknown rule init 'zeros'"):
        LSTMRule(init="zeros")
    with pytest.raises(ValueError, match="init_lr must be positive and finite, got -1"):
        ScalableLSTMRule(init_lr=-1)
    with pytest.raises(ValueError, match="step_mult must be positive and finite, got 0"):
        L2ORule(step_mult=0)
    with pytest.raises(ValueError, match="decay 0.9"):
        L2ORule(decays=(0.5, 0.99))
    assert L2ORule(decays=(0.5, 0.99), init="random").num_features == 4 + 4 + 9


def test_the_written_out_lstm_cell_equals_torch_lstm_cell():
    torch.manual_seed(0)
    cell = nn.LSTMCell(3, 5).double()
    x, h, c = (torch.randn(7, n, dtype=torch.float64) for n in (3, 5, 5))
    for ours, theirs in zip(lstm_cell(cell, x, (h, c)), cell(x, (h, c))):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)


def test_grad_check_alone_accepts_good_and_meta_gradients():
    params = small_params()
    check_grads(params, {n: torch.ones_like(p) for n, p in params.items()})
    check_grads({"m": torch.empty(2, device="meta")}, {"m": torch.empty(2, device="meta")})


# ----------------------------------------------------------------------- memory


def model_shapes(total_rows: int, width: int = 1000):
    """A few tensors, mostly matrices, of about ``total_rows * width`` parameters."""
    return {
        "a.weight": (total_rows // 2, width),
        "a.bias": (total_rows // 2,),
        "b.weight": (total_rows // 4, width),
        "c.weight": (total_rows // 4, width // 10, 10),
        "c.bias": (width,),
    }


def state_ratio(rule, params):
    return state_bytes(rule.init(params)) / param_bytes(params)


def test_state_memory_faithful_80x_scalable_under_2x_at_10m_parameters():
    """On the meta device (shapes only, no memory): 12M parameters."""
    params = {n: torch.empty(s, device="meta") for n, s in model_shapes(12000).items()}
    assert sum(p.numel() for p in params.values()) > 10_000_000
    assert state_ratio(LSTMRule(), params) == 80.0  # 2 (h, c) x 2 layers x 20 hidden
    scalable = ScalableLSTMRule().to("meta")
    state = scalable.init(params)
    assert state_bytes(state) / param_bytes(params) <= 1.01
    # after an update too (the update runs on meta: shapes and dtypes only)
    grads = {n: torch.empty_like(p) for n, p in params.items()}
    _, state = scalable.update(params, grads, state, 0)
    assert state_bytes(state) / param_bytes(params) <= 1.01
    assert state_ratio(L2ORule(), params) == 4.0 and state_ratio(AdamRule(), params) == 2.0
    assert state_bytes({"x": [state["a.bias"].m, state["a.bias"].m], "n": 3}) == 6000 * 4


def test_scalable_state_stays_under_2x_at_1m_real_parameters():
    torch.manual_seed(0)
    params = {n: torch.randn(s) * 0.1 for n, s in model_shapes(1000).items()}
    assert sum(p.numel() for p in params.values()) >= 1_000_000
    rule = ScalableLSTMRule()
    state = rule.init(params)
    for step in range(2):
        grads = {n: torch.randn_like(p) * 0.01 for n, p in params.items()}
        params, state = rule.update(params, grads, state, step)
    ratio = state_bytes(state) / param_bytes(params)
    assert ratio <= 2.0
    assert ratio == pytest.approx(1.0, abs=0.01)
    # 1-D tensors keep a full second moment: 2 floats per coordinate, never more
    small = {"bias": torch.zeros(10_000)}
    assert state_ratio(rule, small) == pytest.approx(2.0, abs=0.01)
