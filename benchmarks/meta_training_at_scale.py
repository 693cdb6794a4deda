"""Meta-training a learned optimizer on a 10M-parameter model: one truncated-BPTT window of
``--window`` inner steps with second-order gradients, its CPU time and peak memory.

    .venv/bin/python benchmarks/meta_training_at_scale.py --threads 1 [--window 20] [--rules scalable l2o]

The model is an MLP 784-2048-2048-2048-20 (10.1M parameters) on a 20-way 5-shot Omniglot
task (background alphabets; the embedded Glyphs data set when Omniglot is absent). Each rule
runs in a process of its own, so its peak resident memory (``ru_maxrss``) is its own: the
figure counts the model, the rule's state, the window's graph and the backward pass. The
inner gradients keep their graph (``second_order=True``, the rule sees them with theirs), the
meta-loss is the sum of the support losses after each step, and one
``MetaOptimizer.meta_train_step`` is exactly one window. ``--chunk-size`` sets the rules'
chunk (a size above the largest tensor turns chunking, and so the checkpointing of the
coordinate network, off).
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
from torch import nn

REPO = Path(__file__).resolve().parents[1]
RULES = {
    "scalable": dict(method="lstm", lstm_variant="scalable"),
    "scalable (mlp 4 relu)": dict(method="lstm", lstm_variant="scalable",
                                  rule_options={"mlp_hidden": 4, "activation": "relu"}),
    "l2o": dict(method="l2o", hidden_size=32, num_layers=2),
}


def episode(ways: int, shots: int, data_root: Path):
    from fewshot_metaopt import TaskDistributionSampler
    from fewshot_metaopt.datasets import Glyphs, Omniglot

    if (data_root / "images_background.zip").exists() or (data_root / "images_background").is_dir():
        data, name = Omniglot(data_root, "background"), "Omniglot background"
    else:
        data, name = Glyphs(split="train"), "Glyphs (Omniglot not found)"
    return TaskDistributionSampler(data, ways=ways, shots=shots, queries=1, seed=0).sample(), name


def one(rule: str, args) -> dict:
    from fewshot_metaopt import MetaOptimizer, MetaOptimizerConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    task, data = episode(args.ways, args.shots, Path(args.data_root))
    widths = [784, *args.widths, args.ways]
    layers: list[nn.Module] = [nn.Flatten()]
    for k, (a, b) in enumerate(zip(widths, widths[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if k < len(widths) - 2 else [])
    model = nn.Sequential(*layers)
    spec = dict(RULES[rule])
    spec["rule_options"] = {**spec.get("rule_options", {}), "chunk_size": args.chunk_size}
    config = MetaOptimizerConfig(**spec, inner_lr=1e-3, inner_steps=args.window, unroll_steps=args.window,
                                 second_order=True, meta_loss="support")
    mo = MetaOptimizer(model, config)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu, wall = time.process_time(), time.perf_counter()
    result = mo.meta_train_step([task])
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "rule": rule, "parameters": sum(p.numel() for p in model.parameters()), "data": data,
        "window": args.window, "cpu_s": cpu, "wall_s": wall, "peak_gib": peak / 2**20,
        "before_gib": before / 2**20, "meta_loss": result.meta_loss, "final_loss": result.final_loss,
        "grad_norm": result.grad_norm, "chunk_size": args.chunk_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--widths", type=int, nargs="+", default=[2048, 2048, 2048])
    parser.add_argument("--ways", type=int, default=20)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--chunk-size", type=int, default=1 << 16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "omniglot"))
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args)))
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s), window {args.window}, chunk {args.chunk_size}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    print(f"{'rule':<24} {'parameters':>11} {'CPU s':>8} {'wall s':>8} {'peak GiB':>9} {'meta-loss':>10} "
          f"{'loss after':>10}", flush=True)
    passed = [a for a in sys.argv[1:]]
    for rule in args.rules:
        done = subprocess.run([sys.executable, __file__, *passed, "--one", rule], capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"{rule:<24} failed: {tail}", flush=True)
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{rule:<24} {r['parameters'] / 1e6:>10.2f}M {r['cpu_s']:>8.1f} {r['wall_s']:>8.1f} "
              f"{r['peak_gib']:>9.2f} {r['meta_loss']:>10.4f} {r['final_loss']:>10.4f}   ({r['data']})", flush=True)


if __name__ == "__main__":
    main()
