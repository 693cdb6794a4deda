"""AdaptiveSGDWithTape and its rule (seed 002): meta-gradients of the unrolled loss against
float64 finite differences (on its own and in a learner's inner loop), the untrained rule
against torch's SGD, meta-training over task families beating the base SGD, bit-identical
checkpoints, the task families, and bad input."""

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_metaopt import GradientMetaLearner, GradientMetaLearnerConfig
from fewshot_metaopt.datasets import Glyphs, Sinusoid
from fewshot_metaopt.models import mlp
from fewshot_metaopt.torch_optim import AdaptiveSGDWithTape
from fewshot_metaopt.optim import DifferentiableTape, SGDRule, TapeSGDRule
from fewshot_metaopt.meta_training import EpisodeTasks, QuadraticTasks, meta_train_on_tasks
from fewshot_metaopt.meta_training.task_meta_training import unrolled_loss
from learner_fixtures import classification_episodes, tiny_mlp
from test_meta_gradients import autograd_meta_gradient, central_differences, finite_difference


def random_rule(seed=0, **kwargs) -> TapeSGDRule:
    """A float64 rule with every weight random, so every path of the meta-gradient is live
    (the untrained rule's readout is zero, which would hide the tape's heads)."""
    torch.manual_seed(seed)
    rule = TapeSGDRule(**kwargs).double()
    with torch.no_grad():
        for p in rule.parameters():
            p.normal_(0.0, 0.5)
    return rule


def quadratic(seed=0, dim=4):
    return QuadraticTasks(dim=dim, condition=10.0, dtype=torch.float64).sample(torch.Generator().manual_seed(seed))


def rule_gradient(rule, objective):
    grads = torch.autograd.grad(objective(), list(rule.parameters()))
    return [g.detach() for g in grads]


# ----------------------------------------------------------------------- meta-gradients


def test_one_step_meta_gradient_matches_finite_differences():
    """One inner step: the features read only the starting point, so the autograd gradient is
    the exact derivative of the meta-loss, write head, read head and coefficients alike."""
    rule = random_rule(lr=0.3, momentum=0.2, weight_decay=1e-3)
    task = quadratic()
    exact = rule_gradient(rule, lambda: unrolled_loss(rule, task, 1))

    def value() -> float:
        with torch.enable_grad():
            return float(unrolled_loss(rule, task, 1).detach())

    for ti, i, numeric in central_differences(list(rule.parameters()), value):
        assert float(exact[ti].view(-1)[i]) == pytest.approx(numeric, rel=1e-5, abs=1e-9), (ti, i)
    assert all(float(g.abs().max()) > 1e-6 for g in exact)


def test_multi_step_meta_gradient_is_exact_with_the_detached_features_held_fixed():
    """Several steps: the tape's features are detached by design, so the meta-gradient is the
    derivative of the unroll whose features are frozen at the values they took."""
    rule = random_rule(seed=1, lr=0.3, momentum=0.3, weight_decay=1e-3)
    task = quadratic(seed=1)
    original = rule.features
    recorded = []
    rule.features = lambda *args: recorded.append(original(*args)) or recorded[-1]
    exact = rule_gradient(rule, lambda: unrolled_loss(rule, task, 3))
    replay = iter([])

    def frozen(*args):
        return next(replay)

    rule.features = frozen

    def value() -> float:
        nonlocal replay
        replay = iter(recorded)
        with torch.enable_grad():
            return float(unrolled_loss(rule, task, 3).detach())

    for ti, i, numeric in central_differences(list(rule.parameters()), value):
        assert float(exact[ti].view(-1)[i]) == pytest.approx(numeric, rel=1e-5, abs=1e-9), (ti, i)
    assert len(recorded) == 3 and max(float(g.abs().max()) for g in exact) > 1e-3


def test_as_a_learners_inner_rule_its_meta_gradient_matches_finite_differences():
    model = tiny_mlp()
    rule = random_rule(seed=2, lr=0.3, momentum=0.1)
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(algorithm="maml", inner_steps=1), inner_optimizer=rule)
    episodes = classification_episodes(2, (3,))
    tensors = list(learner.rule.parameters())
    exact = autograd_meta_gradient(learner, episodes, tensors)
    for ti, i, numeric in finite_difference(learner, episodes, tensors):
        assert float(exact[ti].view(-1)[i]) == pytest.approx(numeric, rel=1e-5, abs=1e-9), (ti, i)
    assert max(float(e.abs().max()) for e in exact) > 1e-4
    result = learner.meta_train_step(episodes)  # and the learner trains it
    assert math.isfinite(result.loss)


# ----------------------------------------------------------------------- behaviour


def test_untrained_rule_is_sgd_with_the_base_learning_rate():
    torch.manual_seed(0)
    ours = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    theirs = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    theirs.load_state_dict(ours.state_dict())
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    opt, sgd = AdaptiveSGDWithTape(ours.named_parameters(), lr=0.1), torch.optim.SGD(theirs.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        loss = F.mse_loss(ours(x), y)
        loss.backward()
        opt.step(loss=loss)
        sgd.zero_grad()
        F.mse_loss(theirs(x), y).backward()
        sgd.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)  # weight decay 1.2e-8, not 0
    assert opt.rule.get_learned_lr()["0.weight"] == pytest.approx(0.1, rel=1e-6)


def test_after_meta_training_on_quadratics_it_beats_sgd_at_its_base_learning_rate():
    family = QuadraticTasks(dim=5, condition=10.0)
    torch.manual_seed(0)
    rule = TapeSGDRule(lr=0.2)
    history = meta_train_on_tasks(rule, family, meta_steps=15, inner_steps=10, meta_lr=3e-2, seed=0)
    assert len(history) == 15 and all(math.isfinite(h) for h in history)
    held_out = family.sample(torch.Generator().manual_seed(1000))
    # As an ordinary torch.optim optimizer on a task it never saw, against torch's SGD.
    finals = {}
    for kind in ("tape", "sgd"):
        x = nn.Parameter(held_out.params["x"].clone())
        opt = AdaptiveSGDWithTape([x], rule=rule) if kind == "tape" else torch.optim.SGD([x], lr=0.2)

        def closure():
            opt.zero_grad()
            loss = held_out.loss({"x": x})
            loss.backward()
            return loss

        for _ in range(10):
            opt.step(closure)
        finals[kind] = float(held_out.loss({"x": x.detach()}))
    assert finals["tape"] < 0.8 * finals["sgd"], finals


def test_parameters_without_gradient_are_skipped_and_memory_stays_bounded():
    torch.manual_seed(0)
    used, unused = nn.Parameter(torch.randn(4)), nn.Parameter(torch.ones(2))
    opt = AdaptiveSGDWithTape([("used", used), ("unused", unused)], lr=0.05, decay=0.5)
    for _ in range(200):
        opt.zero_grad()
        loss = (used**2).sum()
        loss.backward()
        opt.step(loss=loss)
    assert torch.equal(unused.detach(), torch.ones(2))
    assert float(opt.rule_state.memory.abs().max()) <= 1 / (1 - 0.5)
    rule = TapeSGDRule()
    params = {"a": torch.ones(2)}
    new, state = rule.update(params, {}, rule.init(params), 0)  # nothing has a gradient
    assert new["a"] is params["a"] and state.memory is not None


def test_state_dict_round_trip_continues_bit_identically():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    opt = AdaptiveSGDWithTape(model.parameters(), rule=random_rule(lr=0.1, momentum=0.5).float())

    def run(opt, model, steps):
        out = []
        for _ in range(steps):
            def closure():
                opt.zero_grad()
                loss = F.mse_loss(model(x), y)
                loss.backward()
                return loss

            opt.step(closure)
            out.append([p.detach().clone() for p in model.parameters()])
        return out

    run(opt, model, 4)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    expected = run(opt, model, 4)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    torch.manual_seed(5)
    fresh = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    fresh.load_state_dict(saved["model"])
    again = AdaptiveSGDWithTape(fresh.parameters(), lr=0.1, momentum=0.5)
    again.load_state_dict(saved["opt"])
    for want, got in zip(expected, run(again, fresh, 4)):
        assert all(torch.equal(a, b) for a, b in zip(want, got))
    with pytest.raises(ValueError, match="saved with slots=32, this optimizer has slots=8"):
        AdaptiveSGDWithTape(fresh.parameters(), lr=0.1, momentum=0.5, slots=8).load_state_dict(saved["opt"])


def test_a_new_episode_clears_the_tape_and_momentum_and_keeps_the_rule():
    """start_episode: the next steps equal those of a fresh optimizer with the same rule."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    rule = random_rule(lr=0.1, momentum=0.5)
    opt = AdaptiveSGDWithTape(model.parameters(), rule=rule)

    def run(opt, steps):
        out = []
        for _ in range(steps):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step(loss=loss)
            out.append([p.detach().clone() for p in model.parameters()])
        return out

    run(opt, 3)
    model.load_state_dict(start)
    opt.start_episode()
    again = run(opt, 3)
    model.load_state_dict(start)
    first = run(AdaptiveSGDWithTape(model.parameters(), rule=rule), 3)
    for want, got in zip(first, again):
        assert all(torch.equal(a, b) for a, b in zip(want, got))


# ----------------------------------------------------------------------- task families


def test_quadratic_tasks_are_seeded_and_have_the_asked_spectrum():
    family = QuadraticTasks(dim=6, condition=100.0, dtype=torch.float64)
    a, b = (family.sample(torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(a.matrix, b.matrix) and torch.equal(a.target, b.target)
    eigenvalues = torch.linalg.eigvalsh(a.matrix)
    assert float(eigenvalues.min()) >= 1 / 100 - 1e-12 and float(eigenvalues.max()) <= 1 + 1e-12
    assert float(a.loss({"x": a.target})) == pytest.approx(0.0, abs=1e-12)


def test_episode_tasks_fit_a_fresh_network_to_sinusoid_and_glyph_episodes():
    sinusoid = EpisodeTasks(Sinusoid(), lambda: mlp(1, 1, hidden=(8,)), ways=1, shots=5)
    first, again = (sinusoid.sample(torch.Generator().manual_seed(0)) for _ in range(2))
    assert all(torch.equal(first.params[n], again.params[n]) for n in first.params)
    assert torch.equal(first.inputs, again.inputs)
    rule = TapeSGDRule(lr=0.05)
    assert float(unrolled_loss(rule, first, 5).detach()) < float(first.loss(first.params))

    glyphs = Glyphs(split="train", num_characters=10, samples_per_class=4, image_size=8)
    make = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).double()  # noqa: E731
    classifier = EpisodeTasks(glyphs, make, ways=3, shots=2, loss="cross_entropy").sample(torch.Generator())
    assert classifier.inputs.dtype == torch.float64 and classifier.targets.dtype == torch.int64
    assert math.isfinite(float(classifier.loss(classifier.params)))


# ----------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": 0.0}, "positive lr, got 0.0"),
        ({"momentum": 1.0}, r"momentum in \[0.0, 0.99\], got 1.0"),
        ({"weight_decay": -1e-3}, r"weight_decay in \[0.0, 0.01\], got -0.001"),
        ({"dim": 2}, "integer dim >= 3, got 2"),
        ({"slots": 0}, "integer slots >= 1, got 0"),
        ({"decay": 1.0}, "decay < 1"),
        ({"decay": math.nan}, "finite number decay, got nan"),
    ],
)
def test_bad_hyperparameters_are_one_line_errors_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        AdaptiveSGDWithTape([torch.zeros(1, requires_grad=True)], **kwargs)
    assert "\n" not in str(err.value)


def test_bad_rules_missing_losses_and_non_finite_values():
    p = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="drives a TapeSGDRule, got SGDRule"):
        AdaptiveSGDWithTape([p], rule=SGDRule.for_params({}, lr=0.1))
    with pytest.raises(ValueError, match=r"got a rule and rule options \['lr'\]"):
        AdaptiveSGDWithTape([p], rule=TapeSGDRule(), lr=0.3)
    opt = AdaptiveSGDWithTape([("p", p)])
    (p**2).sum().backward()
    with pytest.raises(ValueError, match="needs the loss"):
        opt.step()
    with pytest.raises(ValueError, match="the loss is inf at step 0"):
        opt.step(loss=torch.tensor(math.inf))
    p.grad[0] = math.nan
    with pytest.raises(ValueError, match="gradient of 'p' has non-finite values"):
        opt.step(loss=torch.tensor(1.0))


class Blowup:
    """A task whose loss is finite for the unroll but infinite at the end (and its gradient)."""

    def __init__(self, finite_calls):
        self.params, self.calls, self.finite_calls = {"x": torch.ones(2)}, 0, finite_calls

    def loss(self, params):
        self.calls += 1
        scale = 1.0 if self.calls <= self.finite_calls else math.inf
        return scale * (params["x"] ** 2).sum()


class OneTask:
    def __init__(self, task):
        self.task = task

    def sample(self, generator):
        return self.task


def test_meta_training_bad_input():
    rule = TapeSGDRule()
    family = QuadraticTasks(dim=2)
    for kwargs, message in [
        ({"meta_steps": 0}, "integer meta_steps >= 1, got 0"),
        ({"inner_steps": 0}, "integer inner_steps >= 1, got 0"),
        ({"tasks_per_step": True}, "integer tasks_per_step >= 1, got True"),
        ({"meta_lr": -1.0}, "positive meta_lr, got -1.0"),
        ({"clip": 0.0}, "positive clip, got 0.0"),
    ]:
        with pytest.raises(ValueError, match=message):
            meta_train_on_tasks(rule, family, **kwargs)
    with pytest.raises(ValueError, match="SGDRule has no parameters to meta-train"):
        meta_train_on_tasks(SGDRule.for_params({}, lr=0.1), family)
    with pytest.raises(ValueError, match="the task loss is inf at inner step 1"):
        meta_train_on_tasks(rule, OneTask(Blowup(finite_calls=1)), inner_steps=3)
    with pytest.raises(ValueError, match="meta-gradient norm is (nan|inf) at meta-step 0"):
        meta_train_on_tasks(rule, OneTask(Blowup(finite_calls=2)), inner_steps=2, clip=None)
    for kwargs, message in [
        ({"dim": 0}, "integer dim >= 1, got 0"),
        ({"condition": 0.5}, r"condition in \[1.0, inf\], got 0.5"),
    ]:
        with pytest.raises(ValueError, match=message):
            QuadraticTasks(**kwargs)
    with pytest.raises(ValueError, match="unknown EpisodeTasks loss 'l1'"):
        EpisodeTasks(Sinusoid(), lambda: mlp(1, 1), loss="l1")
    with pytest.raises(ValueError, match="ways must be 1, got 2"):
        EpisodeTasks(Sinusoid(), lambda: mlp(1, 1), ways=2)


def test_tape_memory_bad_input():
    with pytest.raises(ValueError, match=r"decay in \[0.0, 1.0\], got 2.0"):
        DifferentiableTape(decay=2.0)
