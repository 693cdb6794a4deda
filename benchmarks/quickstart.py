"""Quick start on the embedded Glyphs data set: build its cache, describe episodes, time sampling.

    bash benchmarks/quickstart.sh [--seed 0] [--episodes 2000]

Needs no download. Prints each split's size and cache, the statistics of a fixed manifest of
5-way 1-shot and 20-way 5-shot episodes, and the median time to sample one episode.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fewshot_metaopt import TaskDistributionSampler, stack_episodes
from fewshot_metaopt.datasets import Glyphs


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
    parser.add_argument("--episodes", type=int, default=2000, help="episodes timed per setting")
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

    print("\n== episodes (fixed manifest of 100 per setting, test split) ==")
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
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
