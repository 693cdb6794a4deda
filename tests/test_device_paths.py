"""The paths that run on an accelerator, checked on a CPU-only machine: checkpoints whose RNG
states arrive on another device than the CPU, CUDA RNG states in checkpoints, a MetaOptimizer's
rule following its model, meta-batches moved in one transfer, and ``--device`` checked before
anything is built.

How a GPU is stood in for: a tensor on the ``meta`` device is refused by
``Generator.set_state``, ``torch.set_rng_state`` and ``Tensor.numpy`` exactly as a CUDA tensor
is ("RNG state must be a torch.ByteTensor", "can't convert meta device type tensor to numpy"),
so code that hands over a state where ``map_location`` put it fails here as it fails on a GPU.
Loading a whole checkpoint with ``map_location="meta"`` would not do: the weights would be meta
too and no model can copy from a tensor without data. So only the RNG states are moved, each to
a meta twin whose ``cpu()`` gives back the real state: passing means the code asked for a CPU
copy, the one thing that works on a GPU too.
"""

import random

import numpy as np
import pytest
import torch
from torch import nn

from fewshot_metaopt import GradientMetaLearner, GradientMetaLearnerConfig, MetaOptimizer, MetaOptimizerConfig
from fewshot_metaopt.cli import main
from fewshot_metaopt.cli.main import one_line
from fewshot_metaopt.episodes import Episode
from fewshot_metaopt.episodes import episode as episode_module
from fewshot_metaopt.episodes.episode import episodes_to
from fewshot_metaopt.runs import rng_state
from fewshot_metaopt.runs import trainer as trainer_module
from fewshot_metaopt.runs.checkpoint import load_checkpoint, save_checkpoint
from fewshot_metaopt.runs.errors import RunError
from fewshot_metaopt.runs.run_dir import RunDir
from fewshot_metaopt.runs.trainer import Trainer
from fewshot_metaopt.warp import ReplayBuffer, TrajectoryPoint, warp_mlp
from learner_fixtures import classification_episodes
from test_cli import write_task


def elsewhere(state: torch.Tensor) -> torch.Tensor:
    """``state`` as it would arrive from ``map_location="cuda"``: on a device whose tensors
    generators refuse, with its data reachable only through ``cpu()`` (see the module docstring)."""
    twin = state.to("meta")
    twin.cpu = lambda: state.clone()
    return twin


def rng_elsewhere(rng: dict) -> dict:
    return {**rng, "numpy": {**rng["numpy"], "key": elsewhere(rng["numpy"]["key"])},
            "torch": elsewhere(rng["torch"]), "cuda": [elsewhere(s) for s in rng.get("cuda", [])]}


def draws() -> tuple:
    return random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(3)


# ----------------------------------------------------------------------- RNG states


def test_the_stand_in_device_is_refused_like_a_gpu_unless_copied_to_the_cpu():
    twin = elsewhere(torch.get_rng_state())
    with pytest.raises(TypeError, match="must be a torch.ByteTensor"):
        torch.set_rng_state(twin)
    with pytest.raises(TypeError, match="must be a torch.ByteTensor"):
        torch.Generator().set_state(twin)
    torch.Generator().set_state(twin.cpu())


def test_global_rng_states_restore_from_whatever_device_they_arrive_on():
    rng_state.seed_everything(21)
    draws()
    saved = rng_state.capture()
    expected = draws()
    rng_state.seed_everything(22)
    rng_state.restore(rng_elsewhere(saved))
    again = draws()
    assert expected[:3] == again[:3] and torch.equal(expected[3], again[3])


def test_without_cuda_the_checkpoint_holds_no_cuda_states_and_drops_those_it_brings(tmp_path, monkeypatch):
    assert rng_state.capture()["cuda"] == []
    called = []
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: called.append(states))
    from_a_gpu_machine = {**rng_state.capture(), "cuda": [torch.zeros(16, dtype=torch.uint8)]}
    save_checkpoint(tmp_path / "c.pt", {**payload(), "rng": from_a_gpu_machine})
    rng_state.restore(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert called == []


class FakeCuda:
    """Two GPUs' RNG states, as torch.cuda would report and take them."""

    def __init__(self, monkeypatch, count: int = 2) -> None:
        self.states = [torch.full((16,), i + 1, dtype=torch.uint8) for i in range(count)]
        self.set: list[list[torch.Tensor]] = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self.take)

    def take(self, states) -> None:
        assert all(s.device.type == "cpu" and s.dtype == torch.uint8 for s in states)
        self.set.append([s.clone() for s in states])


def payload() -> dict:
    return {"iteration": 0, "task": {"data": {}}, "learner": {"model": {}, "rule": {}, "meta_optimizer": {},
                                                               "iteration": 0},
            "meta_schedule": None, "rng": rng_state.capture(), "samplers": {"train": {}},
            "progress": {"iteration": 0, "elapsed_s": 0.0, "best_value": None, "best_iteration": None,
                         "metrics_bytes": 0, "window": {}}}


def test_with_cuda_every_gpus_state_is_saved_and_restored_through_the_cpu(tmp_path, monkeypatch):
    cuda = FakeCuda(monkeypatch)
    save_checkpoint(tmp_path / "c.pt", payload())
    rng = load_checkpoint(tmp_path / "c.pt")["rng"]
    assert [s.tolist() for s in rng["cuda"]] == [s.tolist() for s in cuda.states]
    rng_state.restore(rng_elsewhere(rng))
    assert [[s.tolist() for s in call] for call in cuda.set] == [[s.tolist() for s in cuda.states]]


def test_a_process_that_never_used_its_gpus_saves_no_cuda_states(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert rng_state.capture()["cuda"] == []
    rng_state.restore(rng_state.capture())
    assert cuda.set == []


def test_a_checkpoint_moves_between_gpu_counts_and_from_cpu_machines(monkeypatch):
    three = {**rng_state.capture(), "cuda": [torch.full((16,), 7 + i, dtype=torch.uint8) for i in range(3)]}
    cuda = FakeCuda(monkeypatch, count=2)
    rng_state.restore(three)
    assert [s[0].item() for s in cuda.set[0]] == [7, 8]  # the third GPU's state has no GPU here
    older = {k: v for k, v in rng_state.capture().items() if k != "cuda"}
    rng_state.restore(older)
    rng_state.restore({**older, "cuda": []})
    assert len(cuda.set) == 1  # the GPUs keep their seeded states


def test_a_run_resumes_when_its_generator_states_arrive_off_the_cpu(tmp_path, monkeypatch):
    assert main(["train", str(write_task(tmp_path)), "--out", str(tmp_path / "run")]) == 0
    run = RunDir.open(tmp_path / "run")
    real = trainer_module.load_checkpoint

    def on_another_device(path, map_location="cpu"):
        state = real(path, map_location=map_location)
        sampler = state["samplers"]["train"]
        return {**state, "rng": rng_elsewhere(state["rng"]),
                "samplers": {"train": {**sampler, "generator": elsewhere(sampler["generator"])}}}

    monkeypatch.setattr(trainer_module, "load_checkpoint", on_another_device)
    saved = real(run.last_checkpoint)
    trainer = Trainer(run.task())
    trainer.resume(run)
    assert trainer.progress.iteration == saved["iteration"]
    assert torch.equal(trainer.sampler.generator.get_state(), saved["samplers"]["train"]["generator"])
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])


# ----------------------------------------------------------------------- Warp-Grad's replay buffer


def test_the_replay_buffers_generator_restores_from_another_device():
    episode = classification_episodes(1, (3,))[0]
    buffer = ReplayBuffer(size=4, seed=3)
    for k in range(4):
        buffer.add(TrajectoryPoint({"w": torch.full((2,), float(k))}, None, k, episode))
    state = buffer.state_dict()
    copy = ReplayBuffer(size=4)
    copy.load_state_dict({**state, "generator": elsewhere(state["generator"])})
    assert [p.step for p in copy.sample(4)] == [p.step for p in buffer.sample(4)]


def test_a_warped_learner_loads_a_checkpoint_whose_buffer_generator_is_off_the_cpu():
    def learner() -> GradientMetaLearner:
        torch.manual_seed(0)
        config = GradientMetaLearnerConfig(algorithm="warp_maml", inner_lr=0.3, warp_points=2, warp_buffer_size=4)
        return GradientMetaLearner(warp_mlp(3, 2, hidden=(4,)).double(), config)

    trained = learner()
    trained.meta_train_step(classification_episodes(2, (3,)))
    state = trained.state_dict()
    buffer = state["warp"]["buffer"]
    moved = {**state, "warp": {**state["warp"], "buffer": {**buffer, "generator": elsewhere(buffer["generator"])}}}
    resumed = learner()
    resumed.load_state_dict(moved)
    assert torch.equal(resumed.warp.buffer.generator.get_state(), trained.warp.buffer.generator.get_state())


# ----------------------------------------------------------------------- MetaOptimizer


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


@pytest.mark.parametrize("method", ["meta_sgd", "lstm", "l2o", "warp_grad"])
@pytest.mark.parametrize("device, dtype", [("meta", torch.float32), ("cpu", torch.float64)])
def test_a_meta_optimizers_rule_and_its_optimizer_follow_the_model(method, device, dtype):
    model = warp_mlp(3, 2, hidden=(4,)) if method == "warp_grad" else net()
    model = model.to(device=device, dtype=dtype)
    mo = MetaOptimizer(model, MetaOptimizerConfig(method=method))
    tensors = [*mo.rule.parameters(), *mo.rule.buffers()]
    assert tensors and all(t.device.type == device for t in tensors)
    assert all(t.dtype == dtype for t in tensors if t.is_floating_point())
    optimized = [p for group in mo.meta_optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in optimized} == {id(p) for p in mo.rule.parameters()}


# ----------------------------------------------------------------------- moving meta-batches


def regression_episodes(n: int, shots: int = 4) -> list[Episode]:
    g = torch.Generator().manual_seed(1)
    return [Episode(torch.randn(shots, 1, generator=g), torch.randn(shots, 1, generator=g),
                    torch.randn(shots, 1, generator=g), torch.randn(shots, 1, generator=g),
                    task_params=torch.rand(2, generator=g)) for _ in range(n)]


def assert_same_episodes(a: list[Episode], b: list[Episode]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for name in ("support_x", "support_y", "query_x", "query_y", "classes", "task_params"):
            u, v = getattr(x, name), getattr(y, name)
            assert (u is None and v is None) or (u.dtype == v.dtype and torch.equal(u, v)), name


def test_episodes_already_on_the_device_come_back_as_they_are():
    episodes = classification_episodes(3, (2, 2))
    for device in ("cpu", torch.device("cpu"), "cpu:0"):
        moved = episodes_to(episodes, device)
        assert all(a is b for a, b in zip(moved, episodes)) and len(moved) == 3
    assert episodes_to([], "cpu") == []


def test_a_same_shaped_meta_batch_moves_as_one_stacked_tensor_per_field():
    episodes = classification_episodes(3, (2, 2))
    moved = episodes_to(episodes, "meta")
    assert all(ep.support_x.device.type == "meta" for ep in moved)
    base = moved[0].support_x._base
    assert base is not None and base.shape == (3, *episodes[0].support_x.shape)
    assert all(ep.support_x._base is base for ep in moved)
    for a, b in zip(moved, episodes):
        for name in ("support_x", "support_y", "query_x", "query_y", "classes"):
            assert (getattr(a, name).shape, getattr(a, name).dtype) == (getattr(b, name).shape, getattr(b, name).dtype)
        assert a.task_params is None


def test_a_forced_move_keeps_every_value_dtype_and_task_parameter(monkeypatch):
    # On a CPU-only machine the one device holding data is the CPU, where nothing needs to
    # move; treating every tensor as elsewhere sends them through the transfer, whose values
    # can then be compared.
    monkeypatch.setattr(episode_module, "_holds", lambda tensor, device: False)
    for episodes in (classification_episodes(3, (2, 2)), regression_episodes(3)):
        moved = episodes_to(episodes, "cpu")
        assert all(a is not b for a, b in zip(moved, episodes))
        assert_same_episodes(moved, episodes)
        assert moved[0].support_x._base is moved[1].support_x._base is not None


@pytest.mark.parametrize("odd", ["shape", "dtype", "task_params"])
def test_episodes_that_cannot_be_stacked_move_one_by_one(odd, monkeypatch):
    monkeypatch.setattr(episode_module, "_holds", lambda tensor, device: False)
    episodes = regression_episodes(3)
    if odd == "shape":
        episodes[1] = regression_episodes(1, shots=6)[0]
    elif odd == "dtype":
        episodes[1] = Episode(**{**vars(episodes[1]), "support_x": episodes[1].support_x.double()})
    else:
        episodes[1] = Episode(**{**vars(episodes[1]), "task_params": None})
    moved = episodes_to(episodes, "cpu")
    assert_same_episodes(moved, episodes)
    assert moved[1].support_x.dtype == episodes[1].support_x.dtype
    assert all(ep.support_x._base is None for ep in moved)


# ----------------------------------------------------------------------- --device


def device_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected" not in err
    return err


def test_cuda_without_a_cuda_build_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    err = device_error(capsys, "train", "--device", "cuda", "--set", "train.iterations=1")
    assert "'cuda' needs a CUDA build of torch" in err and "use --device cpu" in err


def test_cuda_with_no_gpu_visible_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = device_error(capsys, "evaluate", "runs/x", "--device", "cuda:0")
    assert "'cuda:0': torch sees no GPU" in err and "use --device cpu" in err


def test_a_gpu_index_past_the_last_gpu_is_a_usage_error(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    err = device_error(capsys, "inspect-lr", "runs/x", "--device", "cuda:3")
    assert "'cuda:3' names GPU 3, but torch sees 2 (cuda:0 to cuda:1); pick one of those" in err
    # An index that exists gets past the check (and fails later, for want of the run).
    assert main(["evaluate", str(tmp_path / "absent"), "--device", "cuda:1"]) == 1
    assert "--device" not in capsys.readouterr().err


@pytest.mark.parametrize("value, says", [
    ("mps", "'mps' needs Apple's Metal (MPS) backend"),
    ("gpu", "'gpu' is not a torch device; use cpu, cuda, cuda:N (N counts from 0) or mps"),
    ("cuda:x", "'cuda:x' is not a torch device"),
    ("meta", "'meta' is not a device fewshot-metaopt runs on; use cpu"),
    ("cpu:1", "'cpu:1': the CPU is one device; use --device cpu"),
])
def test_unavailable_and_malformed_devices_are_usage_errors(capsys, monkeypatch, value, says):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert says in device_error(capsys, "train", "--device", value)


def test_mps_has_one_device(capsys, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert "'mps:1': MPS is one device; use --device mps" in device_error(capsys, "train", "--device", "mps:1")


def test_a_gpu_out_of_memory_is_one_line_with_what_to_change():
    message = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 139.72 GiB of which "
               "1.10 GiB is free.\nOf the allocated memory 130.2 GiB is allocated by PyTorch. If reserved but "
               "unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True")
    line = one_line(torch.cuda.OutOfMemoryError(message))
    assert line.startswith("the GPU ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB); ")
    assert "train.meta_batch" in line and "\n" not in line and "unexpected" not in line
