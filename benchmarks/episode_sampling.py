"""How fast Omniglot gets ready and how fast episodes come out of it.

    python benchmarks/episode_sampling.py [--data-root DIR] [--cache-dir DIR] [--repeats N]

Prints:
  * the time to build the cache from the two archives (into a fresh temporary folder unless
    --cache-dir names one, so the build is really measured),
  * the size of the cache on disk and the time to load the data set from it,
  * the median (and 90th percentile) time to sample a 20-way 5-shot 15-query episode from the
    Vinyals train split with TaskDistributionSampler, and where that time goes,
  * learn2learn's median for the same episode shape and the speed ratio, when the peers
    environment (<repo>/.peers-venv, made by ``bash benchmarks/peers/setup.sh``) exists.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fewshot_metaopt.datasets.omniglot import Omniglot
from fewshot_metaopt.episodes.sampler import TaskDistributionSampler

REPO = Path(__file__).resolve().parents[1]
PEERS_PYTHON = REPO / ".peers-venv" / "bin" / "python"
PEERS_SCRIPT = REPO / "benchmarks" / "peers" / "l2l_episode_timing.py"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def time_sampling(sampler: TaskDistributionSampler, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        sampler.sample()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sampler.sample()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def profile_sampling(sampler: TaskDistributionSampler, episodes: int, top: int = 6) -> list[tuple[str, float]]:
    """The functions an episode spends its time in (own time, ms per episode), by cProfile."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(episodes):
        sampler.sample()
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (calls, ncalls, own, cumulative, callers)}
    rows = []
    for (file, _line, name), (_cc, _nc, own, _cum, _callers) in stats.items():
        label = name if file == "~" else f"{Path(file).name}:{name}"
        rows.append((label, own / episodes * 1e3))
    return sorted(rows, key=lambda r: -r[1])[:top]


def run_peers(data_root: Path, ways: int, shots: int, queries: int, repeats: int, timeout: float) -> dict | str:
    """learn2learn's timing as a dict, or a line saying why there is none."""
    if not PEERS_PYTHON.exists():
        return (
            f"learn2learn: no peers environment at {PEERS_PYTHON}; create it with "
            f"`bash benchmarks/peers/setup.sh` to compare"
        )
    if not PEERS_SCRIPT.exists():
        return f"learn2learn: {PEERS_SCRIPT} is missing; cannot compare"
    cmd = [
        str(PEERS_PYTHON), str(PEERS_SCRIPT), "--omniglot-dir", str(data_root),
        "--ways", str(ways), "--shots", str(shots), "--queries", str(queries), "--repeats", str(repeats),
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return f"learn2learn: {PEERS_SCRIPT.name} did not finish within {timeout:.0f} s"
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                break
            if "median_ms" in result:
                return result
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return f"learn2learn: {PEERS_SCRIPT.name} exited with {done.returncode} and no JSON line: {' | '.join(tail)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data" / "omniglot",
                        help="folder holding images_background.zip, images_evaluation.zip and splits/vinyals")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache folder (default: a fresh temporary folder, removed afterwards)")
    parser.add_argument("--repeats", type=int, default=500, help="timed episodes")
    parser.add_argument("--warmup", type=int, default=20, help="untimed episodes first")
    parser.add_argument("--ways", type=int, default=20)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--peers-repeats", type=int, default=100, help="timed learn2learn tasks")
    parser.add_argument("--peers-timeout", type=float, default=1800.0, help="seconds allowed for the learn2learn run")
    parser.add_argument("--no-peers", action="store_true", help="skip the learn2learn comparison")
    args = parser.parse_args(argv)
    if min(args.repeats, args.ways, args.shots, args.peers_repeats) < 1 or min(args.warmup, args.queries) < 0:
        parser.error("--repeats, --ways, --shots and --peers-repeats must be positive, --warmup and --queries non-negative")

    temporary = args.cache_dir is None
    cache_dir = Path(tempfile.mkdtemp(prefix="omniglot-bench-")) if temporary else args.cache_dir
    try:
        print(f"data: {args.data_root}")
        print(f"cache: {cache_dir}{' (temporary)' if temporary else ''}")
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

        had_cache = any(cache_dir.glob("omniglot-*.npz")) if cache_dir.exists() else False
        start = time.perf_counter()
        ds = Omniglot(args.data_root, split="train", cache_dir=cache_dir)
        build_s = time.perf_counter() - start
        what = "load (the cache already existed)" if had_cache else "cache build from the archives"
        print(f"{what}: {build_s:.2f} s  ({ds!r})")
        size_mb = sum(f.stat().st_size for f in ds.cache_files) / 2**20
        print(f"cache size on disk: {size_mb:.1f} MB ({len(ds.cache_files)} files)")

        loads = []
        for _ in range(3):
            start = time.perf_counter()
            ds = Omniglot(args.data_root, split="train", cache_dir=cache_dir)
            loads.append(time.perf_counter() - start)
        load_s = statistics.median(loads)
        print(f"load from the cache (Vinyals train, median of 3): {load_s:.3f} s")

        shape = f"{args.ways}-way {args.shots}-shot {args.queries}-query"
        sampler = TaskDistributionSampler(ds, ways=args.ways, shots=args.shots, queries=args.queries, seed=0)
        threads = torch.get_num_threads()
        times = time_sampling(sampler, args.repeats, args.warmup)
        median = statistics.median(times)
        print(f"sample one {shape} episode ({threads} torch threads): median {median:.3f} ms, "
              f"p90 {percentile(times, 90):.3f} ms ({args.repeats} episodes)")
        if threads > 1:
            # Small tensor ops split over threads stall whenever a core is busy elsewhere.
            torch.set_num_threads(1)
            times_1 = time_sampling(sampler, args.repeats, args.warmup)
            torch.set_num_threads(threads)
            print(f"sample one {shape} episode (1 torch thread): median {statistics.median(times_1):.3f} ms, "
                  f"p90 {percentile(times_1, 90):.3f} ms")
            if statistics.median(times_1) < median:
                median, times = statistics.median(times_1), times_1
                print("  (the 1-thread figure is used below)")
                torch.set_num_threads(1)
        rows = profile_sampling(sampler, min(args.repeats, 300))
        torch.set_num_threads(threads)
        print("  own time per episode by function (cProfile, ms): "
              + ", ".join(f"{name} {ms:.3f}" for name, ms in rows))
        if median >= 1.0:
            print("  goal: well under 1 ms; see the functions above")

        if args.no_peers:
            print("learn2learn: skipped (--no-peers)")
        else:
            peer = run_peers(args.data_root, args.ways, args.shots, args.queries, args.peers_repeats, args.peers_timeout)
            if isinstance(peer, str):
                print(peer)
            else:
                ratio = peer["median_ms"] / median
                print(f"learn2learn {peer.get('learn2learn', '?')} (torch {peer.get('torch', '?')}): "
                      f"median {peer['median_ms']:.3f} ms per {shape} task")
                print(f"speed ratio: ours is {ratio:.1f}x {'faster' if ratio >= 1 else 'slower'} "
                      f"({peer['median_ms']:.3f} ms / {median:.3f} ms)")
        print(json.dumps({"build_s": round(build_s, 3), "cache_mb": round(size_mb, 2), "load_s": round(load_s, 3),
                          "sample_median_ms": round(median, 4), "sample_p90_ms": round(percentile(times, 90), 4)}))
    finally:
        if temporary:
            shutil.rmtree(cache_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
