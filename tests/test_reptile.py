"""Reptile: the outer update against a hand-computed two-step case in float64, mini-batches of
the support set, the serial and vmapped variants and both engines against each other, skipped
tasks, the config's refusals, task files and a bit-exact resume."""

import math

import pytest
import torch
from torch import nn

from fewshot_metaopt import Episode, GradientMetaLearner, GradientMetaLearnerConfig
from fewshot_metaopt.learners import NonFiniteLossError
from fewshot_metaopt.learners.reptile import support_batches
from fewshot_metaopt.optim import SGDRule
from fewshot_metaopt.runs.errors import RunError
from fewshot_metaopt.runs.task_config import load_task
from learner_fixtures import classification_episodes, tiny_convnet
from test_cli import TINY_TASK, write_task
from test_cli_resume import assert_same_run, train_whole_and_interrupted_then_resumed

ALPHA, EPSILON = 0.1, 0.5
# Two regression tasks for y = w x + b: (support x, support y) each.
TASKS = [([1.0, 2.0, -1.0], [2.0, 3.0, 0.5]), ([0.5, -2.0, 3.0], [-1.0, 1.5, 2.0])]


def line() -> nn.Linear:
    model = nn.Linear(1, 1).double()
    with torch.no_grad():
        model.weight.fill_(0.3)
        model.bias.fill_(-0.2)
    return model


def regression_episodes() -> list[Episode]:
    def column(values):
        return torch.tensor(values, dtype=torch.float64)[:, None]

    return [Episode(support_x=column(x), support_y=column(y), query_x=column(x), query_y=column(y))
            for x, y in TASKS]


def sgd_on_mse_by_hand(w: float, b: float, xs, ys, steps: int, batches=None) -> tuple[float, float]:
    """Plain SGD on the mean squared error of w x + b, written out: d/dw = 2/n sum r x,
    d/db = 2/n sum r with r = w x + b - y."""
    for step in range(steps):
        rows = range(len(xs)) if batches is None else [int(i) for i in batches[step]]
        residuals = [(w * xs[i] + b - ys[i], xs[i]) for i in rows]
        n = len(residuals)
        grad_w = 2 / n * sum(r * x for r, x in residuals)
        grad_b = 2 / n * sum(r for r, _ in residuals)
        w, b = w - ALPHA * grad_w, b - ALPHA * grad_b
    return w, b


def reptile_by_hand(batches_per_task=None) -> tuple[float, float]:
    """theta + epsilon * (mean_i phi_i - theta) after two inner steps on each task."""
    w, b = 0.3, -0.2
    adapted = [sgd_on_mse_by_hand(w, b, xs, ys, 2, None if batches_per_task is None else batches_per_task[i])
               for i, (xs, ys) in enumerate(TASKS)]
    mean_w = sum(a for a, _ in adapted) / len(adapted)
    mean_b = sum(c for _, c in adapted) / len(adapted)
    return w + EPSILON * (mean_w - w), b + EPSILON * (mean_b - b)


def reptile(model: nn.Module, **settings) -> GradientMetaLearner:
    settings = {"algorithm": "reptile", "inner_lr": ALPHA, "inner_steps": 2, "meta_optimizer": "sgd",
                "meta_lr": EPSILON, **settings}
    return GradientMetaLearner(model, GradientMetaLearnerConfig(**settings))


def weights(model: nn.Linear) -> tuple[float, float]:
    return float(model.weight.detach()), float(model.bias.detach())


@pytest.mark.parametrize("settings", [{}, {"engine": "higher"}, {"vmap_tasks": True}])
def test_the_outer_step_is_theta_plus_epsilon_times_the_mean_adapted_minus_theta(settings):
    model = line()
    reptile(model, **settings).meta_train_step(regression_episodes())
    assert weights(model) == pytest.approx(reptile_by_hand(), rel=1e-13, abs=1e-15)


@pytest.mark.parametrize("vmap", [False, True])
def test_mini_batches_of_the_support_set_are_the_ones_drawn(vmap):
    torch.manual_seed(11)
    drawn = [support_batches(3, 2, 2) for _ in TASKS]
    model = line()
    torch.manual_seed(11)
    reptile(model, reptile_batch_size=2, vmap_tasks=vmap).meta_train_step(regression_episodes())
    assert weights(model) == pytest.approx(reptile_by_hand(drawn), rel=1e-13, abs=1e-15)
    assert weights(model) != pytest.approx(reptile_by_hand(), rel=1e-6)


def test_the_pseudo_gradient_is_theta_minus_the_mean_adapted_weights_for_any_outer_optimizer():
    model = line()
    learner = reptile(model, meta_optimizer="adam", meta_lr=1e-3)
    result = learner.accumulate_meta_gradient(regression_episodes())
    w, b = reptile_by_hand()  # theta + eps (mean phi - theta): the pseudo-gradient is (theta - that) / eps
    assert float(model.weight.grad) == pytest.approx((0.3 - w) / EPSILON, rel=1e-12)
    assert float(model.bias.grad) == pytest.approx((-0.2 - b) / EPSILON, rel=1e-12)
    # The query loss at the adapted weights is reported, as MAML's is.
    by_hand = []
    for xs, ys in TASKS:
        w_i, b_i = sgd_on_mse_by_hand(0.3, -0.2, xs, ys, 2)
        by_hand.append(sum((w_i * x + b_i - y) ** 2 for x, y in zip(xs, ys)) / len(xs))
    assert result.loss == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-12)
    assert result.accuracy is None and result.tasks == 2


def test_support_batches_cycle_through_every_example_before_reusing_one():
    torch.manual_seed(0)
    batches = support_batches(5, 2, 6)
    assert [len(b) for b in batches] == [2] * 6
    flat = torch.cat(batches).tolist()
    assert sorted(flat[:5]) == [0, 1, 2, 3, 4] and sorted(flat[5:10]) == [0, 1, 2, 3, 4]
    assert support_batches(5, None, 3) is None and support_batches(5, 5, 3) is None and support_batches(5, 9, 1) is None


def conv_learner(**settings) -> GradientMetaLearner:
    return GradientMetaLearner(tiny_convnet(), GradientMetaLearnerConfig(
        algorithm="reptile", inner_lr=0.3, inner_steps=3, meta_optimizer="sgd", meta_lr=1.0, **settings))


def pseudo_gradient(learner: GradientMetaLearner, episodes, seed: int = 3) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    learner.meta_optimizer.zero_grad(set_to_none=True)
    learner.accumulate_meta_gradient(episodes)
    return [p.grad.clone() for p in learner.model.parameters()]


@pytest.mark.parametrize("batch_size", [None, 3])
def test_the_vmapped_variant_and_the_higher_engine_give_the_serial_pseudo_gradient(batch_size):
    episodes = classification_episodes(5, (1, 4, 4), shots=2)
    serial = pseudo_gradient(conv_learner(reptile_batch_size=batch_size), episodes)
    for settings in ({"vmap_tasks": True, "vmap_chunk_size": 2}, {"engine": "higher"}):
        other = pseudo_gradient(conv_learner(reptile_batch_size=batch_size, **settings), episodes)
        for a, b in zip(serial, other):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-13), settings
    assert all(g.abs().sum() > 0 for g in serial)


@pytest.mark.parametrize("vmap", [False, True])
def test_a_task_with_a_non_finite_loss_is_skipped_or_named(vmap):
    episodes = classification_episodes(3, (1, 4, 4), shots=2)
    bad = episodes[1]
    episodes[1] = Episode(bad.support_x.clone().fill_(math.nan), bad.support_y, bad.query_x, bad.query_y)
    with pytest.raises(NonFiniteLossError, match="task 1"):
        conv_learner(vmap_tasks=vmap).accumulate_meta_gradient(episodes)
    learner = conv_learner(vmap_tasks=vmap, skip_nonfinite_tasks=True)
    kept = pseudo_gradient(conv_learner(), [episodes[0], episodes[2]])
    skipping = pseudo_gradient(learner, episodes)
    for a, b in zip(kept, skipping):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)
    assert learner.accumulate_meta_gradient(episodes).skipped_tasks == 1


@pytest.mark.parametrize("settings, message", [
    ({"lr_granularity": "per_layer"}, "algorithm 'reptile' learns no inner learning rate"),
    ({"multi_step_loss": True}, "takes no query loss during adaptation"),
    ({"first_order": False}, "algorithm 'reptile' is first-order"),
    ({"reptile_batch_size": 0}, "reptile_batch_size must be an integer >= 1, got 0"),
    ({"reptile_batch_size": 2.5}, "reptile_batch_size must be an integer >= 1, got 2.5"),
    ({"first_order_until": 3}, "algorithm 'reptile' never differentiates them"),
])
def test_the_config_refuses_what_reptile_cannot_do(settings, message):
    with pytest.raises(ValueError, match=message):
        GradientMetaLearnerConfig(algorithm="reptile", **settings)


def test_a_rule_with_parameters_of_its_own_is_refused_at_the_first_step():
    model = line()
    rule = SGDRule.for_params({n: p.shape for n, p in model.named_parameters()}, lr=0.1, granularity="per_layer",
                              dtype=torch.float64)
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(algorithm="reptile"), inner_optimizer=rule)
    with pytest.raises(ValueError, match="reptile moves the initialisation only"):
        learner.meta_train_step(regression_episodes())


REPTILE_TASK = TINY_TASK.replace('algorithm = "meta_sgd"', 'algorithm = "reptile"\nreptile_batch_size = 2\n'
                                 'meta_optimizer = "sgd"').replace("meta_lr = 0.01", "meta_lr = 0.5").replace(
    "shots = 1", "shots = 2")


def test_task_files_select_reptile_and_its_key(tmp_path):
    task = load_task(write_task(tmp_path, REPTILE_TASK))
    assert (task.learner.algorithm, task.learner.reptile_batch_size, task.learner.meta_optimizer) == ("reptile", 2, "sgd")
    with pytest.raises(RunError, match=r"learner.reptile_batch_size in .* does not apply to learner.algorithm "
                                       r"'maml' \(only to 'reptile'\)"):
        load_task(write_task(tmp_path, REPTILE_TASK.replace('"reptile"', '"maml"')))
    with pytest.raises(RunError, match="reptile_batch_size must be an integer >= 1, got 0"):
        load_task(write_task(tmp_path, REPTILE_TASK), ["learner.reptile_batch_size=0"])
    with pytest.raises(RunError, match="'reptile' meta-learns the initialisation only, so inner_optimizer.method "
                                       "must be 'sgd', got 'lstm'"):
        load_task(write_task(tmp_path, REPTILE_TASK + '\n[inner_optimizer]\nmethod = "lstm"\n'))


def test_an_interrupted_reptile_run_resumes_bit_identically(tmp_path, capsys, monkeypatch):
    task = write_task(tmp_path, REPTILE_TASK.replace("iterations = 6", "iterations = 8"))
    train_whole_and_interrupted_then_resumed(task, tmp_path, monkeypatch)
    assert_same_run(tmp_path / "whole", tmp_path / "cut")
