"""Warp-Grad against MAML and Meta-SGD: accuracy at the same wall-clock budget, and the cost of
a meta-step as the number of inner steps grows.

    .venv/bin/python benchmarks/warp_grad.py accuracy --setting 5w1s --minutes 8 --threads 1
    .venv/bin/python benchmarks/warp_grad.py accuracy --dataset miniimagenet --setting 5w1s --minutes 60
    .venv/bin/python benchmarks/warp_grad.py cost --steps 5 50 --threads 1
    .venv/bin/python benchmarks/warp_grad.py accuracy --setting 20w-long --algorithms warp_leap fomaml none

``accuracy`` meta-trains each ``--algorithms`` entry for ``--minutes`` of wall-clock (each
algorithm in turn, same seed, same training episodes) and scores it on ``--test-episodes``
fixed test episodes (mean ± 95% CI). MAML and Meta-SGD train conv4; the Warp algorithms train
conv4 with a 3x3 conv warp (hidden -> hidden, identity at the start) after each block, the
paper's Omniglot/miniImageNet layout. Settings follow ARCHITECTURE.md (Finn et al. 2017);
``--width``, ``--meta-batch`` and ``--meta-lr`` give cheaper CPU protocols. miniImageNet needs
the Ravi & Larochelle images under ``--data-root`` (see docs/episodes.md); Omniglot is read
from ``../shared/data/omniglot`` by default.

``cost`` times meta-steps of ``MetaOptimizer(method="warp_grad")`` (warps only) and of the
``warp_leap`` learner against second-order MAML for each number of inner steps: the Warp-Grad
objective's part stays flat (``--warp-points`` second-order steps), only the first-order inner
steps grow, while MAML's backward pass grows with them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from fewshot_metaopt import (
    GradientMetaLearner,
    GradientMetaLearnerConfig,
    MetaOptimizer,
    MetaOptimizerConfig,
    TaskDistributionSampler,
)
from fewshot_metaopt.datasets import MiniImageNet, Omniglot
from fewshot_metaopt.models import conv4
from fewshot_metaopt.warp import warp_conv4

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    ("omniglot", "5w1s"): dict(ways=5, shots=1, inner_lr=0.4, inner_steps=1, inner_steps_eval=3, meta_batch=32),
    ("omniglot", "20w1s"): dict(ways=20, shots=1, inner_lr=0.1, inner_steps=5, inner_steps_eval=5, meta_batch=16),
    # The long-adaptation regime (Flennerhag et al. 2019/2020: 20-way, 100 SGD steps at lr 0.1
    # on a multi-shot training set, held-out test images of the same characters). Smaller
    # than the paper's on a CPU: 5 training images per class instead of 15, full-batch steps
    # instead of mini-batches of 20, random characters instead of one alphabet per task.
    ("omniglot", "20w-long"): dict(ways=20, shots=5, queries=5, inner_lr=0.1, inner_steps=100,
                                   inner_steps_eval=100, meta_batch=4),
    ("miniimagenet", "5w1s"): dict(ways=5, shots=1, inner_lr=0.01, inner_steps=5, inner_steps_eval=10, meta_batch=4),
    ("miniimagenet", "5w5s"): dict(ways=5, shots=5, inner_lr=0.01, inner_steps=5, inner_steps_eval=10, meta_batch=4),
}
ALGORITHMS = ("maml", "meta_sgd", "warp_maml", "warp_leap", "fomaml", "none")
# ``none`` is the no-meta-learning baseline: the random initialisation, adapted by the same
# inner loop (SGD at the setting's lr and steps) at test time.


def datasets(args):
    if args.dataset == "omniglot":
        root = args.data_root or REPO.parent / "shared" / "data" / "omniglot"
        return Omniglot(root, "train"), Omniglot(root, "test"), 1, 28
    root = args.data_root or REPO.parent / "shared" / "data" / "miniimagenet"
    return MiniImageNet(root, "train"), MiniImageNet(root, "test"), 3, 84


def build(algorithm: str, s: dict, args, in_channels: int, image_size: int) -> GradientMetaLearner:
    torch.manual_seed(args.seed)
    make = warp_conv4 if algorithm.startswith("warp") else conv4
    model = make(s["ways"], in_channels=in_channels, hidden=args.width, image_size=image_size)
    config = GradientMetaLearnerConfig(
        algorithm="maml" if algorithm == "none" else algorithm, inner_lr=s["inner_lr"], inner_steps=s["inner_steps"],
        inner_steps_eval=s["inner_steps_eval"], meta_lr=args.meta_lr,
        warp_points=args.warp_points or args.meta_batch or s["meta_batch"],
    )
    return GradientMetaLearner(model.to(args.device), config)


def accuracy(args) -> None:
    s = SETTINGS[(args.dataset, args.setting)]
    train_ds, test_ds, channels, size = datasets(args)
    queries = args.queries or s.get("queries", 15)
    test = TaskDistributionSampler(test_ds, ways=s["ways"], shots=s["shots"], queries=queries,
                                   seed=args.seed).fixed(args.test_episodes)
    meta_batch = args.meta_batch or s["meta_batch"]
    records = []
    for algorithm in args.algorithms:
        learner = build(algorithm, s, args, channels, size)
        train = TaskDistributionSampler(train_ds, ways=s["ways"], shots=s["shots"], queries=queries, seed=args.seed)
        began = time.monotonic()
        deadline = began + 60 * args.minutes
        iterations = 0
        # A fixed number of iterations (--iterations) makes the comparison immune to the load
        # of a shared machine; a wall-clock budget (--minutes) is the default protocol.
        while algorithm != "none" and (iterations < args.iterations if args.iterations is not None
                                       else time.monotonic() < deadline):
            learner.meta_train_step(train.sample_batch(meta_batch))
            iterations += 1
        minutes = (time.monotonic() - began) / 60
        result = learner.evaluate(test)
        record = dict(dataset=args.dataset, setting=args.setting, algorithm=algorithm, minutes=minutes,
                      iterations=iterations, meta_batch=meta_batch, width=args.width, meta_lr=args.meta_lr,
                      test_accuracy=result.mean, ci95=result.ci95, test_episodes=len(result.values), seed=args.seed,
                      device=args.device, torch=torch.__version__, threads=torch.get_num_threads())
        records.append(record)
        print(f"{algorithm:<10} {args.dataset} {args.setting}: {100 * result.mean:.2f}% ± {100 * result.ci95:.2f}% "
              f"after {iterations} iterations x {meta_batch} tasks in {minutes:.1f} min", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2) + "\n")


def median_seconds(step, repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cost(args) -> None:
    s = SETTINGS[("omniglot", "20w1s")]
    train = TaskDistributionSampler(Omniglot(args.data_root or REPO.parent / "shared" / "data" / "omniglot", "train"),
                                    ways=s["ways"], shots=s["shots"], queries=args.queries or 15, seed=args.seed)
    episodes = train.sample_batch(args.meta_batch or 4)
    args.meta_batch = len(episodes)
    args.warp_points = args.warp_points or len(episodes)
    print(f"Omniglot 20-way 1-shot, conv4-{args.width}, meta-batch {len(episodes)}, {args.warp_points} warp points, "
          f"median of {args.repeats} meta-steps, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"{'inner steps':>11} {'warp_grad (warps only) s':>25} {'warp_leap learner s':>20} {'MAML (2nd order) s':>19}")
    for steps in args.steps:
        torch.manual_seed(args.seed)
        model = warp_conv4(s["ways"], hidden=args.width)
        mo = MetaOptimizer(model, MetaOptimizerConfig(method="warp_grad", inner_lr=s["inner_lr"], inner_steps=steps,
                                                      warp_points=args.warp_points))
        warp_only = median_seconds(lambda: mo.meta_train_step(episodes), args.repeats)
        leap = build("warp_leap", dict(s, inner_steps=steps), args, 1, 28)
        leap_s = median_seconds(lambda: leap.meta_train_step(episodes), args.repeats)
        maml = build("maml", dict(s, inner_steps=steps), args, 1, 28)
        maml_s = median_seconds(lambda: maml.meta_train_step(episodes), args.repeats) if steps <= args.maml_max_steps else float("nan")
        print(f"{steps:>11} {warp_only:>25.2f} {leap_s:>20.2f} {maml_s:>19.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    for name in ("accuracy", "cost"):
        p = sub.add_parser(name)
        p.add_argument("--data-root", default=None)
        p.add_argument("--width", type=int, default=64, help="conv4 channels (paper: 64 Omniglot, 32 miniImageNet)")
        p.add_argument("--meta-lr", type=float, default=1e-3)
        p.add_argument("--meta-batch", type=int, default=None, help="override the paper's meta-batch")
        p.add_argument("--queries", type=int, default=None, help="query images per class (default: the setting's, else 15)")
        p.add_argument("--warp-points", type=int, default=None,
                       help="trajectory points per warp update (default: the meta-batch, so a warp update "
                            "costs about what MAML's one-step meta-gradient does)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    acc = sub.choices["accuracy"]
    acc.add_argument("--dataset", choices=["omniglot", "miniimagenet"], default="omniglot")
    acc.add_argument("--setting", default="5w1s", choices=sorted({k[1] for k in SETTINGS}))
    acc.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS[:4]), choices=ALGORITHMS)
    acc.add_argument("--minutes", type=float, default=8.0, help="wall-clock meta-training budget per algorithm")
    acc.add_argument("--iterations", type=int, default=None, help="meta-iterations per algorithm instead of --minutes")
    acc.add_argument("--test-episodes", type=int, default=600)
    acc.add_argument("--json", default=None)
    c = sub.choices["cost"]
    c.add_argument("--steps", type=int, nargs="+", default=[5, 50])
    c.add_argument("--repeats", type=int, default=3)
    c.add_argument("--maml-max-steps", type=int, default=50, help="skip MAML above this many steps")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mode == "accuracy":
        if (args.dataset, args.setting) not in SETTINGS:
            parser.error(f"no setting {args.setting} for {args.dataset}")
        accuracy(args)
    else:
        cost(args)


if __name__ == "__main__":
    main()
