"""Meta-training a rule over a mixture of architectures and task sources (task_mixture.py):
seeded draws, weights, a few meta-steps on Glyphs and the sinusoid with tiny networks, the
registries of architectures and sources, and one-line errors for bad input."""

import copy
import math

import pytest
import torch
from torch import nn

from fewshot_metaopt import MetaOptimizer, MetaOptimizerConfig
from fewshot_metaopt.datasets import Glyphs, Sinusoid
from fewshot_metaopt.meta_training.architectures import ARCHITECTURES, IMAGE_SIDE
from fewshot_metaopt.meta_training.task_families import NetworkTask
from fewshot_metaopt.meta_training.task_meta_training import unrolled_loss
from fewshot_metaopt.meta_training.task_mixture import (
    MixtureComponent,
    TaskMixture,
    meta_train_on_mixture,
    step_generator,
)
from fewshot_metaopt.meta_training.task_sources import TASK_SOURCES
from fewshot_metaopt.models import ResidualConvNet, conv4, mlp
from omniglot_fixtures import make_omniglot

WAYS = 3


@pytest.fixture(scope="module")
def glyphs():
    return Glyphs("train", num_characters=30, samples_per_class=6)


def tiny_mixture(glyphs, weights=(1.0, 1.0)) -> TaskMixture:
    return TaskMixture([
        MixtureComponent("conv4-2 on glyphs", lambda: conv4(WAYS, hidden=2), glyphs, ways=WAYS, shots=2,
                         weight=weights[0]),
        MixtureComponent("mlp-1-4 on sinusoid", lambda: mlp(1, 1, hidden=(4,)), Sinusoid(), ways=1, shots=5,
                         weight=weights[1]),
    ])


def learned(method: str, variant: str = "faithful", **overrides) -> MetaOptimizer:
    settings = dict(method=method, lstm_variant=variant, hidden_size=4, num_layers=1, inner_lr=0.01,
                    inner_steps=4, unroll_steps=2, meta_loss="support", meta_lr=0.01)
    torch.manual_seed(0)
    return MetaOptimizer(conv4(WAYS, hidden=2), MetaOptimizerConfig(**{**settings, **overrides}))


def test_weights_choose_components_in_proportion(glyphs):
    mixture = tiny_mixture(glyphs, weights=(3.0, 1.0))
    generator = torch.Generator().manual_seed(0)
    names = [mixture.choose(generator).name for _ in range(4000)]
    assert abs(names.count("conv4-2 on glyphs") / len(names) - 0.75) < 0.03
    assert "75%" in mixture.describe()[0] and "25%" in mixture.describe()[1]


def test_a_seed_and_step_name_the_same_draw_and_the_global_rng_is_untouched(glyphs):
    mixture = tiny_mixture(glyphs)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first, again = mixture.draw(step_generator(7, 3), episodes=2), mixture.draw(step_generator(7, 3), episodes=2)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert first.component is again.component and len(first.episodes) == 2
    for a, b in zip(first.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(first.episodes, again.episodes):
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.support_y, b.support_y)
    other = mixture.draw(step_generator(7, 4))
    assert other.component is not first.component or not torch.equal(
        other.episodes[0].support_x, first.episodes[0].support_x)


def test_a_run_in_chunks_trains_the_same_rule_as_one_run(glyphs):
    mixture = tiny_mixture(glyphs)
    whole, chunked = learned("l2o"), learned("l2o")
    history = meta_train_on_mixture(whole, mixture, meta_steps=3, seed=5)
    parts = meta_train_on_mixture(chunked, mixture, 2, seed=5) + meta_train_on_mixture(chunked, mixture, 1, seed=5,
                                                                                       first_step=2)
    assert [h.step for h in history] == [0, 1, 2] and [h.component for h in history] == [p.component for p in parts]
    for a, b in zip(whole.rule.parameters(), chunked.rule.parameters()):
        assert torch.equal(a, b)


class Recorder:
    """Stands in for a MetaOptimizer: records what each meta-step was handed."""

    config = MetaOptimizerConfig(method="l2o")

    def __init__(self):
        self.calls = []

    def meta_train_step(self, episodes, model):
        self.calls.append((episodes, model))
        return None


def test_a_draw_serves_calls_per_draw_meta_steps_so_runs_that_span_calls_keep_their_network(glyphs):
    recorder = Recorder()
    history = meta_train_on_mixture(recorder, tiny_mixture(glyphs), meta_steps=5, seed=2, first_step=1,
                                    calls_per_draw=2)
    assert [h.step for h in history] == [1, 2, 3, 4, 5]
    draws = [tiny_mixture(glyphs).draw(step_generator(2, k)) for k in (0, 1, 2)]
    for (episodes, model), k in zip(recorder.calls, (0, 1, 1, 2, 2)):
        assert torch.equal(episodes[0].support_x, draws[k].episodes[0].support_x)
        for a, b in zip(model.parameters(), draws[k].model.parameters()):
            assert torch.equal(a, b)


@pytest.mark.parametrize("method, variant", [("lstm", "faithful"), ("lstm", "scalable"), ("l2o", "faithful")])
def test_meta_steps_on_glyphs_and_sinusoid_change_the_rule_and_stay_finite(glyphs, method, variant):
    mo = learned(method, variant)
    start = copy.deepcopy(mo.rule.state_dict())
    history = meta_train_on_mixture(mo, tiny_mixture(glyphs), meta_steps=4, seed=1)
    assert {h.component for h in history} == {"conv4-2 on glyphs", "mlp-1-4 on sinusoid"}
    assert all(math.isfinite(h.result.meta_loss) and math.isfinite(h.result.final_loss) for h in history)
    assert all(torch.isfinite(p).all() for p in mo.rule.parameters())
    assert any(not torch.equal(start[name], value) for name, value in mo.rule.state_dict().items())


def test_auto_loss_is_the_mean_squared_error_on_sinusoid_episodes_through_truncated_bptt(glyphs):
    mixture = tiny_mixture(glyphs, weights=(1e-9, 1.0))
    mo = learned("l2o", inner_steps=1, unroll_steps=1)
    rule = copy.deepcopy(mo.rule)
    draw = mixture.draw(step_generator(0, 0))
    assert draw.component.name == "mlp-1-4 on sinusoid"
    (step,) = meta_train_on_mixture(mo, mixture, meta_steps=1, seed=0)
    episode = draw.episodes[0]
    expected = unrolled_loss(rule, NetworkTask(draw.model, episode.support_x, episode.support_y, "mse"), 1)
    assert step.result.meta_loss == pytest.approx(float(expected.detach()), rel=1e-5)


def test_named_pairs_load_each_source_once_and_size_episodes_by_kind(tmp_path):
    make_omniglot(tmp_path / "omniglot")
    mixture = TaskMixture.from_names(
        [("conv4-8", "omniglot-background"), ("mlp-784-32-32", "omniglot-background", 2.0),
         ("mlp-1-40-40", "sinusoid", 0.5)],
        data_root=tmp_path / "omniglot", ways=WAYS, shots=2, regression_shots=7)
    conv, flat, sine = mixture.components
    assert conv.source is flat.source and conv.description == "Omniglot background alphabets"
    assert (conv.ways, conv.shots, flat.weight, sine.ways, sine.shots) == (WAYS, 2, 2.0, 1, 7)
    assert mixture.describe()[1].startswith("mlp-784-32-32 on omniglot-background (Omniglot background alphabets)")
    assert mixture.describe()[2].endswith("1-way 7-shot, weight 0.5 (14%)")
    draw = mixture.draw(step_generator(0, 0))
    assert draw.model(draw.episodes[0].support_x).shape[-1] == draw.component.ways
    evaluation, description = TASK_SOURCES["omniglot-evaluation"].build(tmp_path / "omniglot")
    assert description == "Omniglot evaluation alphabets" and evaluation.num_classes == 6


def test_omniglot_sources_fall_back_to_glyphs_and_say_so(tmp_path):
    mixture = TaskMixture.from_names([("residual-16x2", "omniglot-background")], data_root=tmp_path / "absent")
    assert isinstance(mixture.components[0].source, Glyphs)
    assert mixture.components[0].description == f"Glyphs train characters (no Omniglot at {tmp_path / 'absent'})"
    for name, split in (("omniglot-evaluation", "test"), ("glyphs-train", "train")):
        source, description = TASK_SOURCES[name].build(None)
        assert isinstance(source, Glyphs) and source.split == split and split in description


@pytest.mark.parametrize("name", ARCHITECTURES.names())
def test_every_architecture_builds_for_its_inputs(name):
    entry = ARCHITECTURES[name]
    inputs = torch.zeros(2, 1, IMAGE_SIDE, IMAGE_SIDE) if entry.inputs == "image" else torch.zeros(2, 1)
    assert entry.build(WAYS)(inputs).shape == (2, WAYS)


def test_residual_net_has_skip_blocks_and_refuses_empty_sizes():
    net = ResidualConvNet(4, width=6, blocks=3)
    assert len(net.blocks) == 3 and net(torch.zeros(2, 1, 28, 28)).shape == (2, 4)
    with pytest.raises(ValueError, match="got 4, 1, 0, 3"):
        ResidualConvNet(4, width=0, blocks=3)


def component(**overrides):
    settings = dict(name="c", make_model=lambda: nn.Linear(1, 1), source=Sinusoid(), ways=1, shots=5)
    return MixtureComponent(**{**settings, **overrides})


@pytest.mark.parametrize("build, message", [
    (lambda: TaskMixture.from_names([("conv5", "sinusoid")]), "unknown architecture 'conv5'; choose one of conv4-8"),
    (lambda: TaskMixture.from_names([("mlp-1-40-40", "imagenet")]), "unknown task source 'imagenet'"),
    (lambda: TaskMixture.from_names([("conv4-16", "sinusoid")]),
     "architecture 'conv4-16' reads image inputs but task source 'sinusoid' gives scalar inputs"),
    (lambda: TaskMixture.from_names([("conv4-16",)]), "mixture pair ('conv4-16',) must be (architecture, task source)"),
    (lambda: TaskMixture.from_names([("mlp-1-40-40", "sinusoid", 0.0)]),
     "mixture component 'mlp-1-40-40 on sinusoid' needs a positive weight, got 0.0"),
    (lambda: component(weight=float("nan")), "needs a finite number weight, got nan"),
    (lambda: component(ways=2), "ways must be 1, got 2"),
    (lambda: component(shots=0), "needs an integer shots >= 1, got 0"),
    (lambda: TaskMixture([]), "needs at least one component, got none"),
    (lambda: TaskMixture([component(), component()]), "component 'c' is listed twice"),
    (lambda: TaskMixture([component()]).draw(torch.Generator(), episodes=0), "needs an integer episodes >= 1, got 0"),
])
def test_bad_input_is_one_line_naming_the_value(build, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        build()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("method, options, message", [
    ("meta_sgd", {}, "method lstm or l2o, got method 'meta_sgd'"),
    ("l2o", {"meta_steps": 0}, "needs an integer meta_steps >= 1, got 0"),
    ("l2o", {"first_step": -1}, "needs an integer first_step >= 0, got -1"),
    ("l2o", {"calls_per_draw": 0}, "needs an integer calls_per_draw >= 1, got 0"),
])
def test_bad_training_input_is_one_line_naming_the_value(glyphs, method, options, message):
    with pytest.raises(ValueError, match=message) as caught:
        meta_train_on_mixture(learned(method), tiny_mixture(glyphs), **{"meta_steps": 1, **options})
    assert "\n" not in str(caught.value)
