"""A learner and a learned optimizer move like modules: ``.to(device, dtype)`` takes their
parameters and everything kept for them (optimizer moments, recurrent state, replay buffers,
PES pairs), and ``parameters()``/``named_parameters()`` give their meta-parameters."""

import pytest
import torch
from torch import nn

from fewshot_metaopt import (Episode, GradientMetaLearner, GradientMetaLearnerConfig, MetaOptimizer,
                             MetaOptimizerConfig)
from fewshot_metaopt.optim.moved_state import follow_parameters, mapped_tree, placed_like
from fewshot_metaopt.warp import warp_mlp

from learner_fixtures import classification_episodes


def cast(episodes: list[Episode], dtype: torch.dtype) -> list[Episode]:
    return [mapped_tree(lambda t: t.to(dtype) if t.is_floating_point() else t, e) for e in episodes]


def learner(algorithm: str = "meta_sgd", **options) -> GradientMetaLearner:
    torch.manual_seed(0)
    model = warp_mlp(3, 2, hidden=(4,)) if algorithm.startswith("warp") else nn.Sequential(
        nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    config = GradientMetaLearnerConfig(algorithm=algorithm, inner_lr=0.3, meta_lr=0.01, **options)
    return GradientMetaLearner(model, config)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for k, v in state.items() if k != "step"]


def test_a_learners_parameters_are_its_meta_parameters():
    maml_sgd = learner("meta_sgd")
    names = [name for name, _ in maml_sgd.named_parameters()]
    assert names[:4] == ["model.0.weight", "model.0.bias", "model.2.weight", "model.2.bias"]
    assert names[4:] and all(name.startswith("rule.") for name in names[4:])  # Meta-SGD's learned lrs
    assert [id(p) for p in maml_sgd.parameters()] == [id(p) for p in maml_sgd.meta_parameters]
    maml = learner("maml")
    assert [name for name, _ in maml.named_parameters()] == names[:4]  # MAML's lr is a constant


@pytest.mark.parametrize("algorithm", ["meta_sgd", "warp_maml"])
def test_a_round_trip_through_float64_leaves_a_learner_as_it_was(algorithm):
    options = {"warp_points": 2, "warp_buffer_size": 4} if algorithm == "warp_maml" else {}
    episodes = classification_episodes(2, (3,))
    moved, stayed = learner(algorithm, **options), learner(algorithm, **options)
    for each in (moved, stayed):
        each.meta_train_step(cast(episodes, torch.float32))

    assert moved.to("cpu", torch.float64) is moved
    assert all(p.dtype == torch.float64 for p in moved.parameters())
    assert all(t.dtype == torch.float64 for t in optimizer_tensors(moved.meta_optimizer))
    if moved.warp is not None:
        points = moved.warp.buffer.state_dict()["points"]
        assert points and all(t.dtype == torch.float64 for point in points for t in point["params"].values())
    moved.meta_train_step(episodes)  # float64 episodes: training goes on in float64

    moved = learner(algorithm, **options)
    moved.meta_train_step(cast(episodes, torch.float32))
    moved.to(torch.float64).to(torch.float32)
    for each in (moved, stayed):
        each.meta_train_step(cast(episodes, torch.float32))
    for (name, a), (_, b) in zip(moved.named_parameters(), stayed.named_parameters()):
        assert torch.equal(a, b), name


def test_the_outer_optimizer_follows_parameters_that_the_move_replaced():
    trained = learner()
    trained.meta_train_step(cast(classification_episodes(2, (3,)), torch.float32))
    old = list(trained.parameters())
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        trained.to(torch.float64)
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(False)
    new = list(trained.parameters())
    assert all(a is not b for a, b in zip(old, new))  # the move made new parameter objects
    assert [id(p) for p in trained.meta_optimizer.param_groups[0]["params"]] == [id(p) for p in new]
    before = [p.detach().clone() for p in new]
    trained.meta_train_step(classification_episodes(2, (3,)))
    assert all(not torch.equal(a, b) for a, b in zip(before, trained.parameters()))


def test_a_learner_moves_to_another_device_with_its_inner_loop():
    # The meta device stands for a GPU here: nothing is computed, everything is placed.
    trained = learner()
    trained.meta_train_step(cast(classification_episodes(2, (3,)), torch.float32))
    trained.to("meta")
    assert trained.device == torch.device("meta") and trained.engine.device == torch.device("meta")
    assert all(p.device.type == "meta" for p in trained.parameters())
    assert optimizer_tensors(trained.meta_optimizer)
    assert all(t.device.type == "meta" for t in optimizer_tensors(trained.meta_optimizer))


def test_a_precision_the_target_cannot_run_is_refused_before_anything_moves(monkeypatch):
    bf16 = learner(precision="bf16")
    from fewshot_metaopt.learners import gradient_meta_learner

    def refuse(name, device):
        raise ValueError(f"precision {name!r} cannot run on {device}")

    monkeypatch.setattr(gradient_meta_learner, "resolve_precision", refuse)
    with pytest.raises(ValueError, match="precision 'bf16' cannot run on cpu"):
        bf16.to(torch.float64)
    assert all(p.dtype == torch.float32 for p in bf16.parameters())


# ----------------------------------------------------------------------- the learned optimizer


def net() -> nn.Module:
    torch.manual_seed(0)  # the rule built next draws its initialisation after the model's
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def tensors_in(tree) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    mapped_tree(lambda t: found.append(t) or t, tree)
    return found


@pytest.mark.parametrize("settings", [{"method": "meta_sgd"}, {"method": "lstm"},
                                      {"method": "lstm", "outer_trainer": "pes", "pes_particles": 2}],
                         ids=["meta_sgd", "lstm", "lstm-pes"])
def test_a_learned_optimizer_moves_with_what_it_keeps_and_trains_on(settings):
    episodes = classification_episodes(2, (3,))

    def trained() -> tuple[nn.Module, MetaOptimizer]:
        model = net()
        mo = MetaOptimizer(model, MetaOptimizerConfig(inner_steps=2, unroll_steps=2, **settings))
        mo.meta_train_step(cast(episodes, torch.float32), model)
        mo.compute_update({n: torch.ones_like(p) for n, p in model.named_parameters()})
        return model, mo

    model, mo = trained()
    assert [id(p) for _, p in mo.named_parameters()] == [id(p) for p in mo.rule.parameters()]
    assert all(name.startswith("rule.") for name, _ in mo.named_parameters())
    model.double()
    mo.to("cpu", torch.float64)
    kept = [*mo.parameters(), *optimizer_tensors(mo.meta_optimizer), *tensors_in(mo.state)]
    if settings.get("outer_trainer") == "pes":
        kept += tensors_in(mo.outer_trainer.state_dict()["pairs"])
    floating = [t for t in kept if t.is_floating_point()]
    assert len(floating) > len(list(mo.parameters())) and all(t.dtype == torch.float64 for t in floating)
    mo.meta_train_step(episodes, model)  # the rule's Adam moments moved with it
    mo.compute_update({n: torch.ones_like(p) for n, p in model.named_parameters()})

    # There and back again changes nothing: the next step is the one it would have been.
    stayed, moved = trained(), trained()
    moved[1].to(torch.float64).to(torch.float32)
    for m, o in (stayed, moved):
        o.meta_train_step(cast(episodes, torch.float32), m)
    for (name, a), (_, b) in zip(stayed[1].named_parameters(), moved[1].named_parameters()):
        assert torch.equal(a, b), name


def test_warp_grad_moves_its_replay_buffer_and_the_base_models_optimizer_state():
    episodes = classification_episodes(2, (3,))
    torch.manual_seed(0)
    model = warp_mlp(3, 2, hidden=(4,))
    mo = MetaOptimizer(model, MetaOptimizerConfig(method="warp_grad", inner_steps=2, warp_points=2,
                                                  warp_init="leap"))
    mo.meta_train_step(cast(episodes, torch.float32))
    model.double()  # the base model first: the rule is its warp layers
    mo.to(torch.float64)
    points = mo.warp.buffer.state_dict()["points"]
    init_state = optimizer_tensors(mo.warp_trainer.init_optimizer)
    assert points and init_state
    assert all(t.dtype == torch.float64 for t in [*tensors_in(points), *init_state] if t.is_floating_point())
    assert mo.meta_train_step(episodes).meta_loss > 0


# ----------------------------------------------------------------------- the helpers


def test_follow_parameters_refuses_lists_that_do_not_match():
    weights = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="as many parameters after the move as before, got 0 and 1"):
        follow_parameters(torch.optim.Adam(weights), weights, [])


def test_mapped_tree_keeps_the_structure_and_placed_like_keeps_integer_dtypes():
    place = placed_like(torch.zeros(1, dtype=torch.float64))
    tree = {"a": [torch.ones(1), (torch.arange(2),)], "b": Episode(torch.ones(1), torch.arange(1), torch.ones(1),
                                                                   torch.arange(1)), "c": 3}
    moved = mapped_tree(place, tree)
    assert moved["a"][0].dtype == torch.float64 and moved["a"][1][0].dtype == torch.int64
    assert isinstance(moved["b"], Episode) and moved["b"].support_x.dtype == torch.float64
    assert moved["b"].support_y.dtype == torch.int64 and moved["c"] == 3
