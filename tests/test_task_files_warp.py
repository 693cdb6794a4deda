"""Warp-Grad in task files: the warped models and the Warp-Grad algorithms, their keys, the
combinations that cannot work, and the two Warp-Grad task files in tasks/."""

from pathlib import Path

import pytest
import torch
from torch import nn

from fewshot_metaopt.runs.components import build_model
from fewshot_metaopt.runs.errors import RunError
from fewshot_metaopt.runs.task_config import load_task
from fewshot_metaopt.warp import WarpedModel

TASKS = Path(__file__).resolve().parents[1] / "tasks"
WARP_CONV = "[model]\nname = 'warp_conv4'\nchannels = 4\n[learner]\nalgorithm = 'warp_maml'\n[train]\niterations = 3\n"
SINE = "[data]\ndataset = 'sinusoid'\n[train]\niterations = 3\n"


def error(tmp_path, text: str, overrides=()) -> str:
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(RunError) as caught:
        load_task(path, overrides)
    message = str(caught.value)
    assert "\n" not in message
    return message.replace(str(path), "{path}")


@pytest.mark.parametrize("name, sibling, algorithm, points, buffer", [
    ("omniglot-5w1s-warp-maml", "omniglot-5w1s", "warp_maml", 32, 32),
    ("omniglot-20w1s-warp-leap", "omniglot-20w1s", "warp_leap", 16, 80),
])
def test_warp_task_files_are_their_maml_task_with_a_warped_conv4(name, sibling, algorithm, points, buffer):
    task, maml = load_task(TASKS / f"{name}.toml"), load_task(TASKS / f"{sibling}.toml")
    assert (task.model.name, task.model.channels, task.learner.algorithm) == ("warp_conv4", 64, algorithm)
    assert (task.learner.warp_points, task.learner.warp_buffer_size) == (points, buffer)
    # The buffer holds exactly the points one meta-batch visits, as the header says.
    assert buffer == task.train.meta_batch * task.learner.inner_steps
    warp, plain = task.to_dict(), maml.to_dict()
    for values in (warp, plain):
        del values["name"], values["description"], values["model"]["name"], values["learner"]["algorithm"]
    del warp["learner"]["warp_points"], warp["learner"]["warp_buffer_size"]
    assert warp == plain
    header = (TASKS / f"{name}.toml").read_text().split("\nname = ")[0]
    assert "Flennerhag et al. 2020" in header and f"fewshot-metaopt train tasks/{name}.toml" in header
    assert "Flennerhag et al. 2020" in task.description


def test_warp_models_take_their_width_and_warp_options(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(WARP_CONV)
    model = build_model(load_task(path, ["model.warp_batch_norm=true", "model.warp_activation=true",
                                         "model.warp_residual=true", "model.warp_init=default"]))
    assert isinstance(model, WarpedModel) and len(model.warp_layers()) == 4
    for warp in model.warp_layers():
        assert warp.transform.out_channels == 4 and warp.residual
        assert isinstance(warp.norm, nn.BatchNorm2d) and isinstance(warp.activation, nn.ReLU)
        assert warp.transform.weight.abs().sum() > 0  # PyTorch's init, not the residual's zeros
    identity = build_model(load_task(path)).warp_layers()[0].transform.weight
    assert torch.equal(identity, nn.init.dirac_(torch.empty_like(identity)))

    path.write_text(SINE + "[model]\nname = 'warp_mlp'\nhidden_layers = [8, 6]\n[learner]\nalgorithm = 'warp_leap'\n")
    model = build_model(load_task(path))
    assert [w.features for w in model.warp_layers()] == [8, 6]
    assert not set(model.adapted_parameter_names()) & set(model.warp_parameter_names())
    assert model(torch.zeros(5, 1)).shape == (5, 1)


@pytest.mark.parametrize("text, overrides, expected", [
    ("[learner]\nalgorithm = 'warp_maml'\n[train]\niterations = 3\n", (),
     "{path}: learner.algorithm 'warp_maml' needs a model with warp layers: model.name 'warp_conv4', got 'conv4'"),
    (SINE + "[model]\nname = 'mlp'\n", ["learner.algorithm=warp_leap"],
     "--set learner.algorithm=warp_leap and {path}: learner.algorithm 'warp_leap' needs a model with warp layers: "
     "model.name 'warp_mlp', got 'mlp'"),
    (WARP_CONV, ["learner.algorithm=anil"],
     "--set learner.algorithm=anil and {path}: model.name 'warp_conv4' is meta-learned by learner.algorithm "
     "'warp_maml' or 'warp_leap', got 'anil'; with 'anil' use model.name 'conv4'"),
    (WARP_CONV, ["inner_optimizer.method=lstm"],
     "--set inner_optimizer.method=lstm and {path}: learner.algorithm 'warp_maml' runs gradient descent in the "
     "inner loop, so inner_optimizer.method must be 'sgd', got 'lstm'"),
    (WARP_CONV, ["data.dataset=sinusoid"],
     "{path}: model.name 'warp_conv4' does not fit data.dataset 'sinusoid' (a regression family); use 'mlp' "
     "(or 'warp_mlp' for Warp-Grad)"),
    (WARP_CONV, ["model.name=warp_mlp"],
     "model.channels in {path} does not apply to model.name 'warp_mlp'"),
    (WARP_CONV, ["model.warp_init=zeros"],
     "--set model.warp_init=zeros: unknown model.warp_init 'zeros'; choose one of identity, default"),
    (WARP_CONV, ["model.warp_residual=1"], "model.warp_residual in --set model.warp_residual=1 must be true or false"),
    ("[model]\nwarp_residual = true\n[train]\niterations = 3\n", (),
     "model.warp_residual in {path} does not apply to model.name 'conv4'"),
    ("[learner]\nwarp_points = 4\n[train]\niterations = 3\n", (),
     "learner.warp_points in {path} does not apply to learner.algorithm 'maml' (only to 'warp_maml' and 'warp_leap')"),
    (WARP_CONV, ["learner.warp_buffer_size=0"],
     "--set learner.warp_buffer_size=0 and {path}: [learner] warp_buffer_size must be >= 1, got 0"),
    (WARP_CONV, ["learner.algorithm=warp_leap", "learner.multi_step_loss=true"],
     "[learner] warp_leap does not differentiate the inner loop"),
])
def test_bad_warp_settings_are_one_line_errors_naming_keys_and_file(tmp_path, text, overrides, expected):
    assert expected in error(tmp_path, text, overrides)


def test_warp_grad_as_inner_optimizer_points_to_the_warp_algorithms(tmp_path):
    message = error(tmp_path, WARP_CONV, ["inner_optimizer.method=warp_grad"])
    assert message == (
        "--set inner_optimizer.method=warp_grad: inner_optimizer.method 'warp_grad' meta-trains warp layers alone; "
        'a run meta-learns a warped model with learner.algorithm = "warp_maml" or "warp_leap", model.name = '
        '"warp_conv4" or "warp_mlp" and inner_optimizer.method = "sgd"')


def test_warp_keys_are_written_only_where_they_apply(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(WARP_CONV)
    values = load_task(path, ["model.warp_residual=true"]).to_dict()
    assert values["model"] == {"name": "warp_conv4", "channels": 4, "warp_residual": True}
    assert (values["learner"]["warp_points"], values["learner"]["warp_buffer_size"]) == (16, 100)
    plain = load_task(path, ["model.name=conv4", "learner.algorithm=maml"]).to_dict()["learner"]
    assert "warp_points" not in plain and "warp_buffer_size" not in plain
