"""iMAML: the implicit meta-gradient against its closed form on a quadratic task (and how the
conjugate-gradient estimate tightens with more steps), against float64 finite differences of
the query loss at the exact proximal solution, against the unrolled meta-gradient of the same
proximal inner loop as the inner steps grow; memory that does not grow with the inner steps;
its config and task-file keys; a bit-exact resume."""

import json
import sys

import pytest
import torch
from torch import nn

from fewshot_metaopt import Episode, GradientMetaLearner, GradientMetaLearnerConfig
from fewshot_metaopt.cli import main
from fewshot_metaopt.learners.conjugate_gradient import conjugate_gradient
from fewshot_metaopt.optim import SGDRule
from fewshot_metaopt.runs.errors import RunError
from fewshot_metaopt.runs.task_config import load_task
from learner_fixtures import classification_episodes, tiny_convnet, tiny_mlp
from script_runner import REPO
from test_cli import TINY_TASK, write_task
from test_cli_resume import assert_same_run, train_whole_and_interrupted_then_resumed

sys.path.insert(0, str(REPO / "benchmarks"))
from maml_family import SavedTensorPeak  # noqa: E402

DIM = 6
LAM = 0.5
# Gradient descent with lr 0.2 shrinks the proximal problem's error by at least 1 - 0.2 * LAM
# per step: after 400 steps it is below rounding.
EXACT_STEPS = 400


def quadratic_task():
    """A linear model under the MSE loss: the support loss's Hessian is ``2 X^T X / n``, a
    constant, with eigenvalues spread over two orders of magnitude so that conjugate gradient
    needs all ``DIM`` steps."""
    g = torch.Generator().manual_seed(0)
    scales = torch.logspace(-1.0, 0.2, DIM, dtype=torch.float64)
    support_x = torch.randn(12, DIM, generator=g, dtype=torch.float64) * scales
    query_x = torch.randn(10, DIM, generator=g, dtype=torch.float64)
    episode = Episode(support_x=support_x, support_y=torch.randn(12, 1, generator=g, dtype=torch.float64),
                      query_x=query_x, query_y=torch.randn(10, 1, generator=g, dtype=torch.float64))
    torch.manual_seed(2)
    model = nn.Linear(DIM, 1, bias=False).double()
    return model, episode


def support_hessian(episode: Episode) -> torch.Tensor:
    x = episode.support_x
    return 2 * x.T @ x / len(x)


def query_gradient(episode: Episode, phi: torch.Tensor) -> torch.Tensor:
    residual = episode.query_x @ phi - episode.query_y[:, 0]
    return 2 * episode.query_x.T @ residual / len(residual)


def implicit_learner(model, **settings) -> GradientMetaLearner:
    config = dict(algorithm="imaml", inner_lr=0.2, inner_steps=10, imaml_lambda=LAM, cg_steps=DIM)
    return GradientMetaLearner(model, GradientMetaLearnerConfig(**{**config, **settings}))


def meta_gradient(learner: GradientMetaLearner, episodes) -> torch.Tensor:
    learner.meta_optimizer.zero_grad(set_to_none=True)
    learner.accumulate_meta_gradient(episodes)
    return torch.cat([p.grad.reshape(-1) for p in learner.model.parameters()])


@pytest.mark.parametrize("engine", ["func", "higher"])
def test_cg_converges_to_the_closed_form_and_tightens_with_every_step(engine):
    model, episode = quadratic_task()
    hessian = support_hessian(episode)
    system = torch.eye(DIM, dtype=torch.float64) + hessian / LAM
    errors = []
    for steps in range(1, DIM + 1):
        learner = implicit_learner(model, cg_steps=steps, engine=engine)
        phi = learner.adapt(episode).fast_params[0].detach().reshape(-1)
        exact = torch.linalg.solve(system, query_gradient(episode, phi))
        error = meta_gradient(learner, [episode]) - exact
        errors.append(float(torch.sqrt(error @ system @ error) / torch.sqrt(exact @ system @ exact)))
    # Conjugate gradient's error falls in the norm of the system's matrix at every step, and
    # vanishes (to rounding) after DIM steps; one step is far from it on this conditioning.
    assert errors[0] > 0.1
    assert all(later < 0.9 * earlier for earlier, later in zip(errors, errors[1:-1])), errors
    assert errors[-1] < 1e-9, errors


def test_damping_solves_the_damped_system():
    model, episode = quadratic_task()
    learner = implicit_learner(model, cg_damping=0.3)
    phi = learner.adapt(episode).fast_params[0].detach().reshape(-1)
    damped = 1.3 * torch.eye(DIM, dtype=torch.float64) + support_hessian(episode) / LAM
    exact = torch.linalg.solve(damped, query_gradient(episode, phi))
    assert torch.allclose(meta_gradient(learner, [episode]), exact, rtol=1e-9, atol=1e-12)


def test_the_meta_gradient_is_the_derivative_of_the_query_loss_at_the_proximal_solution():
    """With the inner loop converged, central finite differences (float64) of
    ``L_Q(phi*(theta))``, ``phi*`` the exact minimiser of ``L_S(phi) + LAM/2 ||phi - theta||^2``."""
    model, episode = quadratic_task()
    x, y = episode.support_x, episode.support_y[:, 0]
    hessian = support_hessian(episode)

    def meta_loss(theta: torch.Tensor) -> torch.Tensor:
        phi = torch.linalg.solve(hessian + LAM * torch.eye(DIM, dtype=torch.float64),
                                 LAM * theta + 2 * x.T @ y / len(y))
        return ((episode.query_x @ phi - episode.query_y[:, 0]) ** 2).mean()

    theta = model.weight.detach().reshape(-1).clone()
    eps = 1e-6
    finite_differences = torch.stack([(meta_loss(theta + eps * e) - meta_loss(theta - eps * e)) / (2 * eps)
                                      for e in torch.eye(DIM, dtype=torch.float64)])
    learner = implicit_learner(model, inner_steps=EXACT_STEPS)
    assert torch.allclose(meta_gradient(learner, [episode]), finite_differences, rtol=1e-7, atol=1e-9)


def unrolled_meta_gradient(steps: int, adapted) -> torch.Tensor:
    learner = GradientMetaLearner(tiny_mlp(), GradientMetaLearnerConfig(
        algorithm="imaml", inner_steps=steps, inner_lr=0.3, imaml_lambda=1.0), adapted_parameters=adapted)
    episode = classification_episodes(1, (3,))[0]
    learner.meta_optimizer.zero_grad(set_to_none=True)
    fmodel = learner.adapt(episode, steps=steps, differentiable=True)
    nn.functional.cross_entropy(fmodel(episode.query_x), episode.query_y).backward()
    return torch.cat([p.grad.reshape(-1) for p in learner.model.parameters()])


@pytest.mark.parametrize("adapted", [None, ["2.weight", "2.bias"]], ids=["all", "head"])
def test_it_approaches_the_unrolled_meta_gradient_as_the_inner_steps_grow(adapted):
    """Backpropagating through k steps of the same proximal loop (second order, the anchor in
    the graph) and the implicit gradient at the k-th iterate agree better as k grows, on a
    float64 tanh MLP with lambda fixed; with the head alone adapted the body's share goes
    through the support gradient's vector-Jacobian product."""
    episode = classification_episodes(1, (3,))[0]
    gaps = []
    for steps in (1, 10, 100):
        learner = GradientMetaLearner(tiny_mlp(), GradientMetaLearnerConfig(
            algorithm="imaml", inner_steps=steps, inner_lr=0.3, imaml_lambda=1.0, cg_steps=30),
            adapted_parameters=adapted)
        unrolled = unrolled_meta_gradient(steps, adapted)
        gaps.append(float((meta_gradient(learner, [episode]) - unrolled).norm() / unrolled.norm()))
    assert gaps[0] > 0.1 and gaps[1] < 0.5 * gaps[0] and gaps[2] < 1e-5, gaps


def peak_saved_bytes(algorithm: str, steps: int, engine: str) -> int:
    learner = GradientMetaLearner(tiny_convnet(), GradientMetaLearnerConfig(
        algorithm=algorithm, inner_steps=steps, inner_lr=0.1, engine=engine))
    episodes = classification_episodes(2, (1, 4, 4))
    return SavedTensorPeak().measure(lambda: learner.meta_train_step(episodes))


@pytest.mark.parametrize("engine", ["func", "higher"])
def test_memory_does_not_grow_with_the_inner_steps(engine):
    imaml = [peak_saved_bytes("imaml", steps, engine) for steps in (1, 5, 20)]
    maml = [peak_saved_bytes("maml", steps, engine) for steps in (1, 20)]
    assert imaml[0] > 0 and imaml[0] == imaml[1] == imaml[2], imaml
    assert maml[1] > 5 * maml[0], maml


def test_the_inner_loop_is_proximal_at_evaluation_too():
    model, episode = quadratic_task()
    adapted = implicit_learner(model, inner_steps=EXACT_STEPS).adapt(episode).fast_params[0].detach().reshape(-1)
    x, y = episode.support_x, episode.support_y[:, 0]
    exact = torch.linalg.solve(support_hessian(episode) + LAM * torch.eye(DIM, dtype=torch.float64),
                               LAM * model.weight.detach().reshape(-1) + 2 * x.T @ y / len(y))
    assert torch.allclose(adapted, exact, rtol=1e-10, atol=1e-12)


def test_conjugate_gradient_stops_at_non_positive_curvature_and_at_a_zero_residual():
    b = [torch.tensor([1.0, 1.0], dtype=torch.float64)]

    def diagonal(*values):
        matrix = torch.tensor(values, dtype=torch.float64)
        return lambda vectors: [matrix * vectors[0]]

    # Negative curvature along the first direction: the undamped right-hand side comes back.
    assert torch.equal(conjugate_gradient(diagonal(-1.0, 1.0), b, steps=5)[0], b[0])
    # Along the second: the first step's estimate (A b = (3, -1), so x = b) stays.
    assert torch.equal(conjugate_gradient(diagonal(3.0, -1.0), b, steps=5)[0], b[0])
    calls = []

    def identity(vectors):
        calls.append(1)
        return vectors

    assert torch.equal(conjugate_gradient(identity, b, steps=5)[0], b[0]) and len(calls) == 1


def test_tasks_with_non_finite_losses_are_skipped_or_named():
    episodes = classification_episodes(3, (3,))
    episodes[1].support_x[0, 0] = float("nan")
    learner = GradientMetaLearner(tiny_mlp(), GradientMetaLearnerConfig(algorithm="imaml", skip_nonfinite_tasks=True))
    result = learner.meta_train_step(episodes)
    assert result.tasks == 2 and result.skipped_tasks == 1
    strict = GradientMetaLearner(tiny_mlp(), GradientMetaLearnerConfig(algorithm="imaml"))
    with pytest.raises(FloatingPointError, match="task 1: support loss"):
        strict.meta_train_step(episodes)


class WithUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = tiny_mlp()
        self.spare = nn.Parameter(torch.ones(2, dtype=torch.float64))

    def forward(self, x):
        return self.body(x)


def test_parameters_the_support_loss_does_not_reach():
    episodes = classification_episodes(1, (3,))
    with pytest.raises(ValueError, match=r"parameters \['spare'\] get no gradient from the support loss"):
        GradientMetaLearner(WithUnused(), GradientMetaLearnerConfig(algorithm="imaml")).meta_train_step(episodes)
    learner = GradientMetaLearner(WithUnused(), GradientMetaLearnerConfig(algorithm="imaml", allow_unused=True))
    meta_gradient(learner, episodes)
    assert torch.equal(learner.model.spare.grad, torch.zeros(2, dtype=torch.float64))


def test_a_rule_with_parameters_of_its_own_is_refused():
    model = tiny_mlp()
    rule = SGDRule.for_params({n: p.shape for n, p in model.named_parameters()}, lr=0.1, granularity="per_parameter")
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(algorithm="imaml"), inner_optimizer=rule)
    with pytest.raises(ValueError, match="inner rule's own parameters .* get no implicit meta-gradient"):
        learner.meta_train_step(classification_episodes(1, (3,)))


@pytest.mark.parametrize("settings, message", [
    (dict(imaml_lambda=0.0), "imaml_lambda must be positive, got 0.0"),
    (dict(cg_steps=0), "cg_steps must be an integer >= 1, got 0"),
    (dict(cg_damping=-0.1), "cg_damping must be >= 0, got -0.1"),
    (dict(lr_granularity="per_parameter"), "'imaml' learns no inner learning rate"),
    (dict(multi_step_loss=True), "'imaml' scores the inner solution only"),
    (dict(first_order=True), "first_order does not apply"),
    (dict(engine="func", vmap_tasks=True), "'imaml' adapts tasks one after another"),
    (dict(precision="fp16"), "does not scale its conjugate-gradient solve for fp16"),
])
def test_bad_settings_are_refused_in_one_line(settings, message):
    with pytest.raises(ValueError, match=message):
        GradientMetaLearnerConfig(algorithm="imaml", **settings)


MINIMAL = "[train]\niterations = 3\n"


@pytest.mark.parametrize("text, expected", [
    ("[learner]\ncg_steps = 3\n", "learner.cg_steps in {path} does not apply to learner.algorithm 'maml' "
                                  "(only to 'imaml')"),
    ("[learner]\nalgorithm = 'imaml'\ncg_steps = 0\n", "{path}: [learner] cg_steps must be an integer >= 1, got 0"),
    ("[learner]\nalgorithm = 'imaml'\ncg_steps = 2.5\n", "learner.cg_steps in {path} must be an integer, got 2.5"),
    ("[learner]\nalgorithm = 'imaml'\nimaml_lambda = -1.0\n", "[learner] imaml_lambda must be positive, got -1.0"),
    ("[learner]\nalgorithm = 'imaml'\ncg_damping = nan\n", "[learner] cg_damping must be >= 0 and finite, got nan"),
    ("[learner]\nalgorithm = 'imaml'\nwarp_points = 4\n", "learner.warp_points in {path} does not apply to "
                                                           "learner.algorithm 'imaml' (only to 'warp_maml' and 'warp_leap')"),
    ("[learner]\nalgorithm = 'imaml'\n[inner_optimizer]\nmethod = 'lstm'\n",
     "{path}: learner.algorithm 'imaml' meta-learns the initialisation only, so inner_optimizer.method must be 'sgd'"),
])
def test_task_file_keys_are_checked(tmp_path, text, expected):
    path = tmp_path / "t.toml"
    path.write_text(text + MINIMAL)
    with pytest.raises(RunError) as caught:
        load_task(path)
    assert expected.format(path=path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_task_file_selects_imaml_with_its_keys(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text("[learner]\nalgorithm = 'imaml'\nimaml_lambda = 0.5\ncg_steps = 3\ncg_damping = 1.0\n" + MINIMAL)
    task = load_task(path)
    assert (task.learner.imaml_lambda, task.learner.cg_steps, task.learner.cg_damping) == (0.5, 3, 1.0)
    assert {"imaml_lambda", "cg_steps", "cg_damping"} <= set(task.to_dict()["learner"])
    path.write_text(MINIMAL)
    assert "cg_steps" not in load_task(path).to_dict()["learner"]


IMAML_TASK = (TINY_TASK.replace('algorithm = "meta_sgd"', 'algorithm = "imaml"\ninner_steps = 2\ncg_steps = 2')
              .replace("iterations = 6", "iterations = 9"))


def test_an_interrupted_imaml_run_resumes_bit_exactly(tmp_path, capsys, monkeypatch):
    task = write_task(tmp_path, IMAML_TASK)
    train_whole_and_interrupted_then_resumed(task, tmp_path, monkeypatch)
    assert_same_run(tmp_path / "whole", tmp_path / "cut")
    stored = (tmp_path / "cut" / "config.toml").read_text()
    assert 'algorithm = "imaml"' in stored and "cg_steps = 2" in stored
    assert json.loads((tmp_path / "cut/results.json").read_text())["mean"] >= 0.0
    assert main(["evaluate", str(tmp_path / "cut"), "--episodes", "2"]) == 0
