"""The evidence for bf16 on the CPU: meta-gradient fidelity, speed, and the lowered forward.

Three parts, each printed as markdown tables (``--parts``, comma-separated):

``gradients``
    The meta-gradient of one meta-batch under ``bf16`` and under ``fp32``, each against the
    float64 meta-gradient on the higher engine (plain modules: the ground truth) and against
    each other: the same initial weights (one model, ``copy.deepcopy``'d), the same inner
    optimizer initialisation (re-seeded before it is built), the same episodes. Cosine
    similarity and relative error ``||g - g_ref|| / ||g_ref||`` over all meta-parameters
    together, bf16's worst per-tensor cosine, the query-loss differences, and the cosine between
    the float64 meta-gradients of two different meta-batches (the sampling noise), for every
    algorithm (``maml``, ``fomaml``, ``meta_sgd``, ``anil``, ``warp_maml`` on ``warp_conv4``,
    and ``lstm``: the scalable learned LSTM, ``MetaOptimizer(model,
    MetaOptimizerConfig(method="lstm", lstm_variant="scalable"))`` as the learner's inner
    optimizer) on every engine that runs it (``func`` looped, ``func-vmap`` and ``higher``).
    Episodes are real Omniglot (Vinyals train split) when ``--data-root`` holds it, else the
    generated Glyphs (the output says which).

``speed``
    ``benchmarks/engine_speed.py`` with ``--precision fp32,bf16 --threads 1 --no-profile``
    (interleaved repeats, CPU seconds per meta-iteration) on our three engines.

``lowerings``
    CPU seconds per meta-iteration of the functional engine for every subset of the lowered
    forward's CPU forms (``channels_last``, ``im2col``, ``pool_before_relu``;
    :data:`fewshot_metaopt.engines.functional_model.LOWERINGS`) at fp32 and at bf16,
    interleaved (each repeat times every variant once, in an order that rotates), MAML second
    order. The variants are ``dataclasses.replace(PRECISIONS[p], lowerings=subset)`` in a
    ``FuncEngine`` swapped into the learner.

    .venv/bin/python benchmarks/precision.py --threads 1 --parts gradients,lowerings
    .venv/bin/python benchmarks/precision.py --threads 1 --parts speed --repeats 7

Timings are CPU seconds (``time.process_time``) of this process with one torch thread, so
another process on a shared machine moves them less than it moves wall-clock time.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from fewshot_metaopt import (GradientMetaLearner, GradientMetaLearnerConfig, MetaOptimizer, MetaOptimizerConfig,
                             TaskDistributionSampler)
from fewshot_metaopt.datasets import Glyphs, Omniglot
from fewshot_metaopt.engines.func_engine import FuncEngine
from fewshot_metaopt.engines.functional_model import LOWERINGS
from fewshot_metaopt.engines.precision import PRECISIONS, native_cpu_bf16
from fewshot_metaopt.models import conv4
from fewshot_metaopt.warp import warp_conv4

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent

# Omniglot 5-way 1-shot (MAML's inner settings, meta-batch 8) and 20-way 1-shot, 5 steps.
SETTINGS = {
    "5w1s": dict(ways=5, shots=1, steps=1, inner_lr=0.4, meta_batch=8),
    "20w1s": dict(ways=20, shots=1, steps=5, inner_lr=0.1, meta_batch=4),
}
ALGORITHMS = ["maml", "fomaml", "meta_sgd", "anil", "warp_maml", "lstm"]
ENGINES = {"func": dict(engine="func"), "func-vmap": dict(engine="func", vmap_tasks=True),
           "higher": dict(engine="higher")}


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # pragma: no cover - not Linux
        pass
    return (f"{cpu}; torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
            f"get_cpu_capability() = {torch.backends.cpu.get_cpu_capability()}, native bf16: {native_cpu_bf16()}")


def dataset(args):
    """The training split and its name: real Omniglot when present, else Glyphs."""
    root = Path(args.data_root)
    if (root / "images_background.zip").exists() or (root / "images_background").is_dir():
        return Omniglot(root, "train"), "real Omniglot, Vinyals train split"
    return (Glyphs(split="train", num_characters=args.glyph_characters),
            f"Glyphs (generated; Omniglot not found in {root})")


# ------------------------------------------------------------------------------------ gradients


def build_learner(algorithm: str, engine: str, precision: str, model, setting: dict, seed: int):
    """A learner over ``model`` (already copied), with its inner optimizer built after re-seeding."""
    options = dict(ENGINES[engine])
    if algorithm == "lstm":
        config = GradientMetaLearnerConfig(algorithm="maml", inner_lr=setting["inner_lr"],
                                           inner_steps=setting["steps"], precision=precision, **options)
        torch.manual_seed(seed + 1)
        rule = MetaOptimizer(model, MetaOptimizerConfig(method="lstm", lstm_variant="scalable"))
        return GradientMetaLearner(model, config, inner_optimizer=rule)
    torch.manual_seed(seed + 1)
    config = GradientMetaLearnerConfig(algorithm=algorithm, inner_lr=setting["inner_lr"],
                                       inner_steps=setting["steps"], precision=precision, **options)
    return GradientMetaLearner(model, config)


def meta_gradient(learner, episodes) -> tuple[dict[str, torch.Tensor], float]:
    learner.meta_optimizer.zero_grad(set_to_none=True)
    result = learner.accumulate_meta_gradient(episodes)
    names = {id(p): n for n, p in learner.model.named_parameters()}
    names.update({id(p): f"rule.{n}" for n, p in learner.rule.named_parameters()})
    grads = {}
    for i, p in enumerate(learner.meta_parameters):
        name = names.get(id(p), f"param{i}")
        grads[name] = (p.grad if p.grad is not None else torch.zeros_like(p)).detach().double().flatten()
    return grads, float(result.loss)


def compare(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> dict:
    a = torch.cat([reference[n] for n in reference])
    b = torch.cat([other[n] for n in reference])
    cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    rel = float((b - a).norm() / a.norm()) if a.norm() > 0 else math.nan
    # Tensors whose fp32 gradient is below 1% of the largest tensor's norm are left out of the
    # worst-tensor column: the biases of convolutions followed by batch norm have a meta-gradient
    # of (almost) zero, whose direction is rounding noise in either precision.
    floor = 0.01 * max(float(t.norm()) for t in reference.values())
    worst_name, worst = None, math.inf
    for n in reference:
        x, y = reference[n], other[n]
        if float(x.norm()) < floor:
            continue
        c = float(torch.nn.functional.cosine_similarity(x, y, dim=0))
        if c < worst:
            worst_name, worst = n, c
    return dict(cos=cos, rel=rel, worst=worst, worst_name=worst_name, norm=float(a.norm()))


def as_float64(episodes):
    return [dataclasses.replace(ep, support_x=ep.support_x.double(), query_x=ep.query_x.double()) for ep in episodes]


def float64_reference(algorithm: str, reference, setting: dict, episodes, seed: int):
    """The meta-gradient in float64 on the higher engine (plain modules: no CPU lowering), the
    ground truth both precisions are measured against."""
    learner = build_learner(algorithm, "higher", "fp32", copy.deepcopy(reference).double(), setting, seed)
    return meta_gradient(learner, as_float64(episodes))


def gradients(args, source, source_name: str) -> None:
    settings = args.settings.split(",")
    algorithms = args.algorithms.split(",")
    engines = args.engines.split(",")
    print(f"\n## Meta-gradient of bf16 against fp32 and float64 ({source_name})\n")
    print(f"One meta-batch, seed {args.seed}, conv4-{args.width} (warp_maml: warp_conv4-{args.width}), "
          f"{args.queries} queries per class. g64 is the float64 meta-gradient on the higher engine (plain modules), "
          "the ground truth; cosines and relative errors (||g - g_ref|| / ||g_ref||) are over all meta-parameters "
          "together (model and inner-rule meta-parameters). 'another batch' is the cosine between g64 and the float64 "
          "meta-gradient of a second meta-batch of the same size: the sampling noise SGD lives with anyway. "
          "'worst tensor' is bf16's lowest per-tensor cosine to g64 among tensors whose g64 norm is at least 1% of the "
          "largest (conv biases before batch norm have a near-zero meta-gradient, whose direction is noise).")
    for name in settings:
        setting = dict(SETTINGS[name])
        if args.meta_batch:
            setting["meta_batch"] = args.meta_batch
        sampler = TaskDistributionSampler(source, ways=setting["ways"], shots=setting["shots"],
                                          queries=args.queries, seed=args.seed)
        episodes = sampler.sample_batch(setting["meta_batch"])
        other = sampler.sample_batch(setting["meta_batch"])
        print(f"\n### {name}: {setting['ways']}-way {setting['shots']}-shot, {setting['steps']} inner "
              f"step{'s' if setting['steps'] > 1 else ''} at lr {setting['inner_lr']}, "
              f"meta-batch {setting['meta_batch']}\n")
        print("| algorithm | engine | bf16 vs fp32: cosine | rel. error | fp32 vs g64: cosine | rel. error | "
              "bf16 vs g64: cosine | rel. error | worst tensor, bf16 vs g64 | another batch vs g64 | "
              "query loss g64 | fp32 - g64 | bf16 - g64 |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for algorithm in algorithms:
            torch.manual_seed(args.seed)
            if algorithm == "warp_maml":
                reference = warp_conv4(setting["ways"], hidden=args.width)
            else:
                reference = conv4(setting["ways"], hidden=args.width)
            g64, loss64 = float64_reference(algorithm, reference, setting, episodes, args.seed)
            noise = compare(g64, float64_reference(algorithm, reference, setting, other, args.seed)[0])["cos"]
            for engine in engines:
                row = f"| {algorithm} | {engine} |"
                try:
                    results = {}
                    for precision in ("fp32", "bf16"):
                        learner = build_learner(algorithm, engine, precision, copy.deepcopy(reference), setting,
                                                args.seed)
                        results[precision] = meta_gradient(learner, episodes)
                except (ValueError, RuntimeError, NotImplementedError) as err:
                    message = str(err).splitlines()[0][:90].replace("|", "/")
                    print(f"{row} n/a: {type(err).__name__}: {message} |" + " |" * 11, flush=True)
                    continue
                (g32, loss32), (g16, loss16) = results["fp32"], results["bf16"]
                a, b, c = compare(g32, g16), compare(g64, g32), compare(g64, g16)
                print(f"{row} {a['cos']:.4f} | {a['rel']:.3f} | {b['cos']:.4f} | {b['rel']:.2g} | {c['cos']:.4f} | "
                      f"{c['rel']:.3f} | {c['worst_name']} ({c['worst']:.3f}) | {noise:.3f} | {loss64:.4f} | "
                      f"{loss32 - loss64:+.1e} | {loss16 - loss64:+.1e} |", flush=True)


# ----------------------------------------------------------------------------------------- speed


def speed(args) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    import engine_speed  # noqa: E402  (a sibling script)

    argv = ["--precision", "fp32,bf16", "--no-profile", "--repeats", str(args.repeats),
            "--engines", "ours-func,ours-func-vmap,ours-higher", "--workloads", args.speed_workloads]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.meta_batch:
        argv += ["--meta-batch", str(args.meta_batch)]
    print("\n## Speed: engine_speed.py " + " ".join(argv) + "\n", flush=True)
    engine_speed.main(argv)


# ------------------------------------------------------------------------------------- lowerings


def subsets() -> list[frozenset]:
    forms = sorted(LOWERINGS)
    return [frozenset(c) for k in range(len(forms) + 1) for c in itertools.combinations(forms, k)]


def label(subset: frozenset) -> str:
    return "+".join(sorted(subset)) if subset else "none"


def lowerings(args, source, source_name: str) -> None:
    setting = dict(SETTINGS["5w1s"])
    if args.meta_batch:
        setting["meta_batch"] = args.meta_batch
    sampler = TaskDistributionSampler(source, ways=setting["ways"], shots=setting["shots"], queries=args.queries,
                                      seed=args.seed)
    episodes = sampler.sample_batch(setting["meta_batch"])
    torch.manual_seed(args.seed)
    reference = conv4(setting["ways"], hidden=args.width)
    variants = {}
    for precision in ("fp32", "bf16"):
        for subset in subsets():
            learner = build_learner("maml", "func", precision, copy.deepcopy(reference), setting, args.seed)
            variant = dataclasses.replace(PRECISIONS[precision], lowerings=subset)
            learner.engine = FuncEngine(learner.model, learner.rule, learner.adapted, variant)
            variants[(precision, subset)] = learner
    keys = list(variants)
    for _ in range(args.warmup):
        for key in keys:
            variants[key].meta_train_step(episodes)
    times = {key: [] for key in keys}
    for r in range(args.lowering_repeats):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for key in order:
            start = time.process_time()
            variants[key].meta_train_step(episodes)
            times[key].append(time.process_time() - start)
        print(f"  lowerings repeat {r + 1}/{args.lowering_repeats}", file=sys.stderr, flush=True)
    median = {key: statistics.median(t) for key, t in times.items()}
    print(f"\n## The lowered forward: CPU s per meta-iteration by lowering subset ({source_name})\n")
    print(f"MAML, second order, func engine (looped), {setting['ways']}-way {setting['shots']}-shot, "
          f"{args.queries} queries, meta-batch {setting['meta_batch']}, conv4-{args.width}; median of "
          f"{args.lowering_repeats} interleaved repeats after {args.warmup} warm-up; the default is all three forms.\n")
    print("| lowerings | fp32 CPU s | bf16 CPU s | fp32 / bf16 | fp32 rank | bf16 rank |")
    print("| --- | --- | --- | --- | --- | --- |")
    rank = {p: {s: i + 1 for i, s in enumerate(sorted(subsets(), key=lambda s: median[(p, s)]))}
            for p in ("fp32", "bf16")}
    for subset in subsets():
        f, b = median[("fp32", subset)], median[("bf16", subset)]
        print(f"| {label(subset)} | {f:.3f} | {b:.3f} | {f / b:.2f}x | {rank['fp32'][subset]} | "
              f"{rank['bf16'][subset]} |")
    full = frozenset(LOWERINGS)
    print("\nEach form against the default without it (ratio > 1: the form is faster):\n")
    print("| form | fp32: without / with | bf16: without / with |")
    print("| --- | --- | --- |")
    for form in sorted(LOWERINGS):
        without = full - {form}
        print(f"| {form} | {median[('fp32', without)] / median[('fp32', full)]:.3f} | "
              f"{median[('bf16', without)] / median[('bf16', full)]:.3f} |")
    best = min(subsets(), key=lambda s: median[("bf16", s)])
    print(f"\nFastest under bf16: {label(best)} ({median[('bf16', best)]:.3f} s; the default all-three: "
          f"{median[('bf16', full)]:.3f} s). Fastest under fp32: "
          f"{label(min(subsets(), key=lambda s: median[('fp32', s)]))}.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="gradients,speed,lowerings")
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "omniglot"))
    parser.add_argument("--glyph-characters", type=int, default=600, help="Glyphs characters when Omniglot is absent")
    parser.add_argument("--settings", default="5w1s,20w1s", help=f"comma-separated: {', '.join(SETTINGS)}")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--width", type=int, default=64, help="conv4 channels (64)")
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--meta-batch", type=int, default=None, help="override every setting's meta-batch")
    parser.add_argument("--repeats", type=int, default=5, help="speed: timed repeats per engine")
    parser.add_argument("--speed-workloads", default="omniglot-5w1s-b8,omniglot-5w1s-b8-fo,omniglot-20w1s-5steps")
    parser.add_argument("--lowering-repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 on a shared machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = args.parts.split(",")
    unknown = [p for p in parts if p not in ("gradients", "speed", "lowerings")]
    if unknown:
        parser.error(f"unknown part(s): {', '.join(unknown)}")
    print(f"# bf16 against fp32 — {time.strftime('%Y-%m-%d %H:%M')}\n\nmachine: {machine()}")
    source, source_name = dataset(args) if {"gradients", "lowerings"} & set(parts) else (None, "")
    if "gradients" in parts:
        gradients(args, source, source_name)
    if "lowerings" in parts:
        lowerings(args, source, source_name)
    if "speed" in parts:
        speed(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
