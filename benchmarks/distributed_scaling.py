"""Throughput of meta-training on 1 and 2 processes (torch.distributed, gloo), and the share of
each iteration spent in the all-reduce.

The same MAML meta-iteration (Omniglot-shaped 5-way 1-shot, conv4-64, meta-batch 32, one inner
step, second order) is timed three ways, one after another: one process with one thread; one
process with two threads; two processes with one thread each, each adapting 16 of the 32 tasks
and all-reducing the meta-gradient. Episodes are synthetic (speed does not depend on pixel
values). Scaling efficiency = (1-process s/it) / (2-process s/it) / 2.

    .venv/bin/python benchmarks/distributed_scaling.py --iterations 10

Wall-clock time is what parallel processes save, so this benchmark needs the machine to
itself: run it on a quiet machine and report the load (`uptime`) beside the figures.

The all-reduce volume per iteration is the model's parameter count plus a few numbers, in
float32. For 8 and 64 ranks the script also prints a paper estimate of a ring all-reduce on a
network of a stated bandwidth and latency (2 (N-1)/N x bytes / bandwidth + 2 (N-1) x latency),
labelled as such: it was not measured.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from dataclasses import replace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from engine_speed import WORKLOADS, synthetic_episodes

from fewshot_metaopt import Episode, GradientMetaLearner, GradientMetaLearnerConfig
from fewshot_metaopt.distributed import MetaBatchGroup
from fewshot_metaopt.models import conv4


def episodes(n: int) -> list[Episode]:
    """engine_speed.py's synthetic Omniglot 5-way 1-shot episodes, ``n`` of them."""
    return synthetic_episodes(replace(WORKLOADS["omniglot-5w1s-b8"], meta_batch=n), torch.device("cpu"))


def learner() -> GradientMetaLearner:
    torch.manual_seed(0)
    return GradientMetaLearner(conv4(5), GradientMetaLearnerConfig(inner_lr=0.4))


def timed_iterations(learn: GradientMetaLearner, batch: list[Episode], iterations: int) -> list[float]:
    learn.meta_train_step(batch)  # warm-up
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        learn.meta_train_step(batch)
        times.append(time.perf_counter() - start)
    return times


def worker(rank: int, port: int, iterations: int, meta_batch: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    group = MetaBatchGroup.current()
    learn = learner().distribute(group)
    reduce_time = []
    real = group.reduce_mean_gradient

    def timed_reduce(*args, **kwargs):
        start = time.perf_counter()
        result = real(*args, **kwargs)
        reduce_time.append(time.perf_counter() - start)
        return result

    object.__setattr__(group, "reduce_mean_gradient", timed_reduce)
    times = timed_iterations(learn, episodes(meta_batch), iterations)
    if rank == 0:
        torch.save({"times": times, "reduce": reduce_time[1:]}, out)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--bandwidth-gbit", type=float, nargs="+", default=[10.0, 100.0],
                        help="network bandwidths for the paper estimate (Gbit/s)")
    parser.add_argument("--latency-us", type=float, default=10.0, help="per-message latency for the estimate")
    args = parser.parse_args(argv)
    batch = episodes(args.meta_batch)
    rows = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rows[f"1 process, {threads} thread{'s' if threads > 1 else ''}"] = timed_iterations(
            learner(), batch, args.iterations)
    out = f"/tmp/distributed-scaling-{os.getpid()}.pt"
    mp.start_processes(worker, args=(free_port(), args.iterations, args.meta_batch, out), nprocs=2,
                       start_method="spawn")
    two = torch.load(out, weights_only=False)
    os.unlink(out)
    rows["2 processes, 1 thread each"] = two["times"]
    one = statistics.median(rows["1 process, 1 thread"])
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, load {os.getloadavg()[0]:.2f}; "
          f"meta-batch {args.meta_batch}, {args.iterations} timed iterations, median s per iteration (wall)")
    print()
    print("| setting | s / iteration | speed-up | scaling efficiency |")
    print("| --- | --- | --- | --- |")
    for name, times in rows.items():
        median = statistics.median(times)
        workers = 2 if "2" in name else 1
        print(f"| {name} | {median:.3f} | {one / median:.2f}x | {100 * one / median / workers:.0f}% |")
    params = sum(p.numel() for p in learner().meta_parameters)
    size = 4 * (params + 8)
    reduce_s = statistics.median(two["reduce"]) if two["reduce"] else float("nan")
    share = reduce_s / statistics.median(two["times"])
    print()
    print(f"all-reduce: {size / 1e6:.2f} MB per iteration, measured {1e3 * reduce_s:.1f} ms on 2 local processes "
          f"({100 * share:.1f}% of an iteration; it includes waiting for the slower rank)")
    for bandwidth in args.bandwidth_gbit:
        for ranks in (8, 64):
            seconds = 2 * (ranks - 1) / ranks * size * 8 / (bandwidth * 1e9) + 2 * (ranks - 1) * args.latency_us * 1e-6
            print(f"paper estimate, not measured: {ranks} ranks, {bandwidth:g} Gbit/s, {args.latency_us:g} us latency: "
                  f"{1e3 * seconds:.2f} ms per all-reduce ({100 * seconds / (one / ranks * 1):.1f}% of an iteration "
                  f"whose {args.meta_batch} tasks are shared by {ranks} ranks at this CPU's speed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
