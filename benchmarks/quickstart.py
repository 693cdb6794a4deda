"""Quick start on the embedded Glyphs data set: a short Meta-SGD run, 5-way 1-shot.

    bash benchmarks/quickstart.sh [--seed 0] [--iterations 300] [--algorithm meta_sgd]

Needs no download. Builds the Glyphs cache, prints each split's size, episode statistics and
sampling speed, meta-trains conv4 for a few minutes on 2 cores, and ends with test accuracy
± 95% CI on 600 fixed test episodes (untrained baseline alongside) and the learned inner
learning rates.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tqdm.auto import tqdm

from fewshot_metaopt import GradientMetaLearner, GradientMetaLearnerConfig, TaskDistributionSampler, stack_episodes
from fewshot_metaopt.datasets import Glyphs
from fewshot_metaopt.models import conv4


def median_ms(fn, repeats: int) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="data set and sampler seed")
    parser.add_argument("--episodes", type=int, default=500, help="episodes timed per sampling setting")
    parser.add_argument("--iterations", type=int, default=300, help="meta-training iterations")
    parser.add_argument("--meta-batch", type=int, default=8, help="episodes per meta-iteration")
    parser.add_argument("--algorithm", default="meta_sgd", choices=["maml", "fomaml", "meta_sgd", "anil"])
    parser.add_argument("--test-episodes", type=int, default=600, help="fixed test episodes")
    parser.add_argument("--cache-dir", default=None, help="cache folder (default: ~/.cache/fewshot_metaopt)")
    args = parser.parse_args()

    print("== Glyphs (embedded procedural characters; a demo data set, not a benchmark) ==")
    splits = {}
    for split in ("train", "val", "test"):
        start = time.perf_counter()
        splits[split] = ds = Glyphs(split, seed=args.seed, cache_dir=args.cache_dir)
        seconds = time.perf_counter() - start
        size_mb = ds.cache_path.stat().st_size / 2**20
        print(
            f"{split:5s}: {ds.num_classes:4d} classes x {ds.samples_per_class} samples, "
            f"cache {size_mb:.1f} MB, ready in {seconds:.2f} s  ({ds.cache_path})"
        )
    train_names = set(splits["train"].class_names)
    assert not train_names & set(splits["test"].class_names), "train/test classes overlap"

    print("\n== episodes (fixed manifest of 100 per setting, test split; sampling timed on train) ==")
    for ways, shots, queries in ((5, 1, 15), (5, 5, 15), (20, 1, 15), (20, 5, 15)):
        sampler = TaskDistributionSampler(splits["test"], ways=ways, shots=shots, queries=queries, seed=args.seed)
        batch = stack_episodes(list(sampler.fixed(100)))
        ink = batch.support_x.mean().item()
        distinct = len({tuple(c) for c in batch.classes.sort(dim=1).values.tolist()})
        train_sampler = TaskDistributionSampler(splits["train"], ways=ways, shots=shots, queries=queries, seed=args.seed)
        ms = median_ms(train_sampler.sample, args.episodes)
        print(
            f"{ways:2d}-way {shots}-shot {queries}q: support {tuple(batch.support_x.shape[1:])}, "
            f"query {tuple(batch.query_x.shape[1:])}, mean pixel {ink:.3f}, "
            f"{distinct}/100 distinct class sets, sampling {ms:.3f} ms/episode "
            f"({1e3 / ms:,.0f} episodes/s)"
        )

    print(f"\n== {args.algorithm}, conv4-32, 5-way 1-shot, {args.iterations} iterations x {args.meta_batch} episodes ==")
    torch.manual_seed(args.seed)
    config = GradientMetaLearnerConfig(
        algorithm=args.algorithm, inner_lr=0.4, inner_steps=1, inner_steps_eval=3, meta_lr=3e-3
    )
    learner = GradientMetaLearner(conv4(5, hidden=32), config)
    train = TaskDistributionSampler(splits["train"], ways=5, shots=1, queries=5, seed=args.seed)
    test = TaskDistributionSampler(splits["test"], ways=5, shots=1, queries=15, seed=args.seed).fixed(args.test_episodes)
    baseline = learner.evaluate(test)
    start = time.perf_counter()
    bar = tqdm(range(args.iterations), desc="meta-train", unit="it")
    for _ in bar:
        result = learner.meta_train_step(train.sample_batch(args.meta_batch))
        bar.set_postfix(loss=f"{result.loss:.3f}", acc=f"{result.accuracy:.3f}")
    seconds = time.perf_counter() - start
    final = learner.evaluate(test)
    print(f"untrained initialisation: test {baseline}")
    print(f"after {seconds:.0f} s of meta-training: test {final}")
    lrs = learner.get_learned_lr()
    if args.algorithm == "meta_sgd":
        print("learned inner lr per tensor (mean):", ", ".join(f"{k} {v:.3f}" for k, v in lrs.items()))
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, seed {args.seed}")


if __name__ == "__main__":
    main()
