"""MAML++'s derivative-order annealing (``first_order_until``): first-order meta-gradients for the
first N meta-iterations and second-order ones after, on every path that takes them; the
config's refusals; task files; a bit-exact resume across the switch; and the MAML++ task file."""

import pytest
import torch

from fewshot_metaopt import GradientMetaLearner, GradientMetaLearnerConfig
from fewshot_metaopt.cli import main
from fewshot_metaopt.optim import SGDRule
from fewshot_metaopt.runs.errors import RunError
from fewshot_metaopt.runs.task_config import load_task
from learner_fixtures import classification_episodes, tiny_convnet
from test_cli import TINY_TASK, write_task
from test_cli_resume import assert_same_run, train_whole_and_interrupted_then_resumed

EPISODES = classification_episodes(2, (1, 4, 4), shots=2)


def learner(**settings) -> GradientMetaLearner:
    return GradientMetaLearner(tiny_convnet(), GradientMetaLearnerConfig(inner_lr=0.3, inner_steps=2, meta_lr=0.01,
                                                                         **settings))


def meta_gradient(learner: GradientMetaLearner, iteration: int = 0) -> list[torch.Tensor]:
    learner.iteration = iteration
    learner.meta_optimizer.zero_grad(set_to_none=True)
    learner.accumulate_meta_gradient(EPISODES)
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in learner.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("settings", [{}, {"engine": "higher"}, {"vmap_tasks": True}, {"algorithm": "anil"},
                                      {"algorithm": "proto_maml"}, {"multi_step_loss": True}])
def test_the_meta_gradient_is_first_order_until_the_switch_and_second_order_from_it(settings):
    annealed = learner(first_order_until=3, **settings)
    first, second = learner(first_order=True, **settings), learner(**settings)
    assert same(meta_gradient(annealed, 0), meta_gradient(first)) and same(meta_gradient(annealed, 2), meta_gradient(first))
    assert same(meta_gradient(annealed, 3), meta_gradient(second)) and same(meta_gradient(annealed, 9), meta_gradient(second))
    assert not same(meta_gradient(first), meta_gradient(second))
    assert annealed.training_mode == "second_order" and annealed.config.first_order_at(2)


def test_training_steps_first_order_then_second_order():
    annealed = learner(first_order_until=2)
    for _ in range(3):
        annealed.meta_train_step(EPISODES)
    # The same three steps by a first-order learner for two, then a second-order one from its state.
    first = learner(first_order=True)
    for _ in range(2):
        first.meta_train_step(EPISODES)
    second = learner()
    second.load_state_dict(first.state_dict())
    second.meta_train_step(EPISODES)
    assert annealed.iteration == second.iteration == 3
    assert same(list(annealed.parameters()), list(second.parameters()))


def test_learned_inner_lrs_learn_first_order_before_the_switch():
    annealed = learner(algorithm="meta_sgd", first_order_until=1)
    rule = SGDRule.for_params({n: p.shape for n, p in annealed.model.named_parameters()}, lr=0.3,
                              granularity="per_parameter", dtype=torch.float64)
    # The first-order meta-gradient of Meta-SGD, with a learned-lr rule handed to a first-order learner.
    first = GradientMetaLearner(tiny_convnet(), GradientMetaLearnerConfig(inner_lr=0.3, inner_steps=2, first_order=True),
                                inner_optimizer=rule)
    early = meta_gradient(annealed, 0)
    assert same(early, meta_gradient(first))
    assert not same(early, meta_gradient(annealed, 1))
    assert all(g.abs().sum() > 0 for g in early[-len(list(annealed.rule.parameters())):])


@pytest.mark.parametrize("settings, message", [
    ({"first_order_until": -1}, "first_order_until must be an integer >= 0, got -1"),
    ({"first_order_until": 2.5}, "first_order_until must be an integer >= 0, got 2.5"),
    ({"first_order_until": True}, "first_order_until must be an integer >= 0, got True"),
    ({"first_order_until": 5, "algorithm": "fomaml"}, "first_order_until=5 switches to second-order meta-gradients "
                                                      "after 5 iterations, but algorithm 'fomaml' keeps them first-order"),
    ({"first_order_until": 5, "first_order": True}, "but first_order=True keeps them first-order throughout"),
    ({"first_order_until": 5, "algorithm": "imaml"}, "algorithm 'imaml' never differentiates them; use 0, got 5"),
    ({"first_order_until": 5, "algorithm": "warp_leap"}, "algorithm 'warp_leap' never differentiates them"),
])
def test_the_config_refuses_annealing_where_there_is_no_order_to_switch(settings, message):
    with pytest.raises(ValueError, match=message):
        GradientMetaLearnerConfig(**settings)


def test_warp_maml_and_a_zero_take_the_key():
    assert GradientMetaLearnerConfig(algorithm="warp_maml", first_order_until=10).first_order_at(9)
    assert not GradientMetaLearnerConfig(algorithm="maml", first_order_until=0).first_order_at(0)


ANNEALED_TASK = TINY_TASK.replace("inner_lr = 0.3", "inner_lr = 0.3\nfirst_order_until = 5")


def test_task_files_set_first_order_until(tmp_path):
    assert load_task(write_task(tmp_path, ANNEALED_TASK)).learner.first_order_until == 5
    with pytest.raises(RunError, match="learner.first_order_until in .* must be an integer, got 'soon'"):
        load_task(write_task(tmp_path, ANNEALED_TASK), ["learner.first_order_until=soon"])
    with pytest.raises(RunError, match=r"--set learner.algorithm=fomaml and .*: \[learner\] first_order_until=5 "
                                       "switches to second-order"):
        load_task(write_task(tmp_path, ANNEALED_TASK.replace("meta_sgd", "maml")), ["learner.algorithm=fomaml"])


def test_a_run_resumed_across_the_switch_is_bit_identical(tmp_path, capsys, monkeypatch):
    # Checkpoint at iteration 4, interrupted in the 6th, resumed from 4: the switch at 5 falls in the resumed part.
    task = write_task(tmp_path, ANNEALED_TASK.replace("iterations = 6", "iterations = 8"))
    train_whole_and_interrupted_then_resumed(task, tmp_path, monkeypatch)
    assert_same_run(tmp_path / "whole", tmp_path / "cut")


MAML_PLUS_PLUS = "omniglot-5w1s-mamlpp"


def test_the_maml_plus_plus_task_file_carries_antoniou_et_al_s_hyperparameters():
    task = load_task(MAML_PLUS_PLUS)
    learner = task.learner
    assert (task.data.dataset, task.ways, task.episodes.shots, task.data.image_size) == ("omniglot", 5, 1, 28)
    assert (task.model.name, task.model.channels, task.model.batch_norm) == ("conv4", 64, "per_step")
    assert (learner.algorithm, learner.inner_lr, learner.inner_steps, learner.eval_steps) == ("maml", 0.1, 5, 5)
    assert learner.lr_granularity == "per_step_per_layer"
    assert (learner.multi_step_loss, learner.multi_step_anneal_iters) == (True, 5000)
    assert learner.first_order_until == 25000 and learner.first_order is None
    assert (learner.meta_optimizer, learner.meta_lr) == ("adam", 0.001)
    assert (task.meta_schedule.name, task.meta_schedule.min_factor) == ("cosine", 0.01)
    assert (task.train.iterations, task.train.meta_batch, task.evaluation.episodes) == (75000, 16, 600)


def test_the_maml_plus_plus_task_file_trains_end_to_end(tmp_path, capsys):
    tiny = ["data.dataset=glyphs", "data.image_size=16", "data.num_characters=40", "data.samples_per_class=5", "model.channels=4", "episodes.queries=2",
            "train.iterations=3", "train.meta_batch=2", "learner.first_order_until=2", "learner.multi_step_anneal_iters=2",
            "validation.every=0", "evaluation.episodes=3", "learner.inner_steps=2", "learner.inner_steps_eval=2"]
    overrides = [arg for setting in tiny for arg in ("--set", setting)]
    assert main(["train", MAML_PLUS_PLUS, "--out", str(tmp_path / "run"), *overrides]) == 0
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert state["iteration"] == 3
