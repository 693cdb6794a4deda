"""ResNet-12 and WRN-28-10: shapes, sizes and heads; DropBlock; the per-step batch norm
(statistics per inner step, evaluation that does not depend on the query batch); their
task-file keys. The meta-gradients are checked in test_backbone_meta_gradients.py."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_metaopt import Episode, GradientMetaLearner, GradientMetaLearnerConfig
from fewshot_metaopt.models import (
    DropBlock,
    PerStepBatchNorm2d,
    Residual,
    conv4,
    inner_step,
    parameter_display_names,
    resnet12,
    scoring,
    wide_resnet,
    wrn28_10,
)
from fewshot_metaopt.runs.errors import RunError
from fewshot_metaopt.runs.model_registry import build_model
from fewshot_metaopt.runs.task_config import load_task
from learner_fixtures import classification_episodes

WIDTHS = (4, 6, 8, 10)


def tiny_resnet12(batch_norm="transductive", inner_steps=2, **kwargs) -> nn.Sequential:
    torch.manual_seed(0)
    return resnet12(3, widths=WIDTHS, batch_norm=batch_norm, inner_steps=inner_steps, **kwargs)


def episodes(n=2, ways=3, size=16, seed=0) -> list[Episode]:
    """Float32 episodes of random 3-channel images."""
    return [Episode(e.support_x.float(), e.support_y, e.query_x.float(), e.query_y, e.classes)
            for e in classification_episodes(n, (3, size, size), ways=ways, shots=2, queries=3, seed=seed)]


# ------------------------------------------------------------------------------ the networks


def test_resnet12_is_metaoptnets_at_84_pixels():
    torch.manual_seed(0)
    model = resnet12(5)
    assert sum(p.numel() for p in model.parameters()) == 12_427_525
    x = torch.randn(2, 3, 84, 84)
    sides = [model[:i + 1](x).shape[1:] for i in range(4)]
    assert sides == [(64, 42, 42), (160, 21, 21), (320, 10, 10), (640, 5, 5)]
    assert model(x).shape == (2, 5) and isinstance(model[-1], nn.Linear)
    assert not any(isinstance(m, DropBlock) for m in model.modules())  # off by default
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 16 and all(m.bias is None for m in convs)  # 12 3x3 + 4 shortcuts


def test_wrn28_10_is_zagoruyko_and_komodakis():
    model = wrn28_10(5)
    assert sum(p.numel() for p in model.parameters()) == 36_475_989
    assert isinstance(model[-1], nn.Linear) and model[-1].in_features == 640
    blocks = [m for m in model.modules() if isinstance(m, Residual)]
    assert len(blocks) == 12  # (28 - 4) / 6 = 4 blocks in each of three groups
    small = wide_resnet(4, depth=10, widths=WIDTHS)
    x = torch.randn(2, 3, 20, 20)
    assert small(x).shape == (2, 4) and small[:4](x).shape == (2, 10, 5, 5)  # strides 1, 2, 2


@pytest.mark.parametrize("make", [tiny_resnet12, lambda: wide_resnet(3, depth=10, widths=WIDTHS)])
def test_the_head_is_the_last_module_and_anil_adapts_it_alone(make):
    model = make()
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(algorithm="anil"))
    last = str(len(model) - 1)
    assert learner.adapted == [f"{last}.weight", f"{last}.bias"]
    names = parameter_display_names(model)
    assert names[f"{last}.weight"] == "head.weight" and len(set(names.values())) == len(names)


def test_readable_parameter_names():
    names = parameter_display_names(tiny_resnet12("per_step"))
    assert names["0.0.body.0.weight"] == "block1.residual.body.conv1.weight"
    assert names["3.0.body.7.bias"] == "block4.residual.body.bn3.bias"
    assert names["0.0.shortcut.1.weight"] == "block1.residual.shortcut.bn.weight"


@pytest.mark.parametrize("build, message", [
    (lambda: resnet12(0), "resnet12 needs an integer ways >= 1, got 0"),
    (lambda: resnet12(5, widths=(4, 6, 8)), "resnet12 needs four positive integer widths, got [4, 6, 8]"),
    (lambda: resnet12(5, drop_rate=1.0), "DropBlock needs drop_rate below 1 (1 drops everything), got 1.0"),
    (lambda: resnet12(5, dropblock_size=0), "resnet12 needs an integer dropblock_size >= 1, got 0"),
    (lambda: resnet12(5, batch_norm="batch"), "unknown batch_norm 'batch'; choose one of transductive, per_step"),
    (lambda: resnet12(5, batch_norm="per_step", inner_steps=0),
     "batch_norm 'per_step' needs an integer inner_steps >= 1, got 0"),
    (lambda: wide_resnet(5, depth=27), "wide_resnet needs depth = 6n + 4 (10, 16, 22, 28, ...), got 27"),
    (lambda: wide_resnet(5, widths=(1, 2)), "wide_resnet needs four positive integer widths, got [1, 2]"),
    (lambda: PerStepBatchNorm2d(4, 2, momentum=2.0), "PerStepBatchNorm2d needs momentum in [0.0, 1.0], got 2.0"),
    (lambda: PerStepBatchNorm2d(4, 2)(torch.zeros(3, 4)), "PerStepBatchNorm2d needs (N, C, H, W) inputs, got shape (3, 4)"),
])
def test_bad_arguments_are_one_line_errors(build, message):
    with pytest.raises(ValueError) as caught:
        build()
    assert str(caught.value) == message


def test_layers_say_what_they_keep_and_steps_are_counted_from_zero():
    text = repr(tiny_resnet12("per_step", drop_rate=0.1))
    assert "PerStepBatchNorm2d(4, inner_steps=2, eps=1e-05, momentum=0.1)" in text
    assert "DropBlock(drop_rate=0.1, block_size=5)" in text
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=f"inner_step needs an integer step >= 0, got {bad!r}"):
            with inner_step(bad):
                pass


# -------------------------------------------------------------------------------- DropBlock


def test_dropblock_sits_where_metaoptnet_puts_it():
    model = tiny_resnet12(drop_rate=0.1, dropblock_size=5)
    sizes = [m.block_size for m in model.modules() if isinstance(m, DropBlock)]
    assert sizes == [1, 1, 5, 5]  # dropout after blocks 1-2, DropBlock after blocks 3-4


def test_dropblock_drops_whole_blocks_at_the_rate_asked():
    drop = DropBlock(0.3, 3)
    x = torch.ones(8, 16, 20, 20)
    torch.manual_seed(0)
    y = drop(x)
    zero = y == 0
    assert abs(float(zero.float().mean()) - 0.3) < 0.05
    kept = y[~zero]
    assert torch.allclose(kept, kept[0].expand_as(kept)) and float(kept[0]) > 1  # rescaled, one factor
    # Every dropped pixel lies in a 3x3 square of dropped pixels.
    dropped_windows = (F.max_pool2d((~zero).float(), 3, stride=1) == 0).float()  # by top-left corner
    covered = F.max_pool2d(F.pad(dropped_windows, (2, 2, 2, 2)), 3, stride=1)
    assert bool((covered[zero] == 1).all())


def test_dropblock_is_seeded_by_torch_and_off_when_scoring():
    model = tiny_resnet12(drop_rate=0.2)
    x = torch.randn(4, 3, 16, 16)
    torch.manual_seed(5)
    a = model(x)
    torch.manual_seed(5)
    b = model(x)
    torch.manual_seed(6)
    c = model(x)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    plain = tiny_resnet12()
    with inner_step(0, evaluating=True):
        assert torch.equal(model(x), plain(x))
    model.eval(), plain.eval()
    assert torch.equal(model(x), plain(x))
    assert torch.equal(DropBlock(0.0, 3)(x), x)


def test_a_block_larger_than_the_map_is_the_map():
    torch.manual_seed(1)
    y = DropBlock(0.5, 7)(torch.ones(4, 32, 3, 3))
    per_channel = (y == 0).float().mean((2, 3))
    assert set(per_channel.unique().tolist()) == {0.0, 1.0}


# ---------------------------------------------------------------------- per-step batch norm


@pytest.mark.parametrize("engine", ["func", "higher"])
def test_each_inner_step_keeps_its_own_statistics(engine):
    """Three steps, meta-batch 2: support passes at steps 0, 1, 2 and the query pass after the
    last step (at step 2), per task."""
    torch.manual_seed(0)
    model = conv4(3, in_channels=3, hidden=4, image_size=16, batch_norm="per_step", inner_steps=3)
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(inner_steps=3, inner_lr=0.1, engine=engine))
    norms = [m for m in model.modules() if isinstance(m, PerStepBatchNorm2d)]
    assert len(norms) == 4 and norms[0].weight.shape == (3, 4)
    learner.meta_train_step(episodes())
    for norm in norms:
        assert norm.num_batches_tracked.tolist() == [2, 2, 4]
        assert not torch.equal(norm.running_mean[0], norm.running_mean[1])
    # Every row of the per-step weights moved under the outer step (each was used at its step).
    assert all(bool((norms[0].weight[k] != 1).any()) for k in range(3))


@pytest.mark.parametrize("engine", ["func", "higher"])
def test_an_inner_loop_without_a_graph_still_meta_trains_unless_it_scores(engine):
    """Reptile and iMAML meta-train through inner loops that keep no graph: those record
    statistics; only adapting to score (learner.adapt, evaluate) reads them instead."""
    model = tiny_resnet12("per_step")
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(inner_steps=2, inner_lr=0.1, engine=engine))
    norm = model[0][0].body[1]
    episode = episodes(1)[0]
    learner.inner_loop(episode, 2, "eval", task=0, per_step_query=False)
    assert norm.num_batches_tracked.tolist() == [1, 1]
    learner.adapt(episode)(episode.query_x)
    with scoring():
        learner.inner_loop(episode, 2, "eval", task=0, per_step_query=False)
    assert norm.num_batches_tracked.tolist() == [1, 1]


@pytest.mark.parametrize("engine", ["func", "higher"])
def test_evaluation_with_running_statistics_does_not_depend_on_the_query_batch(engine):
    eps = episodes(3)
    outputs = {}
    for batch_norm in ("per_step", "transductive"):
        model = tiny_resnet12(batch_norm)
        learner = GradientMetaLearner(model, GradientMetaLearnerConfig(inner_steps=2, inner_lr=0.1, engine=engine))
        learner.meta_train_step(eps[:2])
        before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
        fmodel = learner.adapt(eps[2])
        query = eps[2].query_x
        others = torch.randn(5, *query.shape[1:])
        alone = fmodel(query[:1])
        with_three = fmodel(query[:4])[:1]
        with_others = fmodel(torch.cat([query[:1], others]))[:1]
        outputs[batch_norm] = (alone, with_three, with_others)
        learner.evaluate(eps[2:])
        after = {k: v for k, v in model.state_dict().items() if "running" in k}
        assert all(torch.equal(before[k], after[k]) for k in before)  # scoring writes nothing
    alone, with_three, with_others = outputs["per_step"]
    torch.testing.assert_close(with_three, alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(with_others, alone, rtol=1e-5, atol=1e-6)
    # Transductive batch norm reads the batch, so the same example scores differently.
    alone, with_three, with_others = outputs["transductive"]
    assert not torch.allclose(with_others, alone, atol=1e-3)


def test_running_statistics_in_eval_mode_and_steps_past_the_last_row():
    norm = PerStepBatchNorm2d(2, inner_steps=2, momentum=0.5)
    x = torch.randn(8, 2, 3, 3) * 3 + 1
    with inner_step(1):
        train_out = norm(x)
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=1)
    torch.testing.assert_close(norm.running_mean[1], 0.5 * mean)
    torch.testing.assert_close(norm.running_var[1], 0.5 + 0.5 * var)
    assert norm.running_mean[0].abs().max() == 0 and norm.num_batches_tracked.tolist() == [0, 1]
    norm.eval()
    with inner_step(5):  # past the last row: the last row
        eval_out = norm(x)
    expected = (x - norm.running_mean[1].view(1, 2, 1, 1)) / torch.sqrt(norm.running_var[1].view(1, 2, 1, 1) + 1e-5)
    torch.testing.assert_close(eval_out, expected)
    assert not torch.allclose(train_out, eval_out)
    norm.reset_running_stats()
    assert norm.num_batches_tracked.sum() == 0 and norm.running_var.eq(1).all()


def test_statistics_follow_the_module_through_to_and_loading():
    model = tiny_resnet12("per_step").double()
    eps = classification_episodes(1, (3, 16, 16), ways=3, shots=2, queries=3)
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(inner_steps=2, inner_lr=0.1))
    learner.meta_train_step(eps)
    state = model.state_dict()
    assert state["0.0.body.1.running_mean"].dtype == torch.float64
    assert state["0.0.body.1.num_batches_tracked"].tolist() == [1, 2]
    fresh = tiny_resnet12("per_step").double()
    fresh.load_state_dict(state, assign=True)
    GradientMetaLearner(fresh, GradientMetaLearnerConfig(inner_steps=2, inner_lr=0.1)).meta_train_step(eps)
    assert fresh.state_dict()["0.0.body.1.num_batches_tracked"].tolist() == [2, 4]


def test_reduced_precision_is_normalised_in_float32():
    norm = PerStepBatchNorm2d(3, inner_steps=1)
    x = torch.randn(4, 3, 5, 5) * 10 + 100
    out = norm(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), PerStepBatchNorm2d(3, 1)(x.bfloat16().float()), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("model, message", [
    (lambda: tiny_resnet12("per_step"), "batch_norm 'per_step' writes its running statistics in place"),
    (lambda: tiny_resnet12(drop_rate=0.1), "DropBlock draws its masks from torch's generator"),
])
def test_what_vmap_cannot_run_is_refused_by_name(model, message):
    learner = GradientMetaLearner(model(), GradientMetaLearnerConfig(inner_steps=1, vmap_tasks=True))
    with pytest.raises(ValueError, match=message):
        learner.meta_train_step(episodes())


# ------------------------------------------------------------------------------ task files


def write(tmp_path, text: str):
    path = tmp_path / "t.toml"
    path.write_text(text + "[train]\niterations = 2\n")
    return path


@pytest.mark.parametrize("model, residuals, norm", [
    ("name = 'resnet12'\nbatch_norm = 'per_step'\ndrop_rate = 0.1\ndropblock_size = 3\n", 4, PerStepBatchNorm2d),
    ("name = 'wrn28_10'\n", 12, nn.BatchNorm2d),
    ("name = 'conv4'\nbatch_norm = 'per_step'\n", 0, PerStepBatchNorm2d),
])
def test_task_files_name_the_backbones_and_their_batch_norm(tmp_path, model, residuals, norm):
    task = load_task(write(tmp_path, f"[learner]\ninner_steps = 3\n[model]\n{model}"))
    network = build_model(task)
    assert sum(isinstance(m, Residual) for m in network.modules()) == residuals
    assert network[-1].out_features == task.ways
    first = next(m for m in network.modules() if isinstance(m, (nn.BatchNorm2d, PerStepBatchNorm2d)))
    assert isinstance(first, norm)
    if norm is PerStepBatchNorm2d:
        assert first.inner_steps == 3
    if residuals == 4:
        assert [m.block_size for m in network.modules() if isinstance(m, DropBlock)] == [1, 1, 3, 3]


@pytest.mark.parametrize("text, expected", [
    ("[model]\nname = 'resnet12'\nbatch_norm = 'per-step'\n",
     "{path}: unknown model.batch_norm 'per-step'; choose one of transductive, per_step; did you mean 'per_step'?"),
    ("[model]\nname = 'wrn28_10'\ndrop_rate = 0.1\n", "model.drop_rate in {path} does not apply to model.name 'wrn28_10'"),
    ("[model]\nname = 'resnet12'\ndrop_rate = 1.0\n", "{path}: model.drop_rate must be in [0, 1), got 1.0"),
    ("[model]\nname = 'resnet12'\nbatch_norm = 'per_step'\n[learner]\nvmap_tasks = true\n",
     "{path}: model.batch_norm = 'per_step' needs the task loop (learner.vmap_tasks = false)"),
    ("[model]\nname = 'resnet12'\ndrop_rate = 0.1\n[learner]\nvmap_tasks = true\n",
     "{path}: model.drop_rate = 0.1 needs the task loop (learner.vmap_tasks = false)"),
    ("[model]\nname = 'resnet12'\n[learner]\nalgorithm = 'warp_maml'\n",
     "learner.algorithm 'warp_maml' needs a model with warp layers: model.name 'warp_conv4', got 'resnet12'"),
    ("[model]\nname = 'wrn28_10'\n[data]\ndataset = 'sinusoid'\n",
     "model.name 'wrn28_10' does not fit data.dataset 'sinusoid' (a regression family); use 'mlp'"),
])
def test_bad_backbone_settings_are_one_line_errors(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(RunError) as caught:
        load_task(path)
    assert expected.format(path=path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_run_meta_trains_and_resumes_a_per_step_resnet12(tmp_path):
    from fewshot_metaopt.runs import resume, train

    text = ("[data]\nimage_size = 16\nnum_characters = 20\n[episodes]\nways = 3\nqueries = 2\n[model]\nname = 'resnet12'\n"
            "batch_norm = 'per_step'\n[learner]\ninner_steps = 2\ninner_lr = 0.1\n[validation]\nevery = 2\nepisodes = 2\n"
            "[evaluation]\nepisodes = 2\n[train]\niterations = 2\nmeta_batch = 1\ncheckpoint_every = 1\n")
    path = tmp_path / "t.toml"
    path.write_text(text)
    run = train(load_task(path), tmp_path / "run")
    assert run.status == "finished" and run.iterations == 2
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    tracked = [v for k, v in saved["learner"]["model"].items() if k.endswith("num_batches_tracked")]
    assert tracked and all(t.tolist() == [2, 4] for t in tracked)
    again = resume(tmp_path / "run")
    assert again.result.mean == run.result.mean


def test_the_cost_benchmark_prints_every_configuration_asked_for(tmp_path):
    from script_runner import run_script

    configs = ["5 steps, second order, vmapped"]
    out = run_script("benchmarks/backbone_cost.py", "--threads", "1", "--iterations", "1", "--warmup", "0",
                     "--widths", "4", "6", "8", "10", "--image-size", "16", "--queries", "2", "--meta-batch", "2",
                     "--configs", *configs, "--json", str(tmp_path / "rows.json"))
    assert "| 5 steps, second order, vmapped (chunks of 2) | " in out
    assert "Estimate (not measured) for a 24 GiB GPU" in out
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["config"] for r in rows] == configs and all(r["cpu_s"] > 0 and r["peak_gib"] > 0 for r in rows)
    again = run_script("benchmarks/backbone_cost.py", "--rows-from", str(tmp_path / "rows.json"), "--meta-batch", "2")
    assert [line for line in again.splitlines() if line.startswith("| ")] == [
        line for line in out.splitlines() if line.startswith("| ")]
    assert "Estimate (not measured) for a 24 GiB GPU" in again
