"""ControlMetaOptimizer and ControlRule (seed 003): the M update against an explicit replay
written out here, M = 0 against torch's AdamW (and SGD, unscaled) with weight decay, replays
reproducing the real trajectory, improvement across episodes, bounded memory, bit-identical
checkpoints, the rule in a learner (float64 finite differences), and bad input. The
reference's own equations are in test_control_fidelity.py."""

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fewshot_metaopt import GradientMetaLearner, GradientMetaLearnerConfig
from fewshot_metaopt.datasets import Sinusoid
from fewshot_metaopt.meta_training import EpisodeTasks
from fewshot_metaopt.models import mlp
from fewshot_metaopt.torch_optim import ControlMetaOptimizer
from fewshot_metaopt.optim import ControlRule
from learner_fixtures import classification_episodes, tiny_mlp
from test_meta_gradients import autograd_meta_gradient, finite_difference
from test_meta_nn import regression

F64 = torch.float64


def linear_problem(steps, seed=0):
    """nn.Linear(3, 2) in float64 (8 coordinates) and one fresh regression batch per step."""
    torch.manual_seed(seed)
    model = nn.Linear(3, 2).to(F64)
    g = torch.Generator().manual_seed(seed)
    truth = torch.randn(2, 3, generator=g, dtype=F64)
    batches = []
    for _ in range(steps + 1):
        x = torch.randn(6, 3, generator=g, dtype=F64)
        batches.append((x, x @ truth.T + 0.1 * torch.randn(6, 2, generator=g, dtype=F64)))
    return model, batches


def loss_of(model):
    def loss_fn(params, batch):
        x, y = batch
        return F.mse_loss(functional_call(model, params, (x,)), y)

    return loss_fn


def flat_loss(theta, batch):
    """The same loss, written directly on the flat vector (weight rows first, then bias)."""
    x, y = batch
    return F.mse_loss(x @ theta[:6].view(2, 3).T + theta[6:], y)


def flat(model):
    return torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])


# ----------------------------------------------------------------------- the M update


class Disturbances:
    """The disturbance transform, written out: clip, then Adam's m_hat / (sqrt(v_hat) + eps)."""

    def __init__(self, clip, betas, size, eps=1e-8):
        self.clip, self.betas, self.eps = clip, betas, eps
        self.m, self.v, self.count = torch.zeros(size, dtype=F64), torch.zeros(size, dtype=F64), 0

    def snapshot(self):
        return (self.m, self.v, self.count)

    def __call__(self, g, snapshot=None):
        m, v, count = snapshot if snapshot is not None else self.snapshot()
        if self.clip is not None:
            g = g.clamp(-self.clip, self.clip)
        if self.betas is None:
            return g, (m, v, count)
        b1, b2 = self.betas
        m, v, count = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g, count + 1
        w = (m / (1 - b1**count)) / (torch.sqrt(v / (1 - b2**count)) + self.eps)
        return w, (m, v, count)


def control(M, shape, w):
    if shape == "full":
        return M @ w
    return M * w  # a scalar or a diagonal: elementwise


def reference_cost(M, shape, t, thetas, batches, seen, snapshots, transform, H, HH, lr, wd):
    """Replay steps t-HH .. t-1 from theta_{t-HH} with this M: fresh gradients on each step's
    batch, the disturbances actually seen as the control's input; the loss of batch t."""
    theta = thetas[t - HH].clone().requires_grad_()
    snapshot = snapshots[t - HH]
    for s in range(t - HH, t):
        (g,) = torch.autograd.grad(flat_loss(theta, batches[s]), theta, create_graph=True)
        w, snapshot = transform(g, snapshot)
        u = sum(control(M[i], shape, seen[s - i]) for i in range(H) if s - i >= 0)
        theta = theta - wd * theta - lr * w + u
    return flat_loss(theta, batches[t])


@pytest.mark.parametrize(
    "shape, grad_clip, betas",
    [("scalar", None, None), ("diagonal", 0.5, None), ("full", None, (0.9, 0.99))],
)
def test_m_update_equals_an_explicit_counterfactual_replay(shape, grad_clip, betas):
    H, HH, lr, wd, m_lr, steps = 3, 2, 0.05, 1e-3, 0.05, 6
    model, batches = linear_problem(steps)
    opt = ControlMetaOptimizer(
        model, loss_of(model), lr=lr, weight_decay=wd, history=H, rollout=HH, m_shape=shape, m_lr=m_lr,
        grad_clip=grad_clip, adam_betas=betas, warmup=HH, m_grad_clip=None,
    )
    torch.manual_seed(1)
    with torch.no_grad():
        opt.rule.M.normal_(0.0, 0.05)  # a non-zero M, so the control shapes the replay
    transform = Disturbances(grad_clip, betas, 8)
    thetas, seen, snapshots, checked = [], [], [], 0
    for t in range(steps):
        theta = flat(model)
        thetas.append(theta)
        snapshots.append(transform.snapshot())
        M = opt.rule.M.detach().clone().requires_grad_()
        if t >= HH:
            cost = reference_cost(M, shape, t, thetas, batches, seen, snapshots, transform, H, HH, lr, wd)
            (grad,) = torch.autograd.grad(cost, M)
        loss = opt.step(batches[t])
        point = theta.clone().requires_grad_()
        (g,) = torch.autograd.grad(flat_loss(point, batches[t]), point)
        w, state = transform(g)
        transform.m, transform.v, transform.count = state
        seen.append(w.detach())
        assert float(loss) == pytest.approx(float(flat_loss(theta, batches[t])), rel=1e-12)
        if t >= HH:
            torch.testing.assert_close(opt.rule.M.detach(), M.detach() - m_lr * grad, rtol=1e-10, atol=1e-13)
            assert float(opt.last_counterfactual_loss) == pytest.approx(float(cost.detach()), rel=1e-12)
            assert float(grad.abs().max()) > 1e-6
            checked += 1
        else:
            assert torch.equal(opt.rule.M.detach(), M.detach())
    assert checked == steps - HH


def test_with_m_fixed_a_replay_reproduces_the_real_trajectory():
    model, batches = linear_problem(8)
    opt = ControlMetaOptimizer(
        model, loss_of(model), lr=0.05, history=4, rollout=3, m_shape="diagonal", m_lr=0.0, warmup=3
    )
    with torch.no_grad():
        opt.rule.M.normal_(0.0, 0.05)
    for t, batch in enumerate(batches):
        loss = opt.step(batch)
        if t >= 3:
            assert float(opt.last_counterfactual_loss) == pytest.approx(float(loss), rel=1e-12)


# ----------------------------------------------------------------------- M = 0 is AdamW, or SGD


def test_with_m_zero_it_is_torch_adamw_at_the_defaults():
    model, batches = linear_problem(12)
    twin = nn.Linear(3, 2).to(F64)
    twin.load_state_dict(model.state_dict())
    opt = ControlMetaOptimizer(model, lr=0.1, weight_decay=1e-3, freeze=True)
    adamw = torch.optim.AdamW(twin.parameters(), lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-3 / 0.1)
    for x, y in batches:
        for m, o in ((model, opt), (twin, adamw)):
            o.zero_grad()
            F.mse_loss(m(x), y).backward()
            o.step()
        for a, b in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_with_m_zero_and_unscaled_disturbances_it_is_torch_sgd_with_weight_decay():
    model, batches = linear_problem(12)
    twin = nn.Linear(3, 2).to(F64)
    twin.load_state_dict(model.state_dict())
    opt = ControlMetaOptimizer(model, lr=0.1, weight_decay=1e-3, adam_betas=None, freeze=True)
    sgd = torch.optim.SGD(twin.parameters(), lr=0.1, weight_decay=1e-3 / 0.1)
    for x, y in batches:  # an ordinary loop: the caller's backward, step() without a batch
        for m, o in ((model, opt), (twin, sgd)):
            o.zero_grad()
            F.mse_loss(m(x), y).backward()
            o.step()
        for a, b in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("warmup, betas", [(None, (0.9, 0.999)), (3, None)])
def test_while_learning_the_warmup_steps_are_adamw_or_sgd_too(warmup, betas):
    """M first learns at episode step H + HH (the default, as in the reference) or ``warmup``."""
    H, HH = 4, 3
    model, batches = linear_problem(H + HH)
    twin = nn.Linear(3, 2).to(F64)
    twin.load_state_dict(model.state_dict())
    opt = ControlMetaOptimizer(model, loss_of(model), lr=0.1, weight_decay=1e-3, history=H, rollout=HH, m_lr=0.1,
                               adam_betas=betas, warmup=warmup)
    if betas is None:
        base = torch.optim.SGD(twin.parameters(), lr=0.1, weight_decay=1e-3 / 0.1)
    else:
        base = torch.optim.AdamW(twin.parameters(), lr=0.1, betas=betas, weight_decay=1e-3 / 0.1)
    first = H + HH if warmup is None else warmup
    for t in range(first):
        opt.step(batches[t])
        base.zero_grad()
        loss_of(twin)(dict(twin.named_parameters()), batches[t]).backward()
        base.step()
        torch.testing.assert_close(flat(model), flat(twin), rtol=1e-12, atol=1e-14)
    assert float(opt.rule.M.detach().abs().max()) == 0.0
    opt.step(batches[first])  # the first counterfactual update
    assert float(opt.rule.M.detach().abs().max()) > 0.0


# ----------------------------------------------------------------------- learning


def train_episode(opt, model, init, batch, steps):
    model.load_state_dict(init)
    opt.start_episode()
    for _ in range(steps):
        opt.step(batch)
    with torch.no_grad():
        return float(loss_of(model)(dict(model.named_parameters()), batch))


def test_improves_across_episodes_and_ends_below_sgd_with_the_same_step():
    """The seed's claim on a deterministic regression MLP: M kept across three episodes."""
    model, x, y = regression()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    # The seed's claim is about gradient disturbances, learning from the first possible step.
    opt = ControlMetaOptimizer(model, loss_of(model), lr=0.05, history=4, rollout=2, m_lr=1e-3, adam_betas=None,
                               m_grad_clip=None, warmup=2)
    finals = [train_episode(opt, model, init, (x, y), 60) for _ in range(3)]
    model.load_state_dict(init)
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=1e-4 / 0.05)
    for _ in range(60):
        sgd.zero_grad()
        F.mse_loss(model(x), y).backward()
        sgd.step()
    with torch.no_grad():
        baseline = float(F.mse_loss(model(x), y))
    assert finals[2] < finals[1] < finals[0] < baseline, (finals, baseline)
    assert opt.steps_taken == 180 and opt.episode_steps == 60


def sinusoid_episodes(options, seed, episodes, steps):
    """The benchmark's sinusoid MLP (1-40-40-1, 50 points, full batch): the final loss of each
    episode from the same start, M kept; and the initial loss."""
    family = EpisodeTasks(Sinusoid(), lambda: mlp(1, 1), ways=1, shots=50)
    task = family.sample(torch.Generator().manual_seed(seed))
    params = {name: nn.Parameter(p.detach().clone()) for name, p in task.params.items()}
    opt = ControlMetaOptimizer(list(params.items()), lambda p, batch: task.loss(p), **options)
    with torch.no_grad():
        initial = float(task.loss(params))
    finals = []
    for _ in range(episodes):
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(task.params[name])
        opt.start_episode()
        for _ in range(steps):
            opt.step(())
        with torch.no_grad():
            finals.append(float(task.loss(params)))
    return initial, finals, opt


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_defaults_do_not_diverge_on_the_sinusoid_mlp(seed):
    initial, finals, opt = sinusoid_episodes({}, seed, episodes=3, steps=100)
    assert all(math.isfinite(f) and f < 0.1 * initial for f in finals), (initial, finals)
    assert float(opt.rule.M.detach().abs().max()) > 0.0  # M learned: the replays ran


def test_the_old_unscaled_unclipped_configuration_diverges_there():
    """Why the defaults changed: raw gradients as disturbances, M's gradient unclipped and
    learning from step HH blow up on the same MLP with a larger M step."""
    old = {"adam_betas": None, "m_grad_clip": None, "warmup": 2, "m_lr": 1e-3}
    with pytest.raises(ValueError, match="is (nan|inf) at step"):
        sinusoid_episodes(old, 0, episodes=1, steps=100)


@pytest.mark.parametrize("replay", ["exact", "reference"])
def test_memory_is_bounded_and_matches_the_documented_sizes(replay):
    H, HH, P = 5, 2, 8
    model, batches = linear_problem(20)
    opt = ControlMetaOptimizer(model, loss_of(model), history=H, rollout=HH, m_shape="diagonal",
                               adam_betas=(0.9, 0.99), replay=replay)
    sizes = []
    for t, batch in enumerate(batches):
        opt.step(batch)
        if t >= HH:
            sizes.append(opt.memory_bytes())
    assert all(s == sizes[0] for s in sizes)
    batch_bytes = sum(t.numel() * 8 for t in batches[0])
    exact = replay == "exact"
    assert sizes[0] == {
        "M": H * P * 8,
        "disturbances": (H + HH - exact) * P * 8,
        "parameters": HH * P * 8,
        "rescaler": 2 * (HH + 1 if exact else 1) * P * 8,
        "batches": HH * batch_bytes,
    }
    opt.start_episode()
    assert opt.memory_bytes()["parameters"] == 0 and opt.memory_bytes()["disturbances"] == 0
    assert opt.rule.M.abs().sum() > 0  # M survives the new episode


@pytest.mark.parametrize("replay", ["exact", "reference"])
def test_state_dict_round_trip_continues_bit_identically(replay):
    model, batches = linear_problem(12)
    options = dict(lr=0.05, history=3, rollout=2, m_shape="diagonal", m_lr=1e-2, m_optimizer="adam",
                   adam_betas=(0.9, 0.99), grad_clip=1.0, m_grad_clip=0.1, warmup=3, replay=replay)
    opt = ControlMetaOptimizer(model.named_parameters(), loss_of(model), **options)
    for batch in batches[:5]:
        opt.step(batch)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    expected = []
    for batch in batches[5:]:
        opt.step(batch)
        expected.append((flat(model), opt.rule.M.detach().clone()))
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    fresh = nn.Linear(3, 2).to(F64)
    fresh.load_state_dict(saved["model"])
    again = ControlMetaOptimizer(fresh.named_parameters(), loss_of(fresh), **options)
    again.load_state_dict(saved["opt"])
    for batch, (theta, M) in zip(batches[5:], expected):
        again.step(batch)
        assert torch.equal(flat(fresh), theta) and torch.equal(again.rule.M.detach(), M)
    with pytest.raises(ValueError, match="saved with history=3, this optimizer has history=4"):
        ControlMetaOptimizer(fresh, loss_of(fresh), **{**options, "history": 4}).load_state_dict(saved["opt"])
    other = "reference" if replay == "exact" else "exact"
    with pytest.raises(ValueError, match=f"saved with replay='{replay}', this optimizer has replay='{other}'"):
        ControlMetaOptimizer(fresh, loss_of(fresh), **{**options, "replay": other}).load_state_dict(saved["opt"])


# ----------------------------------------------------------------------- the rule


def test_rule_meta_gradient_in_a_learner_matches_finite_differences():
    model = tiny_mlp()
    shapes = {n: p.shape for n, p in model.named_parameters()}
    torch.manual_seed(3)
    rule = ControlRule(shapes, lr=0.3, history=2, rollout=1, m_shape="diagonal")
    with torch.no_grad():
        rule.M.normal_(0.0, 0.1)
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(inner_steps=2), inner_optimizer=rule)
    episodes = classification_episodes(2, (3,))
    tensors = list(model.parameters()) + [learner.rule.M]
    exact = autograd_meta_gradient(learner, episodes, tensors)
    for ti, i, numeric in finite_difference(learner, episodes, tensors):
        assert float(exact[ti].view(-1)[i]) == pytest.approx(numeric, rel=1e-5, abs=1e-9), (ti, i)
    assert float(exact[-1].abs().max()) > 1e-4


def test_scalar_diagonal_and_full_m_agree_when_they_describe_the_same_control():
    shapes = {"a": (2, 2), "b": (3,)}
    params = {"a": torch.randn(2, 2, dtype=F64), "b": torch.randn(3, dtype=F64)}
    rules = {shape: ControlRule(shapes, history=2, rollout=2, m_shape=shape).double() for shape in ("scalar", "diagonal", "full")}
    with torch.no_grad():
        rules["scalar"].M.copy_(torch.tensor([0.3, -0.2]))
        rules["diagonal"].M.copy_(torch.tensor([0.3, -0.2])[:, None].expand(2, 7))
        rules["full"].M.copy_(torch.tensor([0.3, -0.2])[:, None, None] * torch.eye(7))
    results = {}
    for shape, rule in rules.items():
        state, p = rule.init(params), params
        for k in range(3):
            p, state = rule.update(p, {n: (k + 1) * torch.ones_like(v) for n, v in p.items()}, state, k)
        results[shape] = rule.flatten(p)
    torch.testing.assert_close(results["scalar"], results["diagonal"], rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(results["scalar"], results["full"], rtol=1e-14, atol=1e-15)
    new, _ = rules["scalar"].update(params, {"a": torch.ones(2, 2, dtype=F64)}, rules["scalar"].init(params), 0)
    assert new["b"] is params["b"]  # no gradient: kept, as the rule contract says


# ----------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"history": 0}, r"integer history \(H\) >= 1, got 0"),
        ({"rollout": 0}, r"integer rollout \(HH\) >= 1, got 0"),
        ({"history": 2, "rollout": 3}, r"rollout \(HH\) <= history \(H\), got HH=3 and H=2"),
        ({"m_shape": "banded"}, "unknown ControlRule m_shape 'banded'"),
        ({"lr": -0.1}, "positive lr, got -0.1"),
        ({"weight_decay": math.inf}, "finite number weight_decay, got inf"),
        ({"grad_clip": 0}, "positive grad_clip, got 0"),
        ({"adam_betas": (0.9,)}, r"adam_betas must be a pair, got \(0.9,\)"),
        ({"adam_betas": (0.9, 1.0)}, r"betas must lie in \[0, 1\), got \(0.9, 1.0\)"),
        ({"m_lr": -1e-5}, r"m_lr in \[0.0, inf\], got -1e-05"),
        ({"m_optimizer": "lbfgs"}, "unknown ControlMetaOptimizer m_optimizer 'lbfgs'"),
        ({"m_grad_clip": -1.0}, "positive m_grad_clip, got -1.0"),
        ({"warmup": 1}, "ControlMetaOptimizer needs an integer warmup >= 2, got 1"),
        ({"warmup": 2.5}, "ControlMetaOptimizer needs an integer warmup >= 2, got 2.5"),
        ({"replay": "jax"}, "unknown ControlRule replay 'jax'; choose one of exact, reference"),
    ],
)
def test_bad_hyperparameters_are_one_line_errors_naming_the_value(kwargs, message):
    model, _ = linear_problem(1)
    with pytest.raises(ValueError, match=message) as err:
        ControlMetaOptimizer(model, loss_of(model), **kwargs)
    assert "\n" not in str(err.value)


def test_a_full_m_past_the_limit_is_refused():
    with pytest.raises(ValueError, match="a full M for 2000 coordinates and H=16 holds 64000000 numbers"):
        ControlRule({"w": (2000,)}, m_shape="full")
    with pytest.raises(ValueError, match="ControlRule got no parameters"):
        ControlRule({})


def test_bad_use():
    model, batches = linear_problem(3)
    with pytest.raises(ValueError, match="give loss_fn"):
        ControlMetaOptimizer(model)
    with pytest.raises(ValueError, match="loss_fn must be callable, got int"):
        ControlMetaOptimizer(model, 3)
    mixed = [("a", torch.zeros(2, requires_grad=True)), ("b", torch.zeros(2, dtype=F64, requires_grad=True))]
    with pytest.raises(ValueError, match="'b' is torch.float64 on cpu, the first is torch.float32 on cpu"):
        ControlMetaOptimizer(mixed, freeze=True)
    opt = ControlMetaOptimizer(model, loss_of(model))
    with pytest.raises(ValueError, match=r"needs the batch to learn M \(step\(batch\)\)"):
        opt.step()
    frozen = ControlMetaOptimizer(model, freeze=True)
    with pytest.raises(ValueError, match="needs the loss_fn given at construction"):
        frozen.step(batches[0])
    with pytest.raises(ValueError, match="parameter 'weight' has no gradient"):
        frozen.step()
    x, y = batches[0]
    with pytest.raises(ValueError, match="the loss is nan at step 0"):
        opt.step((x * math.nan, y))
    unused = ControlMetaOptimizer([*model.named_parameters(), ("extra", nn.Parameter(torch.zeros(1, dtype=F64)))],
                                  loss_of(model))
    with pytest.raises(ValueError, match="parameter 'extra' has no gradient"):
        unused.step(batches[0])
    frozen.zero_grad()
    F.mse_loss(model(x), y).backward()
    model.bias.grad[0] = math.inf
    with pytest.raises(ValueError, match="gradient of 'bias' has non-finite values"):
        frozen.step()


def test_non_finite_counterfactuals_leave_m_alone():
    model, batches = linear_problem(4)
    poison = {"cost": False, "grad": False}
    plain = loss_of(model)

    def loss_fn(params, batch):
        if poison["cost"]:
            return plain(params, batch) * math.nan
        if poison["grad"] and batch is batches[2]:  # the cost alone: a finite value, an infinite slope
            w = params["weight"]
            return plain(params, batch) + torch.sqrt((w - w.detach()).abs().sum())
        return plain(params, batch)

    opt = ControlMetaOptimizer(model, loss_fn, history=2, rollout=2, m_lr=0.1)
    opt.step(batches[0])
    opt.step(batches[1])
    for key, message in (("cost", "the counterfactual loss is nan at step 2"), ("grad", "M's gradient has non-finite")):
        poison[key] = True
        with pytest.raises(ValueError, match=message):
            opt._learn(opt.rule_state, batches[2])
        poison[key] = False
    assert float(opt.rule.M.detach().abs().max()) == 0.0
