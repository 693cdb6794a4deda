"""The ``loss`` argument of the rule contract: rules that read it (the combiner, the tape rule)
get each inner step's support loss from every driver (both engines of the learners, looped and
vmapped, ``MetaOptimizer.meta_train_step``, the Warp-Grad trajectories and objective), and
the drivers' meta-gradients agree with it."""

from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fewshot_metaopt import GradientMetaLearner, GradientMetaLearnerConfig, MetaOptimizer, MetaOptimizerConfig
from fewshot_metaopt.engines import func_engine
from fewshot_metaopt.optim import UpdateRule
from fewshot_metaopt.optim.rules.tape_sgd import TapeSGDRule
from fewshot_metaopt.warp import warp_mlp
from fewshot_metaopt.warp.objective import warp_step_loss
from fewshot_metaopt.warp.replay import TrajectoryPoint
from fewshot_metaopt.warp.warp_grad import WarpGradTrainer
from learner_fixtures import classification_episodes, tiny_mlp

LR = 0.3


class SpyState(NamedTuple):
    loss: torch.Tensor | None = None


class LossSpy(UpdateRule):
    """SGD that records the loss each update was handed (``None`` when none was)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[float | None] = []

    def init(self, params):
        return SpyState()

    def update(self, params, grads, state, step, loss=None):
        self.seen.append(None if loss is None else float(loss))
        new = {n: p - LR * grads[n] if n in grads else p for n, p in params.items()}
        return new, SpyState()


def support_losses(model: nn.Module, episode, steps: int, adapted=None) -> list[float]:
    """The support loss before each of ``steps`` plain SGD steps on the ``adapted`` parameters
    (default: all), computed independently."""
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = [n for n in params if adapted is None or n in adapted]
    losses = []
    for _ in range(steps):
        live = {n: params[n].requires_grad_() for n in names}
        loss = F.cross_entropy(functional_call(model, {**params, **live}, (episode.support_x,)), episode.support_y)
        losses.append(float(loss.detach()))
        grads = torch.autograd.grad(loss, list(live.values()))
        params.update({n: (p - LR * g).detach() for (n, p), g in zip(live.items(), grads)})
    return losses


@pytest.mark.parametrize("engine", ["higher", "func"])
@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
def test_each_engine_hands_the_rule_every_support_loss(engine, algorithm):
    model, spy = tiny_mlp(), LossSpy()
    episode = classification_episodes(1, (3,))[0]
    expected = support_losses(model, episode, 3)
    learner = GradientMetaLearner(
        model, GradientMetaLearnerConfig(algorithm=algorithm, inner_lr=LR, inner_steps=3, engine=engine),
        inner_optimizer=spy,
    )
    learner.accumulate_meta_gradient([episode])
    assert spy.seen == pytest.approx(expected, rel=1e-12)


def shaken_tape_rule() -> TapeSGDRule:
    """A tape rule whose loss feature changes its output (untrained, its readout is zero)."""
    torch.manual_seed(5)
    rule = TapeSGDRule().double()
    with torch.no_grad():
        for p in rule.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return rule


def tape_meta_gradient(**settings) -> list[torch.Tensor]:
    model, rule = tiny_mlp(), shaken_tape_rule()
    learner = GradientMetaLearner(
        model, GradientMetaLearnerConfig(algorithm="maml", inner_lr=LR, inner_steps=2, **settings), inner_optimizer=rule
    )
    learner.accumulate_meta_gradient(classification_episodes(3, (3,)))
    return [t.grad.clone() for t in list(model.parameters()) + list(rule.parameters()) if t.grad is not None]


def test_vmapped_tasks_feed_the_loss_like_the_loop(monkeypatch):
    loop = tape_meta_gradient(engine="func")
    for g, e in zip(tape_meta_gradient(engine="higher"), loop):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    vmapped = tape_meta_gradient(vmap_tasks=True)
    for g, e in zip(vmapped, loop):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    # Not vacuous: without the loss the same rule gives another meta-gradient.
    real_step = func_engine.step_rule
    monkeypatch.setattr(func_engine, "step_rule", lambda rule, p, g, s, k, loss=None: real_step(rule, p, g, s, k))
    blind = tape_meta_gradient(vmap_tasks=True)
    assert any(not torch.allclose(a, b, rtol=1e-6) for a, b in zip(blind, vmapped))


def test_meta_train_step_hands_the_rule_every_support_loss():
    model, spy = tiny_mlp(), LossSpy()
    episode = classification_episodes(1, (3,))[0]
    expected = support_losses(model, episode, 4)
    mo = MetaOptimizer(model, MetaOptimizerConfig(method="meta_sgd", inner_steps=4, unroll_steps=2))
    mo.rule = mo.tbptt.rule = spy
    mo.meta_train_step([episode], model)
    assert spy.seen == pytest.approx(expected, rel=1e-12)


def test_warp_trajectories_and_objective_hand_the_rule_the_loss():
    torch.manual_seed(0)
    model = warp_mlp(3, 2, hidden=(4,)).double()
    episode = classification_episodes(1, (3,))[0]
    spy = LossSpy()
    trainer = WarpGradTrainer(model, spy, buffer_size=10, points=1)
    trainer.run_task(episode, steps=2)
    assert spy.seen == pytest.approx(support_losses(model, episode, 2, trainer.adapted), rel=1e-12)

    spy.seen.clear()
    theta = {n: p.detach() for n, p in model.named_parameters() if n in trainer.adapted}
    warp_step_loss(model, spy, TrajectoryPoint(theta, SpyState(), 0, episode))
    assert spy.seen == pytest.approx(support_losses(model, episode, 1, trainer.adapted), rel=1e-12)
