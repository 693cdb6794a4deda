"""Persistent evolution strategies (``outer_trainer="pes"``): unbiased where truncation is not,
bit-exact resumption, the restart rules, its config and its errors."""

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_metaopt import Episode
from fewshot_metaopt.checks import ConfigError
from fewshot_metaopt.distributed import MetaBatchGroup
from fewshot_metaopt.meta_training import MetaOptimizer, MetaOptimizerConfig, PersistentES
from fewshot_metaopt.meta_training.config import OUTER_TRAINERS
from fewshot_metaopt.meta_training.tbptt import TruncatedBPTT
from fewshot_metaopt.models import mlp
from fewshot_metaopt.optim import SGDRule
from fewshot_metaopt.optim.rules.base import UpdateRule
from fewshot_metaopt.warp import warp_mlp
from learner_fixtures import classification_episodes, tiny_convnet, tiny_mlp


class LogLRDescent(UpdateRule):
    """Gradient descent at ``exp(log_lr)``: one meta-parameter, so the estimator's spread is a number."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.log_lr = nn.Parameter(torch.tensor(math.log(lr), dtype=torch.float64))

    def update(self, params, grads, state, step, loss=None):
        return {name: params[name] - self.log_lr.exp() * grad for name, grad in grads.items()}, state


# A 1-D least-squares problem: w starts at 0, the target slope is 1.5, and descent at lr 0.1
# shrinks the error by 0.875 per step, so later windows' losses depend strongly on how the
# earlier steps moved w: the dependence truncation drops.
X = torch.tensor([[1.0], [0.5]], dtype=torch.float64)
PROBLEM = Episode(X, 1.5 * X, X, 1.5 * X)
INNER_STEPS, WINDOW, PAIRS, SIGMA = 12, 4, 500, 0.01


def line() -> nn.Linear:
    model = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()
    return model


def true_window_gradients(log_lr: float) -> tuple[list[float], list[torch.Tensor]]:
    """d(sum of the losses after each step of window k)/d(log_lr) through the whole unroll,
    the inner gradients kept in the graph (float64 autograd), and each window's start weights."""
    theta = torch.tensor(log_lr, dtype=torch.float64, requires_grad=True)
    w = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
    losses, starts = [], []
    for step in range(INNER_STEPS):
        if step % WINDOW == 0:
            starts.append(w.detach().clone())
        (grad,) = torch.autograd.grad(F.mse_loss(X @ w.T, 1.5 * X), w, create_graph=True)
        w = w - theta.exp() * grad
        losses.append(F.mse_loss(X @ w.T, 1.5 * X))
    windows = [sum(losses[k * WINDOW:(k + 1) * WINDOW]) for k in range(INNER_STEPS // WINDOW)]
    return [float(torch.autograd.grad(loss, theta, retain_graph=True)[0]) for loss in windows], starts


def truncated_bptt_gradient(rule: LogLRDescent, config: MetaOptimizerConfig, start: torch.Tensor, first: int) -> float:
    """The project's truncated BPTT (second order) on one window from the detached true start."""
    model = line()
    trainer = TruncatedBPTT(rule, torch.optim.SGD(rule.parameters(), lr=0.0), config, model)
    rule.zero_grad(set_to_none=True)
    trainer.unroll(model, PROBLEM, {"weight": start}, None, first, WINDOW, 0)[2].backward()
    gradient = float(rule.log_lr.grad)
    rule.zero_grad(set_to_none=True)
    return gradient


def mean_and_standard_error(samples: torch.Tensor) -> tuple[float, float]:
    return float(samples.mean()), float(samples.std() / math.sqrt(samples.numel()))


def test_pes_is_unbiased_across_truncations_where_truncated_es_and_bptt_are_not():
    """Tolerance: each mean of the 500 pairs' estimates lies within 4 of its standard errors
    (the sample std over pairs / sqrt(500)) of the exact gradient, a two-sided miss probability
    of about 6e-5 per check for a normal mean (the seed is fixed, so the test is deterministic).
    The smoothing bias (O(sigma^2) = O(1e-4) relative) is far below one standard error."""
    config = MetaOptimizerConfig(outer_trainer="pes", pes_particles=PAIRS, pes_sigma=SIGMA, inner_steps=INNER_STEPS,
                                 unroll_steps=WINDOW, meta_loss="support", loss="mse", second_order=True)
    rule = LogLRDescent(0.1)
    theta = rule.log_lr.detach().clone()
    truth, starts = true_window_gradients(float(theta))
    pes = PersistentES(rule, torch.optim.SGD(rule.parameters(), lr=0.0), config, line(), seed=0)

    persistent = []
    for window in range(3):
        persistent.append(pes.estimate(line(), [PROBLEM]).per_pair[0])
        if window == 0:
            after_first = pes.state_dict()
    assert torch.equal(rule.log_lr.detach(), theta)  # every perturbation was undone exactly
    for window, (estimates, exact) in enumerate(zip(persistent, truth)):
        mean, error = mean_and_standard_error(estimates)
        assert abs(mean - exact) < 4 * error, (window, mean, exact, error)
    # Summed per pair over the episode: the gradient of the full unroll's loss.
    mean, error = mean_and_standard_error(sum(persistent))
    assert abs(mean - sum(truth)) < 4 * error

    # Truncated ES: the same pairs from the same states, their sums of perturbations cleared
    # before each truncation, so each estimate sees only its own truncation's perturbation.
    state = after_first
    for window in (1, 2):
        for pair in state["pairs"]:
            pair["perturbation_sum"] = [torch.zeros_like(t) for t in pair["perturbation_sum"]]
        pes.load_state_dict(state)
        truncated_mean, truncated_error = mean_and_standard_error(pes.estimate(line(), [PROBLEM]).per_pair[0])
        bptt = truncated_bptt_gradient(rule, config, starts[window], window * WINDOW)
        persistent_error = mean_and_standard_error(persistent[window])[1]
        # Truncation drops most of the gradient here (65% in the second window, 79% in the
        # third), 8.8 and 12.5 of PES's standard errors: more than the 4 the check above allows ...
        assert abs(bptt - truth[window]) > 6 * persistent_error, (window, bptt, truth[window])
        assert abs(truncated_mean - truth[window]) > 6 * truncated_error
        # ... and truncated ES estimates the truncated gradient, as the theory says.
        assert abs(truncated_mean - bptt) < 4 * truncated_error
        state = pes.state_dict()


def pes_optimizer(method: str = "meta_sgd", seed: int = 0, **overrides) -> MetaOptimizer:
    settings = dict(method=method, outer_trainer="pes", pes_particles=3, pes_sigma=0.05, pes_seed=seed,
                    inner_steps=5, unroll_steps=2, inner_lr=0.1, meta_lr=0.01, hidden_size=4, num_layers=1)
    settings.update(overrides)
    return MetaOptimizer(tiny_mlp(), MetaOptimizerConfig(**settings)).double()


def through_a_file(state: dict) -> dict:
    """``state`` saved and read back as a checkpoint is (``weights_only``), sharing no tensor with
    the optimizer it came from."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def episodes_for(call: int) -> list:
    return classification_episodes(2, (3,), seed=call)


@pytest.mark.parametrize("method", ["meta_sgd", "l2o", "lstm"])
def test_a_saved_and_loaded_run_continues_bit_exactly(method):
    """Train 4 calls, save (through weights_only loading), load into a fresh optimizer whose
    own seed differs, train 3 more: the same as 7 calls in one go. Episodes last 3 calls
    (windows of 2, 2, 1 steps), so the save falls mid-episode and a restart follows it."""
    straight = pes_optimizer(method)
    expected = [straight.meta_train_step(episodes_for(call)) for call in range(7)]

    first = pes_optimizer(method)
    for call in range(4):
        first.meta_train_step(episodes_for(call))
    resumed = pes_optimizer(method, seed=123)
    resumed.load_training_state_dict(through_a_file(first.training_state_dict()))
    results = [resumed.meta_train_step(episodes_for(call)) for call in range(4, 7)]

    assert results == expected[4:]
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(straight.outer_trainer.pairs, resumed.outer_trainer.pairs):
        assert a.steps == b.steps and all(torch.equal(x, y) for x, y in zip(a.perturbation_sum, b.perturbation_sum))
        assert all(torch.equal(a.minus.weights[n], b.minus.weights[n]) for n in a.minus.weights)
        assert type(a.plus.rule_state) is type(b.plus.rule_state)


def test_pairs_take_episodes_in_turn_keep_them_and_restart_with_a_cleared_sum():
    mo = pes_optimizer()
    pes = mo.outer_trainer
    first = episodes_for(0)
    mo.meta_train_step(first)
    # Three pairs restarting on two episodes cycle through them.
    assert [pair.episode.support_x.data_ptr() for pair in pes.pairs] == [
        first[k % 2].support_x.data_ptr() for k in range(3)]
    held = [pair.episode for pair in pes.pairs]
    sums = [pair.perturbation_sum for pair in pes.pairs]
    for call in (1, 2):  # mid-episode: the episodes passed are not used
        mo.meta_train_step(episodes_for(call))
        assert all(pair.episode is episode for pair, episode in zip(pes.pairs, held))
    assert [pair.steps for pair in pes.pairs] == [5, 5, 5]
    # xi grew: it is the sum of three truncations' perturbations, not the last one.
    assert all(not torch.equal(pair.perturbation_sum[0], s[0]) for pair, s in zip(pes.pairs, sums))

    generator = torch.Generator()
    generator.set_state(pes.generator.get_state())
    fresh = episodes_for(3)
    result = mo.meta_train_step(fresh)
    assert result.windows == 1 and result.inner_steps == 2
    assert [pair.steps for pair in pes.pairs] == [2, 2, 2]
    assert pes.pairs[0].episode.support_x.data_ptr() == pes.pairs[2].episode.support_x.data_ptr() == \
        fresh[0].support_x.data_ptr()
    # After a restart xi is exactly the one perturbation just drawn (the first pair draws first).
    for xi, p in zip(pes.pairs[0].perturbation_sum, mo.rule.parameters()):
        drawn = torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.05
        assert torch.equal(xi, drawn)


def test_one_pes_step_on_a_tiny_convnet_changes_the_rule_only():
    model = tiny_convnet()
    config = MetaOptimizerConfig(method="l2o", outer_trainer="pes", pes_particles=2, inner_steps=3, unroll_steps=2,
                                 hidden_size=4, num_layers=1, meta_lr=0.01)
    mo = MetaOptimizer(model, config).double()
    rule_before = [p.detach().clone() for p in mo.parameters()]
    weights_before = [p.detach().clone() for p in model.parameters()]
    result = mo.meta_train_step(classification_episodes(2, (1, 4, 4)), model)
    assert math.isfinite(result.meta_loss) and math.isfinite(result.final_loss)
    assert math.isfinite(result.grad_norm) and result.grad_norm > 0
    assert (result.windows, result.inner_steps) == (1, 2)
    assert any(not torch.equal(a, p) for a, p in zip(rule_before, mo.parameters()))
    assert all(torch.equal(w, p) for w, p in zip(weights_before, model.parameters()))


@pytest.mark.parametrize(
    "kwargs, key, message",
    [
        ({"outer_trainer": "es"}, "outer_trainer", r"^unknown outer_trainer 'es'; choose one of tbptt, pes; did you mean 'pes'\?$"),
        ({"outer_trainer": "pes", "pes_particles": 0}, "pes_particles", "^pes_particles must be an integer >= 1, got 0$"),
        ({"pes_particles": 2.5}, "pes_particles", "pes_particles must be an integer >= 1, got 2.5"),
        ({"outer_trainer": "pes", "pes_sigma": -1}, "pes_sigma", r"^pes_sigma must be positive, got -1\.0$"),
        ({"pes_seed": -1}, "pes_seed", "pes_seed must be an integer >= 0, got -1"),
        ({"method": "warp_grad", "outer_trainer": "pes"}, "outer_trainer",
         "outer_trainer 'pes' does not apply to method 'warp_grad'.*use outer_trainer 'tbptt'"),
        ({"outer_trainer": "pes", "precision": "fp16"}, "precision", "precision 'fp16' needs loss scaling"),
    ],
)
def test_config_errors_name_the_key(kwargs, key, message):
    with pytest.raises(ConfigError, match=message) as caught:
        MetaOptimizerConfig(**kwargs)
    assert caught.value.key == key and "\n" not in str(caught.value)


def test_defaults_and_the_trainer_table():
    config = MetaOptimizerConfig()
    assert (config.outer_trainer, config.pes_particles, config.pes_sigma, config.pes_seed) == ("tbptt", 8, 0.01, 0)
    assert OUTER_TRAINERS.names() == ("tbptt", "pes")
    mo = MetaOptimizer(tiny_mlp(), config)
    assert mo.outer_trainer is mo.tbptt
    assert isinstance(pes_optimizer().outer_trainer, PersistentES)


def test_a_failed_truncation_changes_nothing():
    mo = pes_optimizer()
    mo.meta_train_step(episodes_for(0))
    before = mo.training_state_dict()
    rule = [p.detach().clone() for p in mo.parameters()]
    bad = episodes_for(1)
    bad[0].query_x[0, 0] = math.nan
    mo.outer_trainer.pairs[1].episode = bad[0]
    with pytest.raises(FloatingPointError, match=r"^pair 1 \(\+\): the query loss over inner steps 2\.\.3 is nan"):
        mo.meta_train_step(episodes_for(1))
    assert all(torch.equal(a, p) for a, p in zip(rule, mo.parameters()))
    assert torch.equal(mo.outer_trainer.generator.get_state(), before["outer_trainer_state"]["generator"])
    assert [pair.steps for pair in mo.outer_trainer.pairs] == [2, 2, 2]


def test_errors():
    mo = pes_optimizer()
    with pytest.raises(ValueError, match="at least one episode"):
        mo.outer_trainer.estimate(mo.base_model, [])
    mo.meta_train_step(episodes_for(0))
    with pytest.raises(ValueError, match="particles in flight hold weights of another model"):
        mo.meta_train_step(episodes_for(0), mlp(3, 2, hidden=(5,)).double())
    with pytest.raises(ValueError, match="the PES state has 3 particle pairs and this trainer 2; set pes_particles=3"):
        pes_optimizer(pes_particles=2).load_training_state_dict(mo.training_state_dict())
    with pytest.raises(ValueError, match="saved with outer_trainer 'pes', this optimizer uses 'tbptt'"):
        pes_optimizer(outer_trainer="tbptt").load_training_state_dict(mo.training_state_dict())
    with pytest.raises(ValueError, match="runs in one process; distribute with outer_trainer 'tbptt'"):
        mo.distribute(MetaBatchGroup(rank=0, world_size=1)).meta_train_step(episodes_for(0))
    # A perturbation too small to move the rule: L+ = L-, and 0 / sigma^2 underflowed to 0 is NaN.
    with pytest.raises(FloatingPointError, match="the PES meta-gradient norm is nan; nothing was updated"):
        pes_optimizer(pes_sigma=1e-200).meta_train_step(episodes_for(0))
    with pytest.raises(ValueError, match="SGDRule has none; give the rule learnable parameters"):
        model = tiny_mlp()
        fixed = SGDRule.for_params({n: p.shape for n, p in model.named_parameters()}, lr=0.1)
        PersistentES(fixed, torch.optim.SGD([torch.zeros(1)], lr=0.1), MetaOptimizerConfig(), model)
    torch.manual_seed(0)
    warped = MetaOptimizer(warp_mlp(3, 2, hidden=(4,), activation=False).double(),
                           MetaOptimizerConfig(method="warp_grad"))
    with pytest.raises(ValueError, match="method 'warp_grad' keeps a replay buffer"):
        warped.training_state_dict()


def test_truncated_bptt_training_state_round_trips():
    source = pes_optimizer(outer_trainer="tbptt")
    source.meta_train_step(episodes_for(0))
    state = through_a_file(source.training_state_dict())
    assert "outer_trainer_state" not in state
    target = pes_optimizer(outer_trainer="tbptt")
    target.load_training_state_dict(state)
    assert source.meta_train_step(episodes_for(1)) == target.meta_train_step(episodes_for(1))


def test_another_architecture_is_taken_once_every_pair_has_finished_its_episode():
    """A mixture switches architectures between episodes: pairs whose episode is done restart
    on the model passed, and only runs still in flight must match it."""
    mo = pes_optimizer("l2o")
    for call in range(3):  # windows of 2, 2 and 1 steps: every pair's episode is done
        mo.meta_train_step(episodes_for(call))
    assert all(pair.steps == 5 for pair in mo.outer_trainer.pairs)
    wider = mlp(3, 2, hidden=(5,)).double()
    mo.meta_train_step(episodes_for(3), wider)
    assert all(tuple(pair.plus.weights["0.weight"].shape) == (5, 3) for pair in mo.outer_trainer.pairs)
