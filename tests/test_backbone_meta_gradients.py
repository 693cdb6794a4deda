"""ResNet-12 and WRN-28-10 meta-gradients against central finite differences in float64, on
both engines, under MAML, Meta-SGD and ANIL, with either batch-norm mode; and the vmapped
tasks against the task loop.

The backbones are the real architectures at tiny widths (4-6-8-10 channels, 16x16 inputs,
WRN-10 for WRN-28) so that a case runs in a fraction of a second. Their many tensors are
checked along directions (a random one through every meta-parameter, and one through each
kind of tensor: a convolution, a batch-norm weight, the head, the learned lrs) rather than
coordinate by coordinate: ``<grad, v>`` against ``(f(theta + eps v) - f(theta - eps v)) / 2 eps``.

ReLUs and max-pooling make the objective piecewise smooth: a step that crosses a kink (a
pre-activation within ``eps`` of zero) measures no derivative at all. Such a step shows as
one-sided differences that disagree, and is taken again smaller.
"""

import pytest
import torch
import torch.nn.functional as F

from fewshot_metaopt import GradientMetaLearner, GradientMetaLearnerConfig
from fewshot_metaopt.models import PerStepBatchNorm2d, resnet12, wide_resnet
from learner_fixtures import classification_episodes

STEP_SIZES = (1e-6, 1e-7, 1e-8)
STEPS = 2  # two steps: per-step batch norm uses two rows
INPUT = (3, 16, 16)
WIDTHS = (4, 6, 8, 10)


def tiny_resnet12(batch_norm: str):
    torch.manual_seed(3)
    return resnet12(2, widths=WIDTHS, batch_norm=batch_norm, inner_steps=STEPS).double()


def tiny_wrn(batch_norm: str):
    torch.manual_seed(4)
    return wide_resnet(2, depth=10, widths=WIDTHS, batch_norm=batch_norm, inner_steps=STEPS).double()


BACKBONES = {"resnet12": tiny_resnet12, "wrn": tiny_wrn}


def meta_objective(learner: GradientMetaLearner, episodes) -> float:
    """The mean query loss after the inner steps, as meta-training computes it (batch
    statistics; first-order inner steps give the same values as second-order ones)."""
    total = 0.0
    for task, episode in enumerate(episodes):
        fmodel, _, _ = learner.inner_loop(episode, learner.config.inner_steps, "first_order", task, per_step_query=False)
        with torch.no_grad():
            total += float(F.cross_entropy(fmodel(episode.query_x), episode.query_y))
    return total / len(episodes)


def directions(learner: GradientMetaLearner) -> dict[str, list[torch.Tensor]]:
    """Unit directions over the meta-parameters: through all of them, and through one tensor of each kind."""
    tensors = learner.meta_parameters
    model = learner.model
    names = [name for name, _ in model.named_parameters()]
    names += [f"rule.{i}" for i in range(len(tensors) - len(names))]
    norm_weights = [f"{owner}.weight" for owner, module in model.named_modules()
                    if isinstance(module, (torch.nn.BatchNorm2d, PerStepBatchNorm2d))]
    g = torch.Generator().manual_seed(0)
    picks = {
        "all": lambda name: True,
        "first conv": lambda name: name == names[0],
        "a batch-norm weight": lambda name: name == norm_weights[1],
        "head": lambda name: name.startswith(f"{len(model) - 1}."),
        "learned lrs": lambda name: name.startswith("rule."),
    }
    out = {}
    for kind, chosen in picks.items():
        v = [torch.randn(t.shape, generator=g, dtype=t.dtype) if chosen(name) else torch.zeros_like(t)
             for name, t in zip(names, tensors)]
        norm = torch.sqrt(sum((x * x).sum() for x in v))
        if float(norm) > 0:
            out[kind] = [x / norm for x in v]
    return out


def directional_difference(learner, episodes, direction) -> float:
    tensors = learner.meta_parameters

    def shifted(scale: float) -> float:
        with torch.no_grad():
            for t, v in zip(tensors, direction):
                t.add_(scale * v)
        try:
            return meta_objective(learner, episodes)
        finally:
            with torch.no_grad():
                for t, v in zip(tensors, direction):
                    t.sub_(scale * v)

    here = meta_objective(learner, episodes)
    for eps in STEP_SIZES:
        up, down = shifted(eps), shifted(-eps)
        forward, backward = (up - here) / eps, (here - down) / eps
        if abs(forward - backward) <= 1e-3 * max(1.0, abs(forward + backward) / 2):
            return (up - down) / (2 * eps)
    pytest.fail(f"a kink of the objective lies within {STEP_SIZES[-1]} of theta along this direction")


# Every algorithm on the default engine; higher, which runs the same rule through other code,
# under MAML with either batch norm and under Meta-SGD.
CASES = [(backbone, batch_norm, algorithm, "func") for backbone in sorted(BACKBONES)
         for batch_norm in ("transductive", "per_step") for algorithm in ("maml", "meta_sgd", "anil")]
CASES += [(backbone, batch_norm, "maml", "higher") for backbone in sorted(BACKBONES)
          for batch_norm in ("transductive", "per_step")]
CASES += [("resnet12", "per_step", "meta_sgd", "higher")]


@pytest.mark.parametrize("backbone, batch_norm, algorithm, engine", CASES)
def test_backbone_meta_gradient_matches_finite_differences(backbone, batch_norm, algorithm, engine):
    model = BACKBONES[backbone](batch_norm)
    config = GradientMetaLearnerConfig(algorithm=algorithm, inner_lr=0.3, inner_steps=STEPS, engine=engine)
    learner = GradientMetaLearner(model, config)
    episodes = classification_episodes(2, INPUT)
    learner.meta_optimizer.zero_grad(set_to_none=True)
    learner.accumulate_meta_gradient(episodes)
    exact = [torch.zeros_like(t) if t.grad is None else t.grad.clone() for t in learner.meta_parameters]
    checked = directions(learner)
    assert {"all", "first conv", "a batch-norm weight", "head"} <= set(checked)
    for kind, direction in checked.items():
        analytic = float(sum((e * v).sum() for e, v in zip(exact, direction)))
        numeric = directional_difference(learner, episodes, direction)
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9), kind
        if kind != "learned lrs" and not (algorithm == "anil" and kind in ("first conv", "a batch-norm weight")):
            assert abs(analytic) > 1e-4, kind  # not vacuous: the gradient is felt along it
    if batch_norm == "per_step":
        # Meta-training folded the batches' statistics into both steps' rows.
        norm = next(m for m in model.modules() if hasattr(m, "num_batches_tracked"))
        assert norm.num_batches_tracked.tolist()[0] > 0 and norm.num_batches_tracked.tolist()[1] > 0


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("algorithm", ["maml", "meta_sgd"])
def test_vmapped_tasks_give_the_task_loops_meta_gradient(backbone, algorithm):
    """The vmapped inner loops lower the residual blocks (batch norm in vmap-safe ops): the same
    meta-gradient as the task loop, which the finite differences above vouch for."""
    episodes = classification_episodes(3, INPUT)
    grads = []
    for vmap in (False, True):
        model = BACKBONES[backbone]("transductive")
        config = GradientMetaLearnerConfig(algorithm=algorithm, inner_lr=0.3, inner_steps=STEPS, engine="func",
                                           vmap_tasks=vmap, vmap_chunk_size=2 if vmap else None)
        learner = GradientMetaLearner(model, config)
        learner.accumulate_meta_gradient(episodes)
        grads.append([t.grad.clone() for t in learner.meta_parameters])
    for loop, vmapped in zip(*grads):
        torch.testing.assert_close(vmapped, loop, rtol=1e-9, atol=1e-12)
