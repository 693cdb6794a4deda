"""Mixed precision: autocast is engaged where it should be and nowhere else, the estimated
meta-gradients stay within their stated tolerance of float32, fp16's loss scaling, and the
refusals. (Speed and accuracy are measured in benchmarks/precision.py, not here.)"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_metaopt import GradientMetaLearner, GradientMetaLearnerConfig, MetaOptimizer, MetaOptimizerConfig
from fewshot_metaopt.datasets import Glyphs
from fewshot_metaopt.engines import functional_model, precision as precision_module
from fewshot_metaopt.engines.precision import resolve_precision
from fewshot_metaopt.episodes import TaskDistributionSampler
from fewshot_metaopt.models import conv4
from fewshot_metaopt.warp import warp_conv4

# The stated tolerance of a bf16 meta-gradient: its cosine to the float32 one, for conv4-64 and
# one inner step (MAML's Omniglot setting; measured 0.986 on real Omniglot, 8 tasks). bf16 keeps
# 8 bits of mantissa and the error grows with the inner steps differentiated through (0.93 at
# two): benchmarks/precision.py measures each setting.
BF16_COSINE = 0.95


class Spy(nn.Module):
    """Records the dtype of what flows through it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.dtype] = []

    def forward(self, x):
        self.seen.append(x.dtype)
        return x


def spied_mlp():
    torch.manual_seed(0)
    spy = Spy()
    return nn.Sequential(nn.Linear(3, 8), spy, nn.ReLU(), nn.Linear(8, 2)), spy


def float_episodes(n, shape=(3,), ways=2):
    g = torch.Generator().manual_seed(0)
    from fewshot_metaopt import Episode
    return [Episode(torch.randn(ways * 2, *shape, generator=g), torch.arange(ways).repeat_interleave(2),
                    torch.randn(ways * 3, *shape, generator=g), torch.arange(ways).repeat_interleave(3),
                    torch.arange(ways)) for _ in range(n)]


@pytest.mark.parametrize("settings", [dict(engine="func"), dict(engine="higher"), dict(engine="func", vmap_tasks=True),
                                      dict(engine="func", algorithm="meta_sgd")])
def test_bf16_runs_the_forward_under_autocast_and_nothing_else(settings):
    model, spy = spied_mlp()
    config = GradientMetaLearnerConfig(inner_lr=0.1, inner_steps=2, precision="bf16", **settings)
    learner = GradientMetaLearner(model, config)
    result = learner.meta_train_step(float_episodes(2))
    assert spy.seen and set(spy.seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 and p.grad is None or p.grad.dtype == torch.float32
               for p in learner.meta_parameters)
    assert all(p.dtype == torch.float32 for p in learner.rule.parameters())
    assert isinstance(result.loss, float)
    spy.seen.clear()
    assert learner.evaluate(float_episodes(1)).mean >= 0 and set(spy.seen) == {torch.bfloat16}


def test_fp32_engages_no_autocast():
    model, spy = spied_mlp()
    GradientMetaLearner(model, GradientMetaLearnerConfig(inner_lr=0.1)).meta_train_step(float_episodes(1))
    assert set(spy.seen) == {torch.float32}


def test_batch_norm_statistics_stay_float32_and_the_rule_runs_outside_autocast(monkeypatch):
    seen = []
    real = functional_model.F.batch_norm

    def spy(x, *args, **kwargs):
        seen.append(x.dtype)
        return real(x, *args, **kwargs)

    monkeypatch.setattr(functional_model.F, "batch_norm", spy)
    torch.manual_seed(0)
    model = conv4(2, hidden=4, image_size=16)
    mo = MetaOptimizer(model, MetaOptimizerConfig(method="lstm", lstm_variant="scalable"))
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(inner_lr=0.1, precision="bf16"), inner_optimizer=mo)
    learner.meta_train_step(float_episodes(1, (1, 16, 16)))
    assert seen and set(seen) == {torch.float32}
    states = [t for t in torch.utils._pytree.tree_leaves(learner.engine.rule.init(
        {n: p for n, p in model.named_parameters()})) if isinstance(t, torch.Tensor)]
    assert all(t.dtype == torch.float32 for t in states)


def glyph_episodes(n=4, ways=5):
    source = Glyphs("train", num_characters=40, samples_per_class=6, image_size=28)
    return TaskDistributionSampler(source, ways=ways, shots=1, queries=3, seed=0).sample_batch(n)


def meta_gradient(learner, episodes):
    learner.meta_optimizer.zero_grad(set_to_none=True)
    learner.accumulate_meta_gradient(episodes)
    return torch.cat([p.grad.reshape(-1) for p in learner.meta_parameters if p.grad is not None])


def cosine(a, b):
    return float(F.cosine_similarity(a, b, dim=0))


@pytest.mark.parametrize("settings", [dict(algorithm="maml"), dict(algorithm="meta_sgd"),
                                      dict(algorithm="maml", engine="higher"), dict(algorithm="maml", vmap_tasks=True),
                                      dict(algorithm="warp_maml")])
def test_a_bf16_meta_gradient_is_within_its_tolerance_of_float32(settings):
    episodes = glyph_episodes()
    torch.manual_seed(0)
    warped = settings["algorithm"].startswith("warp")
    model = warp_conv4(5, hidden=64) if warped else conv4(5, hidden=64)
    grads = {}
    for precision in ("fp32", "bf16"):
        config = GradientMetaLearnerConfig(inner_lr=0.4, inner_steps=1, precision=precision, **settings)
        grads[precision] = meta_gradient(GradientMetaLearner(copy.deepcopy(model), config), episodes)
    assert cosine(grads["fp32"], grads["bf16"]) > BF16_COSINE
    assert not torch.equal(grads["fp32"], grads["bf16"])  # bf16 really ran


def test_a_bf16_truncated_bptt_meta_gradient_is_within_its_tolerance_of_float32():
    episodes = glyph_episodes(2)
    torch.manual_seed(0)
    model = conv4(5, hidden=64)
    grads = {}
    for precision in ("fp32", "bf16"):
        mo = MetaOptimizer(copy.deepcopy(model), MetaOptimizerConfig(method="meta_sgd", inner_steps=1, unroll_steps=1,
                                                                     inner_lr=0.1, precision=precision))
        start = {n: p.detach() for n, p in mo.base_model.named_parameters()}
        mo.tbptt.unroll(mo.base_model, episodes[0], dict(start), mo.rule.init(start), 0, 1, 0)[2].backward()
        grads[precision] = torch.cat([p.grad.reshape(-1) for p in mo.rule.parameters()])
    assert cosine(grads["fp32"], grads["bf16"]) > BF16_COSINE


@pytest.fixture
def fp16_on_cpu(monkeypatch):
    """fp16 is refused on the CPU (no fast kernels), but its loss scaling is device-neutral:
    CPU autocast computes float16 and torch's GradScaler runs on the CPU, so the path is tested
    here with the refusal lifted."""
    real = resolve_precision

    def lifted(name, device):
        return precision_module.PRECISIONS[name] if name == "fp16" else real(name, device)

    for module in ("fewshot_metaopt.learners.gradient_meta_learner", "fewshot_metaopt.meta_training.tbptt",
                   "fewshot_metaopt.meta_training.warp_trainer"):
        monkeypatch.setattr(f"{module}.resolve_precision", lifted)


@pytest.mark.parametrize("settings", [dict(engine="func"), dict(engine="higher"), dict(vmap_tasks=True),
                                      dict(algorithm="warp_maml")])
def test_fp16_scales_inner_and_outer_losses_and_matches_float32(fp16_on_cpu, settings):
    episodes = glyph_episodes()
    torch.manual_seed(0)
    model = warp_conv4(5, hidden=64) if settings.get("algorithm") == "warp_maml" else conv4(5, hidden=64)
    grads = {}
    for precision in ("fp32", "fp16"):
        learner = GradientMetaLearner(copy.deepcopy(model), GradientMetaLearnerConfig(
            inner_lr=0.4, inner_steps=1, precision=precision, **settings))
        if precision == "fp16":
            # A scale float16 does not overflow at here (the default 65536 would, and its first
            # steps would be skipped: test_fp16_training_finds_a_scale_and_steps).
            learner.scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
        grads[precision] = meta_gradient(learner, episodes)
        if precision == "fp16":
            assert learner.engine.loss_scale == 256.0
            # The accumulated gradients are scaled; unscaled they are the meta-gradient.
            grads[precision] = grads[precision] / learner.loss_scale
    assert cosine(grads["fp32"], grads["fp16"]) > BF16_COSINE


def test_fp16_training_finds_a_scale_and_steps(fp16_on_cpu):
    torch.manual_seed(0)
    model = conv4(5, hidden=16)
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(inner_lr=0.4, precision="fp16"))
    before = [p.detach().clone() for p in model.parameters()]
    episodes = glyph_episodes(2)
    results = [learner.meta_train_step(episodes) for _ in range(12)]
    assert learner.iteration == 12
    assert any(r.grad_norm == r.grad_norm for r in results)  # some step was taken ...
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))  # ... and moved the weights


def test_fp16_skips_an_overflowing_step_and_lowers_its_scale(fp16_on_cpu):
    torch.manual_seed(0)
    model = conv4(5, hidden=8)
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(inner_lr=0.4, precision="fp16"))
    episodes = glyph_episodes(2)
    learner.meta_train_step(episodes)  # a normal step: the weights move
    before = [p.detach().clone() for p in model.parameters()]
    learner.scaler.update(new_scale=1e38)  # float16 overflows at this scale
    result = learner.meta_train_step(episodes)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # skipped, not raised
    assert learner.loss_scale < 1e38 and result.grad_norm != result.grad_norm  # NaN: no step


def test_fp16_overflowing_on_the_very_first_step_lowers_the_scale_it_had_not_made_yet(fp16_on_cpu):
    """Every task of the first meta-step overflows before any scaled backward: the scaler has
    no scale tensor yet, and the step is skipped with the scale lowered, not an AssertionError."""
    torch.manual_seed(0)
    model = conv4(5, hidden=8)
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(inner_lr=0.4, precision="fp16"))
    learner.scaler = torch.amp.GradScaler("cpu", init_scale=1e38)  # float16 overflows at this scale
    before = [p.detach().clone() for p in model.parameters()]
    result = learner.meta_train_step(glyph_episodes(2))
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert learner.loss_scale == pytest.approx(0.5e38) and result.grad_norm != result.grad_norm
    assert precision_module.lower_scale_after_overflow(None) is False


def test_fp16_truncated_bptt_and_warp_grad_train(fp16_on_cpu):
    episodes = glyph_episodes(2)
    torch.manual_seed(0)
    mo = MetaOptimizer(conv4(5, hidden=8), MetaOptimizerConfig(method="meta_sgd", inner_steps=2, unroll_steps=2,
                                                               precision="fp16"))
    before = [p.detach().clone() for p in mo.rule.parameters()]
    assert mo.meta_train_step(episodes).windows == 1
    assert any(not torch.equal(a, p) for a, p in zip(before, mo.rule.parameters()))
    warp = MetaOptimizer(warp_conv4(5, hidden=8), MetaOptimizerConfig(method="warp_grad", inner_steps=2, warp_points=2,
                                                                      precision="fp16"))
    assert warp.meta_train_step(episodes).windows == 1


def test_what_cannot_work_is_refused_in_one_line():
    with pytest.raises(ValueError, match="precision 'fp16' needs a CUDA device"):
        GradientMetaLearner(conv4(5, hidden=4), GradientMetaLearnerConfig(precision="fp16"))
    with pytest.raises(ValueError, match="precision 'fp16' needs a CUDA device"):
        MetaOptimizer(conv4(5, hidden=4), MetaOptimizerConfig(precision="fp16"))
    with pytest.raises(ValueError, match="unknown precision 'fp8'; choose one of fp32, bf16, fp16"):
        GradientMetaLearnerConfig(precision="fp8")


def test_bf16_on_a_cpu_without_native_bf16_warns_once(monkeypatch):
    monkeypatch.setattr(precision_module, "native_cpu_bf16", lambda: False)
    monkeypatch.setattr(precision_module, "_warned_slow_bf16", False)
    with pytest.warns(UserWarning, match="this CPU has no native bf16 .* use precision 'fp32' here"):
        resolve_precision("bf16", "cpu")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_precision("bf16", "cpu")  # once per process
    monkeypatch.setattr(precision_module, "native_cpu_bf16", lambda: True)
    monkeypatch.setattr(precision_module, "_warned_slow_bf16", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_precision("bf16", "cpu")


def test_task_files_choose_the_precision(tmp_path, capsys):
    import json

    from fewshot_metaopt.cli import main
    from test_cli import write_task

    task = write_task(tmp_path)
    assert main(["train", str(task), "--out", str(tmp_path / "fp16"), "--set", "learner.precision=fp16"]) == 1
    assert "precision 'fp16' needs a CUDA device" in capsys.readouterr().err and not (tmp_path / "fp16").exists()
    assert main(["train", str(task), "--out", str(tmp_path / "bf16"), "--set", "learner.precision=bf16"]) == 0
    assert 'precision = "bf16"' in (tmp_path / "bf16/config.toml").read_text()
    assert json.loads((tmp_path / "bf16/results.json").read_text())["episodes"] == 4


@pytest.mark.parametrize("method, extra", [("lstm", {"lstm_variant": "faithful"}), ("lstm", {"lstm_variant": "scalable"}),
                                           ("l2o", {}), ("meta_sgd", {})])
def test_every_learned_rule_trains_under_bf16_in_float32(method, extra):
    model, spy = spied_mlp()
    rule = MetaOptimizer(model, MetaOptimizerConfig(method=method, **extra))
    learner = GradientMetaLearner(model, GradientMetaLearnerConfig(inner_lr=0.1, inner_steps=2, precision="bf16"),
                                  inner_optimizer=rule)
    before = [p.detach().clone() for p in rule.parameters()]
    learner.meta_train_step(float_episodes(2))
    assert set(spy.seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in rule.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, rule.parameters()))
