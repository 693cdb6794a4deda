"""What a MAML meta-iteration on ResNet-12 costs: seconds and peak memory at 5-way 1-shot on
84x84 images, meta-batch 4, for 1 and 5 inner steps, first and second order, with the tasks
adapted one after another (the task loop) or together (``vmap_tasks``, in chunks of
``vmap_chunk_size``).

    .venv/bin/python benchmarks/backbone_cost.py --threads 1 [--iterations 2] [--configs ...]

The meta-iteration is ``GradientMetaLearner.meta_train_step`` on MetaOptNet's ResNet-12
(12.4M parameters; ``--widths`` shrinks it for a smoke test): MAML on every parameter, the
functional engine, transductive batch norm, float32, 15 queries per class, Adam over the
initialisation. Episodes are random images (the cost does not depend on pixel values).

Each configuration runs in a fresh process, so its peak resident memory (``ru_maxrss``) is its
own. Two figures: the peak, and the peak above the process's resident memory once the network,
the learner and the episodes are built (what the meta-iterations add: the graph of the inner
steps and the query pass, the meta-gradient, Adam's two moments after the first step). Time is
the CPU time of the process (``time.process_time``) per meta-iteration, the mean over
``--iterations`` iterations after ``--warmup`` more; with ``--threads 1`` it is the work of one
core, whatever else the machine runs. On CUDA (``--device cuda``) the time is wall-clock with
the device synchronised and the memory is ``torch.cuda.max_memory_allocated`` above what was
allocated before the first iteration.

``--estimate-gib 24`` adds what a GPU of that much memory would hold, estimated from the
measured figures (labelled as such; see the printed notes for the assumptions).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from fewshot_metaopt import Episode, GradientMetaLearner, GradientMetaLearnerConfig
from fewshot_metaopt.atomic_files import atomic_write_text
from fewshot_metaopt.models import resnet12
from precision import machine

REPO = Path(__file__).resolve().parents[1]
# name -> (inner steps, first order, vmapped)
CONFIGS = {
    f"{steps} step{'s' if steps > 1 else ''}, {order} order{', vmapped' if vmap else ''}": (steps, order == "first", vmap)
    for vmap in (False, True) for steps in (1, 5) for order in ("first", "second")
}
# What a CUDA process holds besides the tensors it allocates (the context, cuDNN and cuBLAS
# workspaces, the caching allocator's rounding): an assumption of the estimate, not a measurement.
CUDA_OVERHEAD_GIB = 1.5


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:  # pragma: no cover - not Linux
        return "unknown"


def synthetic_episodes(args, device: torch.device) -> list[Episode]:
    g = torch.Generator().manual_seed(0)
    shape = (3, args.image_size, args.image_size)
    out = []
    for _ in range(args.meta_batch):
        support_y = torch.arange(args.ways).repeat_interleave(args.shots)
        query_y = torch.arange(args.ways).repeat_interleave(args.queries)
        out.append(Episode(torch.randn(len(support_y), *shape, generator=g), support_y,
                           torch.randn(len(query_y), *shape, generator=g), query_y).to(device))
    return out


def one(name: str, args) -> dict:
    steps, first_order, vmap = CONFIGS[name]
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = resnet12(args.ways, widths=tuple(args.widths)).to(device)
    config = GradientMetaLearnerConfig(algorithm="fomaml" if first_order else "maml", inner_lr=0.01, inner_steps=steps,
                                       engine="func", vmap_tasks=vmap,
                                       vmap_chunk_size=args.vmap_chunk_size if vmap else None)
    learner = GradientMetaLearner(model, config)
    episodes = synthetic_episodes(args, device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        allocated = torch.cuda.memory_allocated()
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, walls = [], []
    for iteration in range(args.warmup + args.iterations):
        cpu, wall = time.process_time(), time.perf_counter()
        learner.meta_train_step(episodes)
        if cuda:
            torch.cuda.synchronize()
        if iteration >= args.warmup:
            times.append(time.process_time() - cpu)
            walls.append(time.perf_counter() - wall)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "config": name, "parameters": sum(p.numel() for p in model.parameters()), "cpu_s": sum(times) / len(times),
        "wall_s": sum(walls) / len(walls), "peak_gib": peak_rss / 2**20, "above_start_gib": (peak_rss - start_rss) / 2**20,
        "chunk": args.vmap_chunk_size if vmap else None,
    }
    if cuda:
        result["cuda_peak_gib"] = (torch.cuda.max_memory_allocated() - allocated) / 2**30
    return result


def estimate(rows: list[dict], gib: float, meta_batch: int) -> list[str]:
    """Paper estimate of what a ``gib`` GPU holds, from the measured memory above start. Beside
    the graphs, a meta-iteration holds the weights' meta-gradient and Adam's two moments (three
    copies of the weights; the weights themselves are in the start). The task loop holds one
    task's graph at a time; a vmapped chunk of ``c`` tasks holds ``c`` graphs of its own kind
    (vmap's batch norm in elementary ops and plain convolutions keep more than the loop's)."""
    lines = [f"Estimate (not measured) for a {gib:g} GiB GPU: a task's graph takes there what it takes here; "
             f"{CUDA_OVERHEAD_GIB} GiB go to the CUDA context, workspaces and the allocator's rounding."]
    for r in rows:
        weights = r["parameters"] * 4 / 2**30
        graph = (r.get("cuda_peak_gib", r["above_start_gib"]) - 3 * weights) / (r["chunk"] or 1)
        if graph <= 0:
            continue
        tasks = int((gib - CUDA_OVERHEAD_GIB - 4 * weights) // graph)
        if r["chunk"] is None:
            lines.append(f"  {r['config']}: {graph:.2f} GiB a task's graph; the task loop runs any meta-batch in "
                         f"{graph + 4 * weights:.2f} GiB")
        else:
            lines.append(f"  {r['config']}: {graph:.2f} GiB a task's graph -> chunks of about {tasks} tasks "
                         f"(vmap_chunk_size <= {tasks})" + ("" if tasks >= meta_batch else
                                                            f"; the meta-batch of {meta_batch} in one chunk does not fit"))
    return lines


def table(rows: list[dict], device: str) -> list[str]:
    memory = "CUDA peak GiB" if device.startswith("cuda") else "above start GiB"
    lines = [f"| configuration | CPU s / iteration | wall s / iteration | peak RSS GiB | {memory} |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        label = r["config"] if r["chunk"] is None else f"{r['config']} (chunks of {r['chunk']})"
        extra = r.get("cuda_peak_gib", r["above_start_gib"])
        lines.append(f"| {label} | {r['cpu_s']:.2f} | {r['wall_s']:.2f} | {r['peak_gib']:.2f} | {extra:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="CONFIG",
                        help=f"of: {'; '.join(CONFIGS)}")
    parser.add_argument("--iterations", type=int, default=2, help="timed meta-iterations per configuration")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--vmap-chunk-size", type=int, default=2)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--widths", type=int, nargs=4, default=[64, 160, 320, 640])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--estimate-gib", type=float, default=24.0)
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--rows-from", nargs="+", default=None, metavar="JSON",
                        help="print the table and the estimate of rows written by earlier runs (--json), running nothing")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args)))
        return
    if args.rows_from:
        rows = [row for path in args.rows_from for row in json.loads(Path(path).read_text())]
        print("\n".join([*table(rows, args.device), *estimate(rows, args.estimate_gib, args.meta_batch)]))
        return
    torch.set_num_threads(args.threads)  # machine() names torch's thread count
    print(f"{time.strftime('%Y-%m-%d %H:%M')}; {machine()}; load average {load()}")
    print(f"ResNet-12 {'-'.join(map(str, args.widths))}, {args.ways}-way {args.shots}-shot, {args.queries} queries a "
          f"class, {args.image_size}x{args.image_size}, meta-batch {args.meta_batch}, {args.device}; mean of "
          f"{args.iterations} meta-iteration(s) after {args.warmup} warm-up, each configuration in its own process",
          flush=True)
    print("\n".join(table([], args.device)), flush=True)
    passed = [a for a in sys.argv[1:]]
    rows = []
    for name in args.configs:
        done = subprocess.run([sys.executable, __file__, *passed, "--one", name], capture_output=True, text=True,
                              cwd=REPO)
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output (killed?)"])[-1]
            print(f"| {name} | failed: {tail} | | | |", flush=True)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(table(rows[-1:], args.device)[-1], flush=True)
    for line in estimate(rows, args.estimate_gib, args.meta_batch):
        print(line)
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
