"""Meta-training over torch.distributed (gloo on 127.0.0.1): two processes give the one-process
meta-gradients, scores and checkpoints; failures stop every rank with one line."""

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fewshot_metaopt import GradientMetaLearner, GradientMetaLearnerConfig, MetaOptimizer, MetaOptimizerConfig
from fewshot_metaopt.distributed import MetaBatchGroup, init_from_environment
from fewshot_metaopt.warp import warp_mlp
from learner_fixtures import classification_episodes, tiny_mlp
from test_cli import TINY_TASK, write_task

WORLD = 2
# float64 models: the ranks sum the same terms in another order, which float64 keeps to ~1e-15
# per step; over a few Adam steps the weights agree to this.
TOLERANCE = 1e-10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def learner_for(kind: str):
    if kind == "warp_maml":
        torch.manual_seed(0)
        model = warp_mlp(3, 2, hidden=(4,)).double()
        return GradientMetaLearner(model, GradientMetaLearnerConfig(algorithm="warp_maml", inner_lr=0.3, warp_points=2))
    model = tiny_mlp()
    if kind == "lstm":
        rule = MetaOptimizer(model, MetaOptimizerConfig(method="lstm", lstm_variant="scalable"))
        return GradientMetaLearner(model, GradientMetaLearnerConfig(inner_lr=0.3, inner_steps=2), inner_optimizer=rule)
    return GradientMetaLearner(model, GradientMetaLearnerConfig(algorithm=kind, inner_lr=0.3, inner_steps=2,
                                                                skip_nonfinite_tasks=True))


def episodes(poison: int | None = None):
    batch = classification_episodes(4, (3,))
    if poison is not None:  # a task whose loss is NaN: skipped and not counted
        batch[poison].support_x[0, 0] = float("nan")
    return batch


def train(learner, steps: int = 3, poison: int | None = None):
    results = [learner.meta_train_step(episodes(poison)) for _ in range(steps)]
    scores = learner.evaluate(classification_episodes(5, (3,), seed=7))
    return ([p.detach().clone() for p in learner.meta_parameters],
            [(r.loss, r.accuracy, r.tasks, r.skipped_tasks) for r in results], scores.values)


def worker(rank: int, port: int, kind: str, poison, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        learner = learner_for(kind).distribute(MetaBatchGroup.current())
        torch.save(train(learner, poison=poison), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def run_two(tmp_path, kind: str, poison=None):
    out = str(tmp_path / kind)
    mp.start_processes(worker, args=(free_port(), kind, poison, out), nprocs=WORLD, start_method="spawn")
    return [torch.load(f"{out}.{rank}", weights_only=False) for rank in range(WORLD)]


@pytest.mark.parametrize("kind", ["maml", "meta_sgd", "fomaml", "lstm", "warp_maml"])
def test_two_processes_train_as_one(tmp_path, kind):
    alone = train(learner_for(kind))
    for weights, results, scores in run_two(tmp_path, kind):
        for a, b in zip(alone[0], weights):
            torch.testing.assert_close(a, b, rtol=TOLERANCE, atol=TOLERANCE)
        for (la, aa, ta, sa), (lb, ab, tb, sb) in zip(alone[1], results):
            assert (ta, sa) == (tb, sb) and la == pytest.approx(lb, rel=1e-12) and aa == pytest.approx(ab, rel=1e-12)
        assert scores == alone[2]  # every episode scored alike, gathered in order


def test_skipped_tasks_are_counted_over_all_processes(tmp_path):
    alone = train(learner_for("maml"), poison=1)
    assert alone[1][0][2:] == (3, 1)
    for weights, results, _ in run_two(tmp_path, "maml", poison=1):
        assert [r[2:] for r in results] == [r[2:] for r in alone[1]]
        for a, b in zip(alone[0], weights):
            torch.testing.assert_close(a, b, rtol=TOLERANCE, atol=TOLERANCE)


def failing_worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        learner = GradientMetaLearner(tiny_mlp(), GradientMetaLearnerConfig(inner_lr=0.3))
        learner.distribute(MetaBatchGroup.current())
        try:
            learner.meta_train_step(episodes(poison=3))  # rank 1's share holds the NaN task
            message = "no error"
        except FloatingPointError as err:
            message = str(err)
        with pytest.raises(ValueError, match="a meta-batch of 3 does not divide over 2 processes; make it a multiple of 2"):
            learner.meta_train_step(classification_episodes(3, (3,)))
        Path(f"{out}.{rank}").write_text(message)
    finally:
        dist.destroy_process_group()


def test_a_failure_on_one_rank_stops_every_rank_at_once(tmp_path):
    out = str(tmp_path / "f")
    started = time.monotonic()
    mp.start_processes(failing_worker, args=(free_port(), out), nprocs=WORLD, start_method="spawn")
    messages = [Path(f"{out}.{rank}").read_text() for rank in range(WORLD)]
    assert "task 1: support loss is nan" in messages[1]
    assert "another process's share of the meta-batch failed" in messages[0]
    assert time.monotonic() - started < 60  # no rank waited for a timeout


@pytest.mark.parametrize("kind", ["lstm", "warp_leap"])
def test_a_meta_optimizer_trains_over_processes(tmp_path, kind):
    out = str(tmp_path / "mo")
    mp.start_processes(meta_optimizer_worker, args=(free_port(), out, kind), nprocs=WORLD, start_method="spawn")
    alone = meta_optimizer_run(kind)
    for rank in range(WORLD):
        for a, b in zip(alone, torch.load(f"{out}.{rank}", weights_only=False)):
            torch.testing.assert_close(a, b, rtol=TOLERANCE, atol=TOLERANCE)


def meta_optimizer_run(kind, group=None):
    if kind == "warp_leap":
        torch.manual_seed(0)
        model = warp_mlp(3, 2, hidden=(4,)).double()
        config = MetaOptimizerConfig(method="warp_grad", warp_init="leap", inner_steps=2, warp_points=3)
    else:
        model = tiny_mlp()
        config = MetaOptimizerConfig(method="lstm", lstm_variant="scalable", inner_steps=4, unroll_steps=2)
    mo = MetaOptimizer(model, config)
    mo.distribute(group)
    for _ in range(2):
        mo.meta_train_step(episodes())
    return [p.detach().clone() for p in [*mo.rule.parameters(), *model.parameters()]]


def meta_optimizer_worker(rank: int, port: int, out: str, kind: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.save(meta_optimizer_run(kind, MetaBatchGroup.current()), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------- the command line

DIST_TASK = TINY_TASK.replace("meta_batch = 2", "meta_batch = 4").replace("episodes = 4", "episodes = 5")
CLI = [sys.executable, "-m", "fewshot_metaopt.cli"]


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, **kwargs)


def test_train_with_two_processes_ends_as_with_one(tmp_path):
    task = write_task(tmp_path, DIST_TASK)
    one = cli("train", str(task), "--out", str(tmp_path / "one"), "--threads", "1")
    two = cli("train", str(task), "--out", str(tmp_path / "two"), "--threads", "1", "--nproc", "2")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    a, b = (json.loads((tmp_path / run / "results.json").read_text()) for run in ("one", "two"))
    assert (a["world_size"], b["world_size"]) == (1, 2)
    assert a["episodes"] == b["episodes"] and a["mean"] == pytest.approx(b["mean"], abs=0.05)
    lines = (tmp_path / "two/metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == list(range(1, 7))  # rank 0 alone wrote it
    assert "test accuracy" in two.stdout and two.stdout.count("test accuracy") == 1


def test_a_rank_killed_under_torchrun_restarts_resumes_the_run(tmp_path):
    task = write_task(tmp_path, DIST_TASK.replace("iterations = 6", "iterations = 40").replace("checkpoint_every = 2",
                                                                                                  "checkpoint_every = 4"))
    whole = cli("train", str(task), "--out", str(tmp_path / "whole"), "--threads", "1", "--nproc", "2")
    assert whole.returncode == 0, whole.stderr[-2000:]
    run, log = tmp_path / "cut", tmp_path / "cut.log"  # a file: a full pipe would stall the run
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                                 "--max-restarts=1", "-m", "fewshot_metaopt.cli", "train", str(task), "--out", str(run),
                                 "--threads", "1"], stdout=subprocess.DEVNULL, stderr=log.open("w"))
    deadline = time.monotonic() + 240
    while not (run / "checkpoints/last.pt").is_file():
        assert launcher.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    children = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    os.kill(int(children[-1]), signal.SIGKILL)
    assert launcher.wait(timeout=300) == 0, log.read_text()[-2000:]
    info = json.loads((run / "run.json").read_text())
    assert len(info["resumed"]) == 1
    w, c = (torch.load(r / "checkpoints/last.pt", weights_only=True)["learner"]["model"] for r in (tmp_path / "whole", run))
    assert all(torch.equal(w[k], c[k]) for k in w)  # same world size: bit for bit


def test_a_meta_batch_that_does_not_divide_is_refused_before_anything_is_written(tmp_path):
    task = write_task(tmp_path, DIST_TASK.replace("meta_batch = 4", "meta_batch = 3"))
    result = cli("train", str(task), "--out", str(tmp_path / "x"), "--nproc", "2", "--threads", "1")
    assert result.returncode != 0
    assert "train.meta_batch 3 does not divide over 2 processes" in result.stderr and not (tmp_path / "x").exists()


def test_a_rank_that_cannot_meet_the_others_says_so(tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "FEWSHOT_METAOPT_DIST_TIMEOUT_S": "3"}
    result = cli("train", str(write_task(tmp_path, DIST_TASK)), "--out", str(tmp_path / "x"), env=env)
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert "rank 1 of 2 could not meet the others at 127.0.0.1:" in line and "within 3 s" in line
    assert not (tmp_path / "x").exists()


def test_the_scaling_benchmark_runs(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/distributed_scaling.py", "--iterations", "1", "--meta-batch", "2"],
                            capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| 2 processes, 1 thread each |" in result.stdout and "paper estimate, not measured: 64 ranks" in result.stdout
