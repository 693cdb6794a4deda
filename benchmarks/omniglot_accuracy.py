"""MAML and Meta-SGD on real Omniglot with the papers' hyperparameters, for a given budget.

    python benchmarks/omniglot_accuracy.py --setting 5w1s --algorithm maml --minutes 20
    python benchmarks/omniglot_accuracy.py --setting 20w1s --algorithm meta_sgd --iterations 60000

Settings follow Finn et al. (2017): conv4-64, Adam 1e-3, 15 queries per class; 5-way: inner
lr 0.4, 1 step (3 at test), meta-batch 32; 20-way: inner lr 0.1, 5 steps, meta-batch 16.
Meta-SGD uses the same settings with its per-parameter inner lrs initialised to the inner lr.
--lr-granularity compares Meta-SGD's per-parameter lrs with coarser learned lrs (``scalar``:
one learned lr for the whole model) at the same budget; --width and --meta-lr give a cheaper
protocol for CPU runs (conv4-32, meta lr 3e-3, small meta-batch); --inner-lr, --inner-steps and
--inner-steps-eval override the setting's inner loop; --eval-at also scores the run part-way
through training (the learned lrs' mean per tensor is printed at the end). Training stops at --iterations or --minutes, whichever comes first; then the model is scored on
--test-episodes fixed episodes of the Vinyals test split (mean ± 95% CI). Paper targets
(5w1s, 5w5s, 20w1s, 20w5s): MAML 98.7 / 99.9 / 95.8 / 98.9, Meta-SGD 99.53 / 99.93 / 95.93 / 98.97.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fewshot_metaopt import GradientMetaLearner, GradientMetaLearnerConfig, TaskDistributionSampler
from fewshot_metaopt.datasets import Omniglot
from fewshot_metaopt.models import conv4
from fewshot_metaopt.optim import GRANULARITIES

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "5w1s": dict(ways=5, shots=1, inner_lr=0.4, inner_steps=1, inner_steps_eval=3, meta_batch=32),
    "5w5s": dict(ways=5, shots=5, inner_lr=0.4, inner_steps=1, inner_steps_eval=3, meta_batch=32),
    "20w1s": dict(ways=20, shots=1, inner_lr=0.1, inner_steps=5, inner_steps_eval=5, meta_batch=16),
    "20w5s": dict(ways=20, shots=5, inner_lr=0.1, inner_steps=5, inner_steps_eval=5, meta_batch=16),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "omniglot"))
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="5w1s")
    parser.add_argument("--algorithm", choices=["maml", "fomaml", "meta_sgd"], default="maml")
    parser.add_argument("--iterations", type=int, default=60000)
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock budget for meta-training")
    parser.add_argument("--meta-batch", type=int, default=None, help="override the paper's meta-batch")
    parser.add_argument("--lr-granularity", choices=GRANULARITIES, default=None,
                        help="learned inner lrs (default: per_parameter for meta_sgd, none otherwise)")
    parser.add_argument("--width", type=int, default=64, help="conv4 channels (paper: 64)")
    parser.add_argument("--meta-lr", type=float, default=1e-3, help="Adam's outer lr (paper: 1e-3)")
    parser.add_argument("--inner-lr", type=float, default=None,
                        help="inner lr (the initial value when learned; default: the setting's)")
    parser.add_argument("--inner-steps", type=int, default=None, help="inner steps in training (default: the setting's)")
    parser.add_argument("--inner-steps-eval", type=int, default=None,
                        help="inner steps at test time (default: the setting's)")
    parser.add_argument("--eval-at", type=int, nargs="*", default=[],
                        help="also score on the test episodes after these iteration counts (same run)")
    parser.add_argument("--test-episodes", type=int, default=600)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch intra-op threads (default: torch's choice; 1 is steadier on a shared machine)",
    )
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    s = SETTINGS[args.setting]
    meta_batch = args.meta_batch or s["meta_batch"]
    torch.manual_seed(args.seed)
    train = TaskDistributionSampler(
        Omniglot(args.data_root, "train"), ways=s["ways"], shots=s["shots"], queries=args.queries, seed=args.seed
    )
    test = TaskDistributionSampler(
        Omniglot(args.data_root, "test"), ways=s["ways"], shots=s["shots"], queries=args.queries, seed=args.seed
    ).fixed(args.test_episodes)
    config = GradientMetaLearnerConfig(
        algorithm=args.algorithm,
        inner_lr=s["inner_lr"] if args.inner_lr is None else args.inner_lr,
        inner_steps=s["inner_steps"] if args.inner_steps is None else args.inner_steps,
        inner_steps_eval=s["inner_steps_eval"] if args.inner_steps_eval is None else args.inner_steps_eval,
        meta_lr=args.meta_lr,
        lr_granularity=args.lr_granularity,
    )
    learner = GradientMetaLearner(conv4(s["ways"], hidden=args.width).to(args.device), config)
    deadline = None if args.minutes is None else time.monotonic() + 60 * args.minutes
    start = time.perf_counter()
    done = 0
    checkpoints = []
    eval_seconds = 0.0
    bar = tqdm(range(args.iterations), desc=f"{args.algorithm} {args.setting}", unit="it", mininterval=5)
    for done in bar:
        result = learner.meta_train_step(train.sample_batch(meta_batch))
        bar.set_postfix(loss=f"{result.loss:.3f}", acc=f"{result.accuracy:.3f}", refresh=False)
        if done + 1 in args.eval_at and done + 1 < args.iterations:
            tick = time.perf_counter()
            scored = learner.evaluate(test)
            eval_seconds += time.perf_counter() - tick
            checkpoints.append({"iterations": done + 1, "test_accuracy": scored.mean, "ci95": scored.ci95})
            tqdm.write(f"after {done + 1} iterations: {100 * scored.mean:.2f}% ± {100 * scored.ci95:.2f}%")
        if deadline is not None and time.monotonic() > deadline:
            break
    iterations = done + 1
    train_seconds = time.perf_counter() - start - eval_seconds
    evaluation = learner.evaluate(test)
    record = {
        "setting": args.setting,
        "algorithm": args.algorithm,
        "lr_granularity": config.granularity,
        "width": args.width,
        "meta_lr": args.meta_lr,
        "iterations": iterations,
        "meta_batch": meta_batch,
        "inner_lr": config.inner_lr,
        "inner_steps": config.inner_steps,
        "inner_steps_eval": config.inner_steps_eval,
        "train_seconds": round(train_seconds, 1),
        "test_accuracy": evaluation.mean,
        "ci95": evaluation.ci95,
        "test_episodes": len(evaluation.values),
        "seed": args.seed,
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "checkpoints": checkpoints,
        "learned_lr_means": learner.get_learned_lr(),
    }
    print(
        f"{args.algorithm} ({config.granularity} lr) Omniglot {args.setting}: {100 * evaluation.mean:.2f}% ± {100 * evaluation.ci95:.2f}% "
        f"(95% CI, {len(evaluation.values)} test episodes) after {iterations} iterations x {meta_batch} tasks, "
        f"{train_seconds / 60:.1f} min on {args.device}"
    )
    if record["learned_lr_means"]:
        print("learned inner lr (mean per tensor): "
              + ", ".join(f"{k} {v:.3g}" for k, v in record["learned_lr_means"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
