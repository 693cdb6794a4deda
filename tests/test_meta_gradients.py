"""Every meta-gradient against central finite differences in float64, plus a closed form."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_metaopt import Episode, GradientMetaLearner, GradientMetaLearnerConfig
from learner_fixtures import classification_episodes, tiny_convnet, tiny_mlp

EPS = 1e-6


def objective(learner: GradientMetaLearner, episodes) -> float:
    """The meta-objective's value: mean query loss after the configured inner steps."""
    total = 0.0
    for ep in episodes:
        fmodel = learner.adapt(ep, steps=learner.config.inner_steps)
        with torch.no_grad():
            total += float(F.cross_entropy(fmodel(ep.query_x), ep.query_y))
    return total / len(episodes)


def probe_indices(numel: int, most: int = 5) -> list[int]:
    """A spread of coordinates (all of them for small tensors): keeps the suite fast."""
    if numel <= most:
        return list(range(numel))
    return sorted({round(k * (numel - 1) / (most - 1)) for k in range(most)})


def central_differences(tensors, value) -> list[tuple[int, int, float]]:
    """(tensor, coordinate, d value / d coordinate) for probed coordinates of every tensor."""
    out = []
    for ti, t in enumerate(tensors):
        flat = t.data.view(-1)
        for i in probe_indices(flat.numel()):
            old = float(flat[i])
            flat[i] = old + EPS
            up = value()
            flat[i] = old - EPS
            down = value()
            flat[i] = old
            out.append((ti, i, (up - down) / (2 * EPS)))
    return out


def finite_difference(learner, episodes, tensors) -> list[tuple[int, int, float]]:
    return central_differences(tensors, lambda: objective(learner, episodes))


def autograd_meta_gradient(learner, episodes, tensors):
    learner.meta_optimizer.zero_grad(set_to_none=True)
    learner.accumulate_meta_gradient(episodes)
    return [torch.zeros_like(t) if t.grad is None else t.grad.clone() for t in tensors]


CASES = [
    ("mlp", tiny_mlp, (3,)),
    ("conv_bn", tiny_convnet, (1, 4, 4)),
]


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("name, make_model, input_shape", CASES)
@pytest.mark.parametrize(
    "algorithm, granularity",
    [("maml", None), ("meta_sgd", None), ("maml", "per_step_per_layer"), ("anil", None)],
)
def test_meta_gradient_matches_finite_differences(name, make_model, input_shape, steps, algorithm, granularity):
    model = make_model()
    config = GradientMetaLearnerConfig(
        algorithm=algorithm, inner_lr=0.3, inner_steps=steps, lr_granularity=granularity
    )
    learner = GradientMetaLearner(model, config)
    episodes = classification_episodes(2, input_shape)
    tensors = list(model.parameters()) + list(learner.rule.parameters())
    assert learner.rule.parameters() is not None
    exact = autograd_meta_gradient(learner, episodes, tensors)
    for ti, i, numeric in finite_difference(learner, episodes, tensors):
        assert float(exact[ti].view(-1)[i]) == pytest.approx(numeric, rel=1e-5, abs=1e-8), (ti, i)
    # the check is not vacuous: the gradients are far from zero
    assert max(float(e.abs().max()) for e in exact) > 1e-3
    if algorithm == "meta_sgd" or granularity:
        assert any(float(p.grad.abs().max()) > 1e-4 for p in learner.rule.parameters())


def test_closed_form_second_order_scalar_case():
    """w' = w - a * dLs/dw with Ls = (w x - y)^2; Lq = (w' u - v)^2; derivatives by hand."""
    w0, alpha, x, y, u, v = 0.7, 0.05, 1.5, -0.4, 0.8, 2.0
    model = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(w0)
    learner = GradientMetaLearner(
        model, GradientMetaLearnerConfig(algorithm="meta_sgd", inner_lr=alpha, lr_granularity="scalar")
    )
    t = lambda value: torch.tensor([[value]], dtype=torch.float64)  # noqa: E731
    # mse_loss averages over one element, so the losses are exactly the squares above
    episode = Episode(t(x), t(y), t(u), t(v))
    learner.accumulate_meta_gradient([episode])

    w1 = w0 - alpha * 2 * x * (w0 * x - y)
    residual = 2 * u * (w1 * u - v)
    dw = residual * (1 - 2 * alpha * x * x)
    dalpha = residual * (-2 * x * (w0 * x - y))
    assert model.weight.grad.item() == pytest.approx(dw, rel=1e-12)
    assert learner.rule.lrs.values[0].grad.item() == pytest.approx(dalpha, rel=1e-12)


@pytest.mark.parametrize("steps", [1, 3])
def test_first_order_meta_gradient_is_the_query_gradient_at_adapted_parameters(steps):
    model = tiny_mlp()
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(algorithm="fomaml", inner_lr=0.3, inner_steps=steps))
    episodes = classification_episodes(3, (3,))
    exact = autograd_meta_gradient(learner, episodes, list(model.parameters()))
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for ep in episodes:
        fmodel = learner.adapt(ep, steps=steps)
        fast = [p.detach().requires_grad_() for p in fmodel.fast_params]
        loss = F.cross_entropy(fmodel(ep.query_x, params=fast), ep.query_y)
        for acc, g in zip(expected, torch.autograd.grad(loss, fast)):
            acc += g / len(episodes)
    for e, x in zip(exact, expected):
        torch.testing.assert_close(e, x, rtol=1e-10, atol=1e-12)
    # and it differs from the second-order gradient
    second = GradientMetaLearner(tiny_mlp(), GradientMetaLearnerConfig(algorithm="maml", inner_lr=0.3, inner_steps=steps))
    full = autograd_meta_gradient(second, episodes, list(second.model.parameters()))
    assert any(not torch.allclose(a, b) for a, b in zip(exact, full))


def test_multi_step_loss_gradient_matches_finite_differences():
    model = tiny_mlp()
    learner = GradientMetaLearner(
        model, GradientMetaLearnerConfig(inner_lr=0.3, inner_steps=3, multi_step_loss=True)
    )
    episodes = classification_episodes(1, (3,))
    weights = learner.step_weights(3).tolist()

    def multi_objective() -> float:
        ep = episodes[0]
        total = 0.0
        for k in range(1, 4):
            fmodel = learner.adapt(ep, steps=k)
            with torch.no_grad():
                total += weights[k - 1] * float(F.cross_entropy(fmodel(ep.query_x), ep.query_y))
        return total

    tensors = list(model.parameters())
    exact = autograd_meta_gradient(learner, episodes, tensors)
    for ti, i, numeric in central_differences(tensors, multi_objective):
        assert float(exact[ti].view(-1)[i]) == pytest.approx(numeric, rel=1e-5, abs=1e-8)
