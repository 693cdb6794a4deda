"""The benchmark's DoWG (Khaled, Mishchenko & Jin 2023, Algorithm 1) against the algorithm
stepped by hand in float64, and the parameter-free registry building every optimizer from its
package."""

import math
import sys

import pytest
import torch
from torch import nn

from script_runner import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from parameter_free import PARAMETER_FREE, DoWG  # noqa: E402


def test_dowg_steps_as_algorithm_1():
    matrix = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    x = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = DoWG([x], reps_rel=1e-2, eps=0.0)
    x0 = x.detach().clone()
    r = 1e-2 * (1.0 + float(x0.norm()))
    v = 0.0
    expected = x0.clone()
    for _ in range(4):
        grad = matrix @ expected
        r = max(r, float((expected - x0).norm()))
        v += r**2 * float(grad @ grad)
        expected = expected - r**2 / math.sqrt(v) * grad

        opt.zero_grad()
        (0.5 * x @ (matrix @ x)).backward()
        opt.step()
    torch.testing.assert_close(x.detach(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(PARAMETER_FREE))
def test_every_parameter_free_optimizer_takes_a_step_from_its_package(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    entry = PARAMETER_FREE[name]
    opt = entry.build(model)
    before = [p.detach().clone() for p in model.parameters()]

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(3):
        if entry.schedule_free:
            opt.train()
        if entry.closure:
            opt.step(closure)
        else:  # as the benchmark drives them: some step under no_grad, where a closure cannot backward
            closure()
            opt.step()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
