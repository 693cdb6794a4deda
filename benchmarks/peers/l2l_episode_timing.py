"""Time learn2learn's Omniglot task sampling (``taskset.sample()``), for comparison with ours.

Runs inside the peers environment (``bash benchmarks/peers/setup.sh``)::

    .peers-venv/bin/python benchmarks/peers/l2l_episode_timing.py \
        --omniglot-dir ../shared/data/omniglot --ways 20 --shots 5 --queries 15 --repeats 200

Prints one JSON line: median and 90th-percentile milliseconds per ``sample()`` over
``--repeats`` calls after ``--warmup`` untimed ones, with the learn2learn and torch versions.

Two ways of building the task set:

``--pipeline benchmark`` (default) is learn2learn's own code path,
``l2l.vision.benchmarks.get_tasksets("omniglot", ...)``, whose train task set we time:
``FullOmniglot`` with Resize(28, LANCZOS), ToTensor and ``1 - x``, wrapped in
``l2l.data.MetaDataset``, and the task transforms FusedNWaysKShots(n=ways, k=shots+queries),
LoadData, RemapLabels, ConsecutiveLabels and RandomClassRotation([0, 90, 180, 270]) in an
``l2l.data.Taskset`` with ``num_tasks=-1`` (a fresh task every call).

``--pipeline separate`` builds the same thing by hand with the unfused transforms
NWays(ways), KShots(shots+queries) in place of FusedNWaysKShots, over all 1623 classes.

``FullOmniglot`` reads torchvision's layout ``ROOT/omniglot-py/images_background/...``. The
two zips from ``--omniglot-dir`` are extracted once into ``--cache-dir`` (a marker file records
a finished extraction, so later runs skip it), and learn2learn's label bookkeeping
(``omniglot-bookkeeping.pkl``, which costs one pass over all 32,460 images to build) is
written there on the first run and reused afterwards.

torchvision's ``Omniglot`` only accepts its data when the zip beside the extracted folder has
the md5 of the upstream download. The zips in shared/data are repacked copies (same files,
different md5), so while the data set is built we replace that check with "the extracted
folder exists"; nothing else about torchvision or learn2learn is changed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ZIPS = ("images_background", "images_evaluation")
MARKER = ".extracted-ok"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fewshot_metaopt" / "l2l-omniglot"


def prepare_root(omniglot_dir: Path, cache_dir: Path) -> Path:
    """Extract the zips into ``cache_dir/omniglot-py`` once; return the root for FullOmniglot."""
    folder = cache_dir / "omniglot-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ZIPS:
        source = omniglot_dir / f"{name}.zip"
        target = folder / name
        if (target / MARKER).is_file():
            continue
        if not source.is_file():
            sys.exit(f"l2l_episode_timing: {source} not found (--omniglot-dir must hold {ZIPS[0]}.zip and {ZIPS[1]}.zip)")
        print(f"extracting {source} into {folder} (once)", file=sys.stderr)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder))
        try:
            with zipfile.ZipFile(source) as archive:
                archive.extractall(staging)
            extracted = staging / name
            if not extracted.is_dir():
                sys.exit(f"l2l_episode_timing: {source} has no top-level folder {name}/")
            shutil.rmtree(target, ignore_errors=True)
            extracted.rename(target)
            (target / MARKER).write_text(f"{source.resolve()}\n")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return cache_dir


@contextlib.contextmanager
def accept_extracted_omniglot():
    """Let torchvision's Omniglot accept an extracted folder whose zip is a repacked copy."""
    from torchvision.datasets.omniglot import Omniglot

    original = Omniglot._check_integrity

    def folder_exists(self) -> bool:
        return os.path.isdir(os.path.join(self.root, self._get_target_folder()))

    Omniglot._check_integrity = folder_exists
    try:
        yield
    finally:
        Omniglot._check_integrity = original


def build_taskset(pipeline: str, root: Path, ways: int, shots: int, queries: int):
    import learn2learn as l2l
    from PIL.Image import LANCZOS
    from torchvision import transforms

    samples = shots + queries
    if pipeline == "benchmark":
        with accept_extracted_omniglot():
            tasksets = l2l.vision.benchmarks.get_tasksets(
                "omniglot",
                train_ways=ways,
                train_samples=samples,
                test_ways=ways,
                test_samples=samples,
                num_tasks=-1,
                root=str(root),
            )
        return tasksets.train

    data_transforms = transforms.Compose(
        [
            transforms.Resize(28, interpolation=LANCZOS),
            transforms.ToTensor(),
            lambda x: 1.0 - x,
        ]
    )
    with accept_extracted_omniglot():
        omniglot = l2l.vision.datasets.FullOmniglot(root=str(root), transform=data_transforms, download=False)
    dataset = l2l.data.MetaDataset(omniglot)
    task_transforms = [
        l2l.data.transforms.NWays(dataset, n=ways),
        l2l.data.transforms.KShots(dataset, k=samples),
        l2l.data.transforms.LoadData(dataset),
        l2l.data.transforms.RemapLabels(dataset),
        l2l.data.transforms.ConsecutiveLabels(dataset),
        l2l.vision.transforms.RandomClassRotation(dataset, [0.0, 90.0, 180.0, 270.0]),
    ]
    return l2l.data.TaskDataset(dataset, task_transforms=task_transforms, num_tasks=-1)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), without needing numpy."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--omniglot-dir",
        type=Path,
        default=repo.parent / "shared" / "data" / "omniglot",
        help="folder holding images_background.zip and images_evaluation.zip (default: ../shared/data/omniglot beside the repo)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=default_cache_dir(),
        help="where the zips are extracted once (default: %(default)s)",
    )
    parser.add_argument("--ways", type=int, default=20)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=100, help="timed sample() calls")
    parser.add_argument("--warmup", type=int, default=5, help="untimed sample() calls first")
    parser.add_argument("--pipeline", choices=("benchmark", "separate"), default="benchmark")
    parser.add_argument("--seed", type=int, default=0, help="seeds Python's random, which learn2learn draws from")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1, as in a DataLoader worker; 0 keeps torch's default). "
        "RandomClassRotation runs one tiny bmm per image, and with 2 OpenMP threads on a busy 2-core "
        "machine each can stall for milliseconds",
    )
    args = parser.parse_args(argv)
    if min(args.ways, args.shots, args.queries, args.repeats) < 1 or min(args.warmup, args.threads) < 0:
        parser.error("--ways, --shots, --queries and --repeats must be positive, --warmup and --threads non-negative")

    import learn2learn as l2l
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    root = prepare_root(args.omniglot_dir, args.cache_dir)
    started = time.perf_counter()
    taskset = build_taskset(args.pipeline, root, args.ways, args.shots, args.queries)
    build_s = time.perf_counter() - started

    x, y = taskset.sample()
    expected = args.ways * (args.shots + args.queries)
    if tuple(x.shape) != (expected, 1, 28, 28) or tuple(y.shape) != (expected,):
        sys.exit(f"l2l_episode_timing: unexpected task shapes x={tuple(x.shape)} y={tuple(y.shape)}")
    for _ in range(args.warmup):
        taskset.sample()
    times_ms = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        taskset.sample()
        times_ms.append((time.perf_counter() - t0) * 1e3)

    print(
        json.dumps(
            {
                "median_ms": round(statistics.median(times_ms), 3),
                "p90_ms": round(percentile(times_ms, 90), 3),
                "repeats": args.repeats,
                "learn2learn": l2l.__version__,
                "torch": torch.__version__,
                "pipeline": args.pipeline,
                "ways": args.ways,
                "shots": args.shots,
                "queries": args.queries,
                "torch_threads": torch.get_num_threads(),
                "build_s": round(build_s, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
