"""Warp-Grad: warped models, the replay buffer, the one-step objective (float64 finite
differences), the Leap gradient, the MetaOptimizer method and the Warp-MAML / Warp-Leap learners."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fewshot_metaopt import GradientMetaLearner, GradientMetaLearnerConfig, MetaOptimizer, MetaOptimizerConfig
from fewshot_metaopt.models import mlp
from fewshot_metaopt.optim import SGDRule
from fewshot_metaopt.warp import (
    ReplayBuffer,
    TrajectoryPoint,
    WarpedModel,
    WarpGradRule,
    WarpGradTrainer,
    leap_init_gradient,
    warp_conv,
    warp_conv4,
    warp_effective_lr,
    warp_linear,
    warp_meta_loss,
    warp_mlp,
)
from fewshot_metaopt.warp import objective as objective_module
from learner_fixtures import classification_episodes
from test_meta_gradients import central_differences


def warped_classifier(init: str = "default", seed: int = 0) -> WarpedModel:
    torch.manual_seed(seed)
    return warp_mlp(3, 2, hidden=(4,), activation=False, init=init).double()


def sgd_for(model: WarpedModel, lr: float = 0.3) -> SGDRule:
    shapes = {n: p.shape for n, p in model.named_parameters() if n in model.adapted_parameter_names()}
    return SGDRule.for_params(shapes, lr=lr, dtype=torch.float64)


# ----------------------------------------------------------------------- warped models


def test_warp_mlp_and_conv4_split_parameters_into_adapted_and_warp():
    model = warp_conv4(5, hidden=8)
    adapted, warps = model.adapted_parameter_names(), model.warp_parameter_names()
    assert not set(adapted) & set(warps)
    assert set(adapted) | set(warps) == {n for n, _ in model.named_parameters()}
    assert len(model.warp_layers()) == 4 and all(w.transform.kernel_size == (3, 3) for w in model.warp_layers())
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 5)
    assert {id(p) for p in model.warp_parameters()} == {id(p) for n, p in model.named_parameters() if n in warps}


def test_identity_warps_compute_the_unwarped_function():
    torch.manual_seed(0)
    x = torch.randn(6, 3, dtype=torch.float64)
    for residual in (False, True):
        model = warp_mlp(3, 2, hidden=(5, 4), residual=residual).double()
        with model.warps_bypassed():
            plain = model(x)
        torch.testing.assert_close(model(x), plain, rtol=0, atol=0)
    conv = warp_conv(3)
    image = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(conv(image), image)


def test_identity_warps_without_meta_training_give_plain_sgd_on_the_unwarped_model():
    """The inner loop of an untrained warped model (identity warps) is SGD on the model
    without warps, step for step, to float64 round-off."""
    torch.manual_seed(0)
    warped = warp_mlp(3, 2, hidden=(5, 4)).double()
    plain = mlp(3, 2, hidden=(5, 4)).double()
    adapted = warped.adapted_parameter_names()
    plain.load_state_dict(dict(zip([n for n, _ in plain.named_parameters()],
                                   [p.detach() for n, p in warped.named_parameters() if n in adapted])))
    episode = classification_episodes(1, (3,))[0]
    trainer = WarpGradTrainer(warped, sgd_for(warped, 0.5), buffer_size=10, points=2)
    run = trainer.run_task(episode, steps=4)
    params = {n: p.detach().requires_grad_() for n, p in plain.named_parameters()}
    for k in range(4):
        loss = F.cross_entropy(functional_call(plain, params, (episode.support_x,)), episode.support_y)
        grads = torch.autograd.grad(loss, list(params.values()))
        params = {n: (p - 0.5 * g).detach().requires_grad_() for (n, p), g in zip(params.items(), grads)}
        for (name, ours), theirs in zip(run.trajectory[k + 1].items(), params.values()):
            torch.testing.assert_close(ours, theirs.detach(), rtol=1e-12, atol=1e-14)


def test_bad_warped_models_are_refused_with_clear_errors():
    with pytest.raises(ValueError, match="warp layer 1 maps 5 features but the layers before it produce 4"):
        WarpedModel.interleave([nn.Linear(3, 4), nn.Linear(4, 2)], [warp_linear(5), None])
    with pytest.raises(ValueError, match="no task-adapted layer with parameters"):
        WarpedModel([nn.ReLU(), warp_linear(3)], [False, True])
    with pytest.raises(ValueError, match="no warp layer"):
        WarpedModel([nn.Linear(3, 3)], [False])
    with pytest.raises(ValueError, match="got 2 layers but 1 warp flags"):
        WarpedModel([nn.Linear(3, 3), warp_linear(3)], [False])
    with pytest.raises(ValueError, match="one warp entry"):
        WarpedModel.interleave([nn.Linear(3, 3)], [])
    with pytest.raises(ValueError, match="unknown warp init 'zeros'"):
        warp_linear(3, init="zeros")
    with pytest.raises(ValueError, match="odd kernel_size"):
        warp_conv(4, kernel_size=2)
    with pytest.raises(ValueError, match="features >= 1"):
        warp_linear(0)
    with pytest.raises(ValueError, match="image_size >= 16"):
        warp_conv4(5, image_size=8)
    # sizes a layer does not declare are checked at the first forward pass, naming the layer
    odd = WarpedModel([nn.Sequential(nn.Linear(3, 4), nn.Flatten(0)), warp_linear(4)], [False, True])
    with pytest.raises(ValueError, match=r"warp layer 1 does not fit the input of shape \(8,\)"):
        odd(torch.randn(2, 3))


def test_warp_layer_options_build_the_documented_stack():
    layer = warp_conv(4, batch_norm=True, activation=True, residual=True)
    assert isinstance(layer.norm, nn.BatchNorm2d) and isinstance(layer.activation, nn.ReLU)
    assert float(layer.transform.weight.detach().abs().sum()) == 0  # residual identity: zero transform
    x = torch.randn(2, 4, 3, 3)
    assert layer(x).shape == x.shape
    default = warp_linear(3, batch_norm=True, init="default")
    assert not torch.equal(default.transform.weight, torch.eye(3)) and default.features == 3
    assert default(torch.randn(5, 3)).shape == (5, 3)


# ----------------------------------------------------------------------- replay buffer


def test_replay_buffer_is_bounded_and_samples_distinct_points():
    buffer = ReplayBuffer(size=5, seed=0)
    with pytest.raises(ValueError, match="the replay buffer is empty"):
        buffer.sample(3)
    episode = classification_episodes(1, (3,))[0]
    for k in range(12):
        buffer.add(TrajectoryPoint({"w": torch.full((10,), float(k))}, None, k, episode))
    assert len(buffer) == 5
    assert buffer.nbytes() == 5 * 10 * 4
    steps = [p.step for p in buffer.sample(3)]
    assert len(set(steps)) == 3 and all(s >= 7 for s in steps)
    assert sorted(p.step for p in buffer.sample(100)) == [7, 8, 9, 10, 11]
    buffer.clear()
    assert len(buffer) == 0
    with pytest.raises(ValueError, match="size >= 1"):
        ReplayBuffer(0)


# ----------------------------------------------------------------------- the objective


def test_warp_objective_meta_gradient_matches_finite_differences_in_float64():
    model = warped_classifier()
    rule = sgd_for(model)
    episodes = classification_episodes(2, (3,))
    trainer = WarpGradTrainer(model, rule, buffer_size=100, points=100)
    for task, ep in enumerate(episodes):
        trainer.run_task(ep, steps=2, task=task)
    points = trainer.buffer.sample(100)
    warps = list(model.warp_parameters())

    def value() -> float:
        with torch.enable_grad():
            return float(warp_meta_loss(model, rule, points).detach())

    exact = torch.autograd.grad(warp_meta_loss(model, rule, points), warps)
    checked = 0
    for ti, i, numeric in central_differences(warps, value):
        assert float(exact[ti].view(-1)[i]) == pytest.approx(numeric, rel=1e-6, abs=1e-9)
        checked += 1
    assert checked >= 8 and max(float(g.abs().max()) for g in exact) > 1e-4


def test_warp_objective_reaches_warps_through_the_preconditioned_step():
    """With the inner step removed (lr -> 0) the objective still depends on the warps through
    the forward pass; with a step, it also depends through the gradient the warps shape."""
    model = warped_classifier()
    episode = classification_episodes(1, (3,))[0]
    point = TrajectoryPoint({n: p.detach() for n, p in model.named_parameters()
                             if n in model.adapted_parameter_names()}, None, 0, episode)
    warps = list(model.warp_parameters())
    no_step = torch.autograd.grad(warp_meta_loss(model, sgd_for(model, 1e-300), [point]), warps)
    step = torch.autograd.grad(warp_meta_loss(model, sgd_for(model, 0.5), [point]), warps)
    assert any(not torch.allclose(a, b) for a, b in zip(no_step, step))
    with pytest.raises(ValueError, match="at least one trajectory point"):
        warp_meta_loss(model, sgd_for(model), [])


def test_leap_gradient_sums_normalised_segments_over_tasks():
    a = [{"w": torch.tensor([0.0, 0.0])}, {"w": torch.tensor([3.0, 4.0])}, {"w": torch.tensor([3.0, 4.0])}]
    b = [{"w": torch.tensor([1.0, 1.0])}, {"w": torch.tensor([1.0, 3.0])}]
    grad = leap_init_gradient([a, b])
    # a: (0 - (3, 4)) / 5, the zero-length segment adds nothing; b: (0, -2) / 2; mean over 2 tasks
    torch.testing.assert_close(grad["w"], torch.tensor([-0.3, -0.9]))
    with pytest.raises(ValueError, match="at least one trajectory"):
        leap_init_gradient([])


def test_meta_cost_does_not_grow_with_inner_steps(monkeypatch):
    """A warp update takes `points` second-order steps whether the tasks ran 5 or 50 steps;
    only the (first-order) inner steps themselves scale."""
    calls = []
    original = objective_module.warp_step_loss
    monkeypatch.setattr(objective_module, "warp_step_loss", lambda *a, **k: calls.append(1) or original(*a, **k))
    episodes = classification_episodes(2, (3,))
    counts = {}
    for steps in (5, 50):
        model = warped_classifier()
        mo = MetaOptimizer(model, MetaOptimizerConfig(method="warp_grad", inner_steps=steps, warp_points=4,
                                                      inner_lr=0.1))
        calls.clear()
        mo.meta_train_step(episodes)
        counts[steps] = (len(calls), len(mo.warp.buffer))
    assert counts[5] == (4, 10) and counts[50] == (4, 100)


# ----------------------------------------------------------------------- MetaOptimizer(method="warp_grad")


def test_meta_optimizer_warp_grad_trains_warps_only_and_reports_effective_lrs():
    model = warped_classifier(init="identity")
    config = MetaOptimizerConfig(method="warp_grad", inner_steps=3, inner_lr=0.2, meta_lr=1e-2, warp_points=6)
    mo = MetaOptimizer(model, config)
    assert isinstance(mo.rule, WarpGradRule)
    assert {id(p) for p in mo.parameters()} == {id(p) for p in model.warp_parameters()}
    assert mo.get_learned_lr() == {n: 0.2 for n in model.adapted_parameter_names()}
    episodes = classification_episodes(2, (3,))
    adapted_before = {n: p.detach().clone() for n, p in model.named_parameters() if n in model.adapted_parameter_names()}
    warps_before = [p.detach().clone() for p in model.warp_parameters()]
    # identity warps: the measured effective lr is the inner lr itself
    for value in warp_effective_lr(model, episodes[0], 0.2).values():
        assert value == pytest.approx(0.2, rel=1e-12)
    result = mo.meta_train_step(episodes)
    assert result.windows == 1 and result.inner_steps == 3 and math.isfinite(result.meta_loss)
    assert any(not torch.equal(a, b) for a, b in zip(warps_before, model.warp_parameters()))
    for n, p in model.named_parameters():
        if n in adapted_before:
            assert torch.equal(p, adapted_before[n])  # warp_init="none": the initialisation stays
    assert any(v != pytest.approx(0.2) for v in mo.get_learned_lr().values())
    # compute_update moves adapted tensors only
    grads = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    updates, _ = mo.compute_update(grads)
    for n in model.warp_parameter_names():
        assert float(updates[n].abs().sum()) == 0
    for n in model.adapted_parameter_names():
        torch.testing.assert_close(updates[n], torch.full_like(updates[n], -0.2))


def test_warp_leap_also_moves_the_initialisation_and_refuses_a_foreign_model():
    model = warped_classifier()
    mo = MetaOptimizer(model, MetaOptimizerConfig(method="warp_grad", inner_steps=2, inner_lr=0.2, warp_init="leap"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mo.meta_train_step(classification_episodes(2, (3,)), model)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {n for n, _ in model.named_parameters()}
    with pytest.raises(ValueError, match="trains the warp layers of the base model it was built with"):
        mo.meta_train_step(classification_episodes(1, (3,)), warped_classifier())
    with pytest.raises(ValueError, match="method 'warp_grad' needs a WarpedModel .* got Sequential"):
        MetaOptimizer(mlp(3, 2), MetaOptimizerConfig(method="warp_grad"))
    with pytest.raises(ValueError, match="unknown warp_init 'maml'"):
        MetaOptimizerConfig(method="warp_grad", warp_init="maml")
    with pytest.raises(ValueError, match="warp_points must be >= 1"):
        MetaOptimizerConfig(method="warp_grad", warp_points=0)


# ----------------------------------------------------------------------- learners


def test_warp_maml_gives_the_init_mamls_gradient_and_the_warps_the_warp_objectives():
    episodes = classification_episodes(2, (3,))
    model = warped_classifier()
    config = GradientMetaLearnerConfig(algorithm="warp_maml", inner_lr=0.3, inner_steps=2, warp_points=1000)
    learner = GradientMetaLearner(model, config)
    learner.meta_optimizer.zero_grad(set_to_none=True)
    result = learner.accumulate_meta_gradient(episodes)
    assert result.warp_loss is not None and result.tasks == 2

    # MAML on the same warped model, adapting the same layers: identical init gradient
    twin = copy.deepcopy(model)
    maml = GradientMetaLearner(twin, GradientMetaLearnerConfig(algorithm="maml", inner_lr=0.3, inner_steps=2),
                               adapted_parameters=twin.adapted_parameter_names())
    maml.accumulate_meta_gradient(episodes)
    twins = dict(twin.named_parameters())
    for n, p in model.named_parameters():
        if n in model.adapted_parameter_names():
            torch.testing.assert_close(p.grad, twins[n].grad, rtol=1e-12, atol=1e-15)

    # the warps' gradient is the warp objective over every recorded point (2 tasks x 2 steps)
    reference = WarpGradTrainer(copy.deepcopy(model), sgd_for(model, 0.3), buffer_size=100, points=100)
    for task, ep in enumerate(episodes):
        reference.run_task(ep, steps=2, task=task)
    ref_warps = list(reference.model.warp_parameters())
    expected = torch.autograd.grad(warp_meta_loss(reference.model, reference.rule, reference.buffer.sample(100)),
                                   ref_warps)
    for p, e in zip(model.warp_parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-10, atol=1e-13)


def test_warp_leap_learner_uses_the_leap_gradient_and_learns_on_real_steps():
    episodes = classification_episodes(1, (3,))
    model = warped_classifier()
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(algorithm="warp_leap", inner_lr=0.3, inner_steps=1))
    learner.meta_optimizer.zero_grad(set_to_none=True)
    learner.accumulate_meta_gradient(episodes)
    # one step of SGD: theta_0 - theta_1 = lr * g, normalised over all adapted tensors -> g / ||g||
    names = model.adapted_parameter_names()
    params = dict(model.named_parameters())
    loss = F.cross_entropy(model(episodes[0].support_x), episodes[0].support_y)
    grads = torch.autograd.grad(loss, [params[n] for n in names])
    norm = math.sqrt(sum(float(g.square().sum()) for g in grads))
    for n, g in zip(names, grads):
        torch.testing.assert_close(params[n].grad, g / norm, rtol=1e-10, atol=1e-13)
    first = learner.meta_train_step(classification_episodes(4, (3,), seed=1))
    for _ in range(15):
        last = learner.meta_train_step(classification_episodes(4, (3,), seed=1))
    assert last.loss < first.loss and math.isfinite(last.warp_loss)
    assert 0.0 <= learner.evaluate(classification_episodes(3, (3,), seed=2)).mean <= 1.0


def test_warped_learners_refuse_bad_settings():
    with pytest.raises(ValueError, match="algorithm 'warp_maml' needs a WarpedModel"):
        GradientMetaLearner(mlp(3, 2), GradientMetaLearnerConfig(algorithm="warp_maml"))
    model = warped_classifier()
    with pytest.raises(ValueError, match="warp parameters cannot be adapted"):
        GradientMetaLearner(model, GradientMetaLearnerConfig(algorithm="warp_maml"),
                            adapted_parameters=[n for n, _ in model.named_parameters()])
    with pytest.raises(ValueError, match="warp_leap does not differentiate the inner loop"):
        GradientMetaLearnerConfig(algorithm="warp_leap", lr_granularity="per_parameter")
    with pytest.raises(ValueError, match="warp_buffer_size must be >= 1"):
        GradientMetaLearnerConfig(algorithm="warp_maml", warp_buffer_size=0)
    with pytest.raises(ValueError, match="WarpGradRule needs a WarpedModel"):
        WarpGradRule(mlp(3, 2), SGDRule.for_params({}, lr=0.1))
    with pytest.raises(ValueError, match="points per warp update must be >= 1"):
        WarpGradTrainer(model, sgd_for(model), points=0)
    with pytest.raises(ValueError, match="unknown eval_batch 'train'"):
        WarpGradTrainer(model, sgd_for(model), eval_batch="train")
    trainer = WarpGradTrainer(model, sgd_for(model))
    with pytest.raises(ValueError, match="no parameters to train"):
        trainer.accumulate_warp_gradient([])
    with pytest.raises(ValueError, match="the replay buffer is empty"):
        trainer.accumulate_warp_gradient(list(model.warp_parameters()))
    exploding = WarpGradTrainer(model, sgd_for(model, 1e300))
    with pytest.raises(FloatingPointError, match="lower the inner lr"):
        exploding.run_task(classification_episodes(1, (3,))[0], steps=3)


@pytest.mark.parametrize("algorithm", ["warp_maml", "warp_leap"])
def test_warped_learner_resumes_bit_identically_from_a_weights_only_checkpoint(tmp_path, algorithm):
    config = GradientMetaLearnerConfig(algorithm=algorithm, inner_lr=0.3, inner_steps=2, warp_points=3,
                                       warp_buffer_size=6)
    batches = [classification_episodes(2, (3,), seed=s) for s in range(4)]
    straight = GradientMetaLearner(warped_classifier(), config)
    for batch in batches:
        straight.meta_train_step(batch)

    first = GradientMetaLearner(warped_classifier(), config)
    for batch in batches[:2]:
        first.meta_train_step(batch)
    torch.save(first.state_dict(), tmp_path / "ckpt.pt")
    resumed = GradientMetaLearner(warped_classifier(seed=5), config)
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    assert len(resumed.warp.buffer) == 6
    for batch in batches[2:]:
        resumed.meta_train_step(batch)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)

    plain = GradientMetaLearner(mlp(3, 2).double(), GradientMetaLearnerConfig())
    with pytest.raises(ValueError, match="has no Warp-Grad replay buffer"):
        resumed.load_state_dict(plain.state_dict() | {"model": resumed.model.state_dict(),
                                                      "rule": resumed.rule.state_dict(),
                                                      "meta_optimizer": resumed.meta_optimizer.state_dict()})


def test_replay_buffer_state_round_trip_and_refusals():
    episode = classification_episodes(1, (3,))[0]
    buffer = ReplayBuffer(size=3, seed=1)
    for k in range(4):
        buffer.add(TrajectoryPoint({"w": torch.full((2,), float(k))}, {"m": [torch.ones(1)]}, k, episode))
    copy_ = ReplayBuffer(size=3)
    copy_.load_state_dict(buffer.state_dict())
    assert [p.step for p in copy_.sample(3)] == [p.step for p in buffer.sample(3)]
    with pytest.raises(ValueError, match="holds size 3, this buffer has size 4"):
        ReplayBuffer(size=4).load_state_dict(buffer.state_dict())
    from fewshot_metaopt.optim.rules.adam import AdamSlot

    odd = ReplayBuffer(size=1)
    odd.add(TrajectoryPoint({"w": torch.zeros(1)}, AdamSlot(0, torch.zeros(1), torch.zeros(1)), 0, episode))
    with pytest.raises(ValueError, match="cannot save a rule state of type AdamSlot"):
        odd.state_dict()


def test_warp_maml_with_a_learned_inner_rule_records_its_state_from_the_first_step():
    model = warped_classifier()
    shapes = {n: p.shape for n, p in model.named_parameters() if n in model.adapted_parameter_names()}
    from fewshot_metaopt.optim import AdamRule

    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(algorithm="warp_maml", inner_steps=2, warp_points=4),
                                  inner_optimizer=AdamRule(lr=0.05))
    result = learner.meta_train_step(classification_episodes(2, (3,)))
    assert math.isfinite(result.warp_loss) and len(learner.warp.buffer) == 4
    first = next(p for p in learner.warp.buffer.sample(4) if p.step == 0)
    assert set(first.rule_state) == set(shapes) and float(first.rule_state[next(iter(shapes))].m.abs().sum()) == 0


@pytest.mark.parametrize("algorithm", ["warp_maml", "warp_leap"])
def test_a_stored_point_keeps_its_weights_when_the_model_moves_on(algorithm):
    torch.manual_seed(0)
    model = warp_mlp(3, 2, hidden=(4,)).double()
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(algorithm=algorithm, inner_lr=0.3, warp_points=2))
    episodes = classification_episodes(2, (3,))
    learner.meta_train_step(episodes)
    first = [{n: t.clone() for n, t in p.params.items()} for p in learner.warp.buffer._points]
    learner.meta_train_step(episodes)  # the outer step updates the model's weights in place
    for point, saved in zip(learner.warp.buffer._points, first):
        assert all(torch.equal(point.params[n], saved[n]) for n in saved)
