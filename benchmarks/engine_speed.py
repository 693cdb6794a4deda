"""Seconds per MAML meta-iteration: our two inner-loop engines beside learn2learn, higher, torchopt.

Every engine runs the same meta-iteration on the same network (``fewshot_metaopt.models.conv4``),
from the same initial weights, on the same synthetic episodes (speed does not depend on pixel
values): for each of the meta-batch's tasks, ``steps`` inner SGD steps on the support set; the
mean query loss differentiated back to the initial weights (through the inner steps, unless the
workload is first-order); one outer Adam step.

The side-by-side table runs in the peers environment (``bash benchmarks/peers/setup.sh``)::

    PYTHONPATH=. .peers-venv/bin/python benchmarks/engine_speed.py --threads 1 --repeats 5

Peers are imported only when installed; in the core environment the script times our engines.
``--baseline DIR`` adds the func and higher engines of another checkout of the package (loaded
under another name), so a change is timed against the code before it in the same process::

    git worktree add /tmp/before HEAD~1
    .venv/bin/python benchmarks/engine_speed.py --threads 1 --baseline /tmp/before --engines ours-func,ours-higher

Engines run interleaved in one process: each repeat times every engine once, in an order that
rotates from repeat to repeat, so load from other processes falls on all of them alike. Per
engine it prints the median wall-clock and CPU seconds per iteration, how many times faster our
func engine is, GFLOP per iteration (``torch.utils.flop_counter``: convolutions and matrix
products), the achieved GFLOP/s as a fraction of the machine's matmul peak (the best of a
1024^3 matrix product timed in the same run), and the peak memory of one iteration above what
was allocated before it (the profiler's allocation events on the CPU).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.metadata
import importlib.util
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from fewshot_metaopt import Episode, GradientMetaLearner, GradientMetaLearnerConfig
from fewshot_metaopt.models import conv4

META_LR = 1e-3


@dataclass(frozen=True)
class Workload:
    ways: int
    shots: int
    queries: int
    meta_batch: int
    steps: int
    inner_lr: float
    in_channels: int
    image_size: int
    hidden: int
    first_order: bool = False
    algorithm: str = "maml"  # or "meta_sgd": per-parameter learned inner lrs


OMNIGLOT = dict(in_channels=1, image_size=28, hidden=64)
MINI = dict(in_channels=3, image_size=84, hidden=32)
WORKLOADS = {
    "omniglot-5w1s-b8": Workload(5, 1, 15, 8, 1, 0.4, **OMNIGLOT),
    "omniglot-5w1s-b32": Workload(5, 1, 15, 32, 1, 0.4, **OMNIGLOT),
    "omniglot-20w1s-5steps": Workload(20, 1, 15, 16, 5, 0.1, **OMNIGLOT),
    "mini-5w1s-5steps": Workload(5, 1, 15, 4, 5, 0.01, **MINI),
    "omniglot-5w1s-b8-fo": Workload(5, 1, 15, 8, 1, 0.4, first_order=True, **OMNIGLOT),
    "omniglot-20w1s-5steps-fo": Workload(20, 1, 15, 16, 5, 0.1, first_order=True, **OMNIGLOT),
    "mini-5w1s-5steps-fo": Workload(5, 1, 15, 4, 5, 0.01, first_order=True, **MINI),
    "omniglot-5w1s-b8-metasgd": Workload(5, 1, 15, 8, 1, 0.4, algorithm="meta_sgd", **OMNIGLOT),
}

Iteration = Callable[[], None]


# ------------------------------------------------------------------------------- the engines


def ours(engine: str, vmap: bool = False, package=None, precision: str = "fp32"):
    """Our learner on ``engine``; ``package``: another checkout's ``fewshot_metaopt`` (``--baseline``)."""
    def build(w: Workload, model: nn.Module, episodes: list[Episode]) -> Iteration:
        extra = {} if precision == "fp32" else {"precision": precision}
        learner_class = GradientMetaLearner if package is None else package.GradientMetaLearner
        config_class = GradientMetaLearnerConfig if package is None else package.GradientMetaLearnerConfig
        config = config_class(
            algorithm=w.algorithm, inner_lr=w.inner_lr, inner_steps=w.steps, meta_lr=META_LR,
            first_order=w.first_order, engine=engine, vmap_tasks=vmap, **extra,
        )
        learner = learner_class(model, config)
        if package is not None:
            episodes = [package.Episode(*(getattr(ep, f) for f in ("support_x", "support_y", "query_x", "query_y",
                                                                   "classes"))) for ep in episodes]
        return lambda: learner.meta_train_step(episodes)

    return build


def load_baseline(checkout: str):
    """``checkout``'s ``fewshot_metaopt`` as the package ``fewshot_metaopt_baseline``."""
    root = Path(checkout) / "fewshot_metaopt"
    if not (root / "__init__.py").is_file():
        raise SystemExit(f"--baseline {checkout}: no fewshot_metaopt/__init__.py there; give a checkout of the project")
    spec = importlib.util.spec_from_file_location("fewshot_metaopt_baseline", root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = package
    spec.loader.exec_module(package)
    return package


def learn2learn(w: Workload, model: nn.Module, episodes: list[Episode]) -> Iteration:
    l2l = importlib.import_module("learn2learn")
    if w.algorithm == "meta_sgd":
        meta = l2l.algorithms.MetaSGD(model, lr=w.inner_lr, first_order=w.first_order)
    else:
        meta = l2l.algorithms.MAML(model, lr=w.inner_lr, first_order=w.first_order)
    outer = torch.optim.Adam(meta.parameters(), lr=META_LR)

    def iteration() -> None:
        outer.zero_grad()
        for ep in episodes:
            learner = meta.clone()
            for _ in range(w.steps):
                learner.adapt(F.cross_entropy(learner(ep.support_x), ep.support_y))
            (F.cross_entropy(learner(ep.query_x), ep.query_y) / len(episodes)).backward()
        outer.step()

    return iteration


def plain_higher(w: Workload, model: nn.Module, episodes: list[Episode]) -> Iteration:
    higher = importlib.import_module("higher")
    inner = torch.optim.SGD(model.parameters(), lr=w.inner_lr)
    outer = torch.optim.Adam(model.parameters(), lr=META_LR)
    # First order as higher's own docs say: detached gradients, the path through the step kept.
    callback = (lambda grads: [g.detach() for g in grads]) if w.first_order else None

    def iteration() -> None:
        outer.zero_grad()
        for ep in episodes:
            with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(w.steps):
                    diffopt.step(F.cross_entropy(fmodel(ep.support_x), ep.support_y), grad_callback=callback)
                (F.cross_entropy(fmodel(ep.query_x), ep.query_y) / len(episodes)).backward()
        outer.step()

    return iteration


def torchopt_meta_sgd(w: Workload, model: nn.Module, episodes: list[Episode]) -> Iteration:
    """torchopt's MAML recipe (its examples/MAML-RL and few-shot examples): ``MetaSGD`` steps
    the module in place, and ``extract_state_dict``/``recover_state_dict`` reset it per task."""
    torchopt = importlib.import_module("torchopt")
    inner = torchopt.MetaSGD(model, lr=w.inner_lr)
    outer = torch.optim.Adam(model.parameters(), lr=META_LR)

    def iteration() -> None:
        outer.zero_grad()
        net_state = torchopt.extract_state_dict(model, by="reference", detach_buffers=True)
        inner_state = torchopt.extract_state_dict(inner, by="reference")
        for ep in episodes:
            for _ in range(w.steps):
                inner.step(F.cross_entropy(model(ep.support_x), ep.support_y))
            (F.cross_entropy(model(ep.query_x), ep.query_y) / len(episodes)).backward()
            torchopt.recover_state_dict(model, net_state)
            torchopt.recover_state_dict(inner, inner_state)
        outer.step()

    return iteration


@dataclass(frozen=True)
class Engine:
    name: str
    build: Callable[[Workload, nn.Module, list[Episode]], Iteration]
    package: str | None  # a peer's package; the engine is left out when it is not installed
    runs: Callable[[Workload], bool]  # which workloads the engine can run as they are defined


ENGINES = [
    Engine("ours-func", ours("func"), None, lambda w: True),
    Engine("ours-func-vmap", ours("func", vmap=True), None, lambda w: True),
    Engine("ours-higher", ours("higher"), None, lambda w: True),
    Engine("learn2learn", learn2learn, "learn2learn", lambda w: True),
    Engine("higher", plain_higher, "higher", lambda w: w.algorithm == "maml"),
    # torchopt's MetaOptimizer always differentiates through the step (create_graph=True).
    Engine("torchopt", torchopt_meta_sgd, "torchopt", lambda w: w.algorithm == "maml" and not w.first_order),
]


def installed(package: str | None) -> bool:
    if package is None:
        return True
    try:
        importlib.import_module(package)
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------ measurements


def synthetic_episodes(w: Workload, device: torch.device, seed: int = 0) -> list[Episode]:
    g = torch.Generator().manual_seed(seed)
    image = (w.in_channels, w.image_size, w.image_size)
    labels = lambda per_class: torch.arange(w.ways).repeat_interleave(per_class)  # noqa: E731
    return [
        Episode(torch.randn(w.ways * w.shots, *image, generator=g), labels(w.shots),
                torch.randn(w.ways * w.queries, *image, generator=g), labels(w.queries),
                torch.arange(w.ways)).to(device)
        for _ in range(w.meta_batch)
    ]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Iteration, device: torch.device) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def matmul_peak_gflops(device: torch.device, size: int = 1024, repeats: int = 10) -> float:
    """The best GFLOP/s of a float32 ``size^3`` matrix product: what the machine can do now."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    best = min(timed(lambda: a @ b, device)[0] for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def gflop_and_peak_mib(fn: Iteration, device: torch.device) -> tuple[float, float]:
    """GFLOP of one call, and the peak MiB it allocates above what was allocated before it."""
    counter = FlopCounterMode(display=False)
    if device.type == "cuda":
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with counter:
            fn()
        synchronize(device)
        return counter.get_total_flops() / 1e9, (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, counter:
        fn()
    # Allocations are charged to the op that made them, frees to "[memory]" events: replaying
    # both in time order gives the live bytes, whose maximum is the peak.
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return counter.get_total_flops() / 1e9, peak / 2**20


@dataclass
class Row:
    engine: str
    wall_s: float
    cpu_s: float
    wall_all: list[float]
    gflop: float
    peak_mib: float


def run_workload(name: str, w: Workload, engines: list[Engine], args, device: torch.device) -> list[Row]:
    torch.manual_seed(0)
    reference = conv4(w.ways, w.in_channels, w.hidden, w.image_size).to(device)
    episodes = synthetic_episodes(w, device)
    chosen = [e for e in engines if e.runs(w)]
    iterations = {e.name: e.build(w, copy.deepcopy(reference), episodes) for e in chosen}
    for _ in range(args.warmup):
        for e in chosen:
            iterations[e.name]()
    walls: dict[str, list[float]] = {e.name: [] for e in chosen}
    cpus: dict[str, list[float]] = {e.name: [] for e in chosen}
    for r in range(args.repeats):
        order = chosen[r % len(chosen):] + chosen[:r % len(chosen)]
        for e in order:
            wall, cpu = timed(iterations[e.name], device)
            walls[e.name].append(wall)
            cpus[e.name].append(cpu)
            print(f"  {name} repeat {r + 1}/{args.repeats} {e.name}: {wall:.3f} s", file=sys.stderr, flush=True)
    rows = []
    for e in chosen:
        nan = float("nan")
        flops, memory = gflop_and_peak_mib(iterations[e.name], device) if args.profile else (nan, nan)
        rows.append(Row(e.name, statistics.median(walls[e.name]), statistics.median(cpus[e.name]),
                        walls[e.name], flops, memory))
    return rows


def table(name: str, w: Workload, rows: list[Row], peak: float) -> str:
    func = next((r for r in rows if r.engine == "ours-func"), None)
    lines = [
        f"### {name}: {w.ways}-way {w.shots}-shot, {w.queries} queries, meta-batch {w.meta_batch}, "
        f"{w.steps} step{'s' if w.steps > 1 else ''}, {'first' if w.first_order else 'second'} order, "
        f"{w.algorithm}, conv4-{w.hidden} on {w.image_size}x{w.image_size}x{w.in_channels}",
        "",
        "| engine | s / iteration (wall, median) | CPU s / iteration | ours-func is faster by | "
        "GFLOP / iteration | GFLOP/s | of matmul peak | peak memory (MiB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        speedup = f"{r.wall_s / func.wall_s:.2f}x" if func is not None else "-"
        achieved = r.gflop / r.wall_s
        lines.append(f"| {r.engine} | {r.wall_s:.3f} | {r.cpu_s:.3f} | {speedup} | {r.gflop:.1f} | "
                     f"{achieved:.1f} | {100 * achieved / peak:.0f}% | {r.peak_mib:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="omniglot-5w1s-b8,omniglot-5w1s-b8-fo",
                        help=f"comma-separated, or 'all': {', '.join(WORKLOADS)}")
    parser.add_argument("--engines", default="all",
                        help=f"comma-separated, or 'all': {', '.join(e.name for e in ENGINES)}")
    parser.add_argument("--repeats", type=int, default=5, help="timed iterations per engine (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per engine first")
    parser.add_argument("--meta-batch", type=int, default=None, help="override every workload's meta-batch")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip the FLOP count and the memory measurement (one more iteration per engine)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--precision", default="fp32",
                        help="comma-separated precisions of our engines (fp32, bf16, fp16): each adds its own rows")
    parser.add_argument("--baseline", metavar="DIR", default=None,
                        help="also time the func and higher engines of the checkout in DIR (before/after a change)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = list(WORKLOADS) if args.workloads == "all" else args.workloads.split(",")
    wanted = [e.name for e in ENGINES] if args.engines == "all" else args.engines.split(",")
    unknown = [n for n in names if n not in WORKLOADS] + [n for n in wanted if n not in {e.name for e in ENGINES}]
    if unknown:
        parser.error(f"unknown workload or engine: {', '.join(unknown)}")
    engines = [e for e in ENGINES if e.name in wanted and installed(e.package)]
    for precision in (p for p in args.precision.split(",") if p != "fp32"):
        engines += [Engine(f"{e.name}-{precision}", ours(e.name.removeprefix("ours-").removesuffix("-vmap"),
                                                         vmap=e.name.endswith("-vmap"), precision=precision),
                           None, e.runs) for e in ENGINES if e.name in wanted and e.name.startswith("ours-")]
    if args.baseline is not None:
        baseline = load_baseline(args.baseline)
        engines += [Engine(f"baseline-{name}", ours(name, package=baseline), None, lambda w: True)
                    for name in ("func", "higher")]
    missing = [e.name for e in ENGINES if e.name in wanted and not installed(e.package)]
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for package in ("learn2learn", "higher", "torchopt"):
        if installed(package):
            versions[package] = importlib.metadata.version(package)
    peak_before = matmul_peak_gflops(device)
    results = {}
    for name in names:
        w = WORKLOADS[name]
        if args.meta_batch is not None:
            w = Workload(**{**asdict(w), "meta_batch": args.meta_batch})
        results[name] = (w, run_workload(name, w, engines, args, device))
    peak = max(peak_before, matmul_peak_gflops(device))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {device}; "
          + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "torch")
          + f"; matmul peak {peak:.1f} GFLOP/s (best 1024^3 float32 product)")
    if missing:
        print(f"not installed, left out: {', '.join(missing)}")
    for name, (w, rows) in results.items():
        print()
        print(table(name, w, rows, peak))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"versions": versions, "threads": torch.get_num_threads(), "device": str(device),
                       "matmul_peak_gflops": peak,
                       "workloads": {n: {"workload": asdict(w), "rows": [asdict(r) for r in rows]}
                                     for n, (w, rows) in results.items()}}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
